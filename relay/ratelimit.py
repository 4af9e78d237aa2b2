"""Attempt limiting for sign-ins, re-authentication and session codes.

**Reserve before, settle after.** A limit that is checked before a slow step (argon2,
a TOTP check, a code lookup) and counted after it lets every attempt fired at once
through the check: 200 concurrent guesses were all evaluated. So an attempt first
*reserves* a slot (counted at once, synchronously on the event loop: nothing can
interleave); only a reserved attempt is evaluated; afterwards it is *settled*: a
failure stays counted for the window, a success frees its slot (and may clear the
key's failures), and an attempt that was never evaluated (the relay was busy) just
frees it. ``failures + reservations < limit`` is the test, so no burst gets more
evaluations than the limit.

**Bounded without being unlockable.** The table of keys is bounded (``max_keys``),
but an entry that still counts (a failure inside the window, or an attempt in
flight) is never dropped to make room: evicting the oldest keys let a stranger
unlock an account by flooding new keys. Only expired entries are removed; when the
table is full of live ones, every *new* key shares one strict overflow entry, so a
flood of fresh keys gets one budget between them, and a locked key stays locked.

In memory per relay node: an attacker spreading guesses across nodes gets at most
one budget per node, which the per-account limit keeps small.

**Small entries.** An entry is a ``__slots__`` object with its failure times in an
``array('d')`` of at most ``limit`` doubles, in a plain ``dict`` kept in touch order:
about 200 bytes plus 8 per failure and the key (a ``deque`` and an ``OrderedDict``
cost about 1 KiB an entry). Each table's ``max_keys`` is what it can legitimately
hold (:mod:`backline.relay.auth_limits`), so all of them together stay within a few
MiB; ``tests/unit/test_limiter_memory.py`` measures it.
"""

from __future__ import annotations

import ipaddress
import time
from array import array
from collections.abc import Callable

#: The key every new key shares while the table is full of live entries.
OVERFLOW_KEY = "\x00overflow"


class _Entry:
    """One key: failure times inside the window (oldest first, at most ``limit``),
    attempts in flight, and when it was last touched."""

    __slots__ = ("failures", "pending", "touched")

    def __init__(self) -> None:
        self.failures = array("d")
        self.pending = 0
        self.touched = 0.0


class AttemptLimiter:
    """At most ``limit`` failed-or-in-flight attempts per key within ``window_s``, for
    at most ``max_keys`` keys (then new keys share :data:`OVERFLOW_KEY`)."""

    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("limit, window_s and max_keys must be positive")
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        # In touch order, oldest first (re-inserted on each touch), so expired entries
        # are found at the front.
        self._entries: dict[str, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, entry: _Entry, now: float) -> bool:
        q, cut, expired = entry.failures, now - self.window_s, 0
        for t in q:
            if t > cut:
                break
            expired += 1
        if expired:
            del q[:expired]
        return bool(q) or entry.pending > 0

    def _slot(self, key: str) -> str:
        """``key``, or the overflow key when ``key`` is new and the table is full."""
        if key in self._entries or len(self._entries) < self.max_keys:
            return key
        self._sweep(self._clock())
        return key if len(self._entries) < self.max_keys else OVERFLOW_KEY

    def _sweep(self, now: float) -> None:
        """Drop expired entries from the front (least recently touched). An entry
        touched within the window may still hold a failure: the rest are newer, so
        the scan stops there. Entries with attempts in flight are kept."""
        expired = []
        for key, entry in self._entries.items():
            if entry.touched > now - self.window_s:
                break
            if not self._live(entry, now):
                expired.append(key)
        for key in expired:
            del self._entries[key]

    def _entry(self, key: str, now: float) -> _Entry:
        entry = self._entries.pop(key, None)
        if entry is None:
            entry = _Entry()
        entry.touched = now
        self._entries[key] = entry  # to the end: the most recently touched
        return entry

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        now = self._clock()
        entry = self._entries.get(self._slot(key))
        if entry is None:
            return 0.0
        self._live(entry, now)
        if len(entry.failures) + entry.pending < self.limit:
            return 0.0
        if not entry.failures:  # only attempts in flight: they settle within seconds
            return 1.0
        return max(1.0, entry.failures[0] + self.window_s - now)

    def reserve(self, key: str) -> str | None:
        """Take a slot for one attempt; the key to settle it with (the overflow key
        when ``key`` did not fit), or ``None`` when the limit is reached."""
        now = self._clock()
        slot = self._slot(key)
        entry = self._entries.get(slot)
        if entry is not None:
            self._live(entry, now)
            if len(entry.failures) + entry.pending >= self.limit:
                return None
        entry = self._entry(slot, now)
        entry.pending += 1
        return slot

    def settle(self, slot: str, failed: bool, clear: bool = False) -> None:
        """End a reserved attempt: ``failed`` keeps it counted for the window; otherwise
        its slot is freed, and ``clear`` also forgets the key's earlier failures (a
        successful sign-in clears its account, not its address)."""
        now = self._clock()
        entry = self._entry(slot, now)
        entry.pending = max(0, entry.pending - 1)
        if failed:
            entry.failures.append(now)
            if len(entry.failures) > self.limit:
                del entry.failures[:len(entry.failures) - self.limit]
        elif clear and slot != OVERFLOW_KEY:
            del entry.failures[:]
        if not self._live(entry, now):
            del self._entries[slot]

    def used(self, key: str) -> int:
        """Failures and attempts in flight counted for ``key`` now."""
        entry = self._entries.get(key)
        if entry is None:
            return 0
        self._live(entry, self._clock())
        return len(entry.failures) + entry.pending

    def fail(self, key: str) -> None:
        """Count a failure that needed no reservation (a malformed request)."""
        slot = self._slot(key)
        entry = self._entry(slot, self._clock())
        entry.pending += 1
        self.settle(slot, failed=True)


def address_key(address: str) -> str:
    """The unit an address limit counts: one IPv4 address, or an IPv6 /64 (one
    subscriber's network: a single host can hold billions of its addresses)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))
    return str(ip)
