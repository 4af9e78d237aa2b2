"""Refusals that come in floods: never silence, never a row each.

A stranger can make the relay refuse things as fast as the network allows (bad
enrollments, wrong codes, sockets that never speak), and a compromised agent can
report a critical alert every second. Writing one audit row per refusal turns the
trail into the attacker's disk-filling tool and buries the events that matter;
writing none hides the attack. So each *source* of a kind of refusal (an address,
an agent) gets its first ``burst`` events recorded one by one within a window; the
rest of that window are counted and written as **one** event of the same action
with ``aggregated: true``, how many, over what time, and the reasons and addresses
seen. A flood from many sources at once (more than ``max_keys``) folds into one
``*`` source per action, so the number of open windows is bounded too.

The summary is written when its window ends (a timer on the running loop), or on
:meth:`FloodAggregator.flush_all` when the relay stops: nothing counted is lost on a
clean stop. Windows are kept in the order they started, and every call first closes
the expired ones at the front (O(1) amortised): a window that never passed its burst
has no timer, and without the sweep 10,000 one-off sources would keep the table full
so that every *new* source folded into ``*`` forever.

Sources that are addresses are counted like the limiter counts them
(:func:`backline.relay.ratelimit.address_key`): an IPv6 /64 is one source, or one
host could open a window per address and always be "new".
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backline.relay.ratelimit import address_key

#: ``record(actor, action, target, **details)``: how an event reaches the trail.
Recorder = Callable[..., None]
OVERFLOW_KEY = "*"
_SAMPLE = 10  # distinct reasons/addresses kept per summary


@dataclass
class _Window:
    started: float
    actor: str
    target: str
    written: int = 0
    suppressed: int = 0
    first_suppressed: float = 0.0
    last_suppressed: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    addresses: Counter[str] = field(default_factory=Counter)
    timer: asyncio.TimerHandle | None = None


class FloodAggregator:
    """Per (action, source): ``burst`` events written, then one summary per window."""

    def __init__(self, record: Recorder, window_s: float = 60.0, burst: int = 5,
                 max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._record = record
        self.window_s = window_s
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._wall = wall
        #: in start order (a window is inserted when it starts, popped when it ends)
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()

    def record(self, source: str, actor: str, action: str, target: str = "",
               **details: Any) -> bool:
        """Record one refusal from ``source``; ``True`` when it was written on its own,
        ``False`` when it was counted into its window's summary."""
        now = self._clock()
        self._sweep(now)
        key = (action, flood_source(source))
        window = self._windows.get(key)
        if window is None:
            if len(self._windows) >= self.max_keys:
                key = (action, OVERFLOW_KEY)
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(started=now, actor=actor,
                                                      target=target)
        if window.written < self.burst and key[1] != OVERFLOW_KEY:
            window.written += 1
            self._record(actor, action, target, **details)
            return True
        if window.suppressed == 0:
            window.first_suppressed = self._wall()
            window.timer = _call_later(max(0.0, window.started + self.window_s - now),
                                       self._close, key)
        window.suppressed += 1
        window.last_suppressed = self._wall()
        if len(window.reasons) < _SAMPLE or details.get("reason") in window.reasons:
            window.reasons[str(details.get("reason", ""))] += 1
        address = details.get("address")
        if address and (len(window.addresses) < _SAMPLE or address in window.addresses):
            window.addresses[str(address)] += 1
        return False

    def _sweep(self, now: float) -> None:
        """Close every window that has ended (they are in start order: stop at the
        first still open one)."""
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.started < self.window_s:
                return
            self._close(key)

    def _close(self, key: tuple[str, str]) -> None:
        window = self._windows.pop(key, None)
        if window is None:
            return
        if window.timer is not None:
            window.timer.cancel()
        if window.suppressed:
            action, source = key
            actor = window.actor if source != OVERFLOW_KEY else "anonymous@*"
            self._record(actor, action, window.target if source != OVERFLOW_KEY else "",
                         aggregated=True, count=window.suppressed, source=source,
                         first=round(window.first_suppressed, 3),
                         last=round(window.last_suppressed, 3), window_s=self.window_s,
                         reasons=dict(window.reasons.most_common(_SAMPLE)),
                         addresses=dict(window.addresses.most_common(_SAMPLE)))

    def flush_all(self) -> None:
        """Write every pending summary now (the relay is stopping)."""
        for key in list(self._windows):
            self._close(key)

    def pending(self) -> int:
        """Events counted and not yet written (for tests and metrics)."""
        return sum(w.suppressed for w in self._windows.values())


def flood_source(source: str) -> str:
    """An address as the limiter counts it (an IPv6 /64 is one source); anything
    else (an agent id, a user) unchanged."""
    try:
        ipaddress.ip_address(source)
    except ValueError:
        return source
    return address_key(source)


def _call_later(delay: float, callback: Callable[..., None], *args: Any
                ) -> asyncio.TimerHandle | None:
    with contextlib.suppress(RuntimeError):  # no loop: flushed by flush_all or the next
        return asyncio.get_running_loop().call_later(delay, callback, *args)
    return None
