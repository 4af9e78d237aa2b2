"""The relay's one attempt limiter for everything that checks a secret.

Sign-in (password and TOTP), the password that confirms a password change or the
replacement of an active authenticator, TOTP enrolment codes, and attended-session
codes all go through here, and each follows the same order (docs/security.md,
"Attempt limits"):

1. **reserve** an attempt in every limit that applies (:mod:`backline.relay.ratelimit`),
   synchronously, before any slow step: past a limit the attempt is refused unread
   (429, audited as a flood);
2. evaluate it: argon2 runs in a small dedicated pool behind a semaphore
   (``argon2_concurrency``, 64 MiB each), and a check that cannot get a turn within
   ``argon2_wait_s`` (or finds too many already waiting, or its address already
   has one waiting) is refused 503 instead of queueing without bound;
3. **settle**: a failure stays counted, a success frees the slot (and clears the
   account), an attempt never evaluated just frees it.

``backline_auth_checks_total{kind}`` counts the evaluations, which the limits bound.

Lock-out resistance. A stranger's failures must not lock out the owner:

* sign-in: a browser that signed in to an account before holds a signed **device
  cookie** for it (``__Host-backline-device``, OWASP "device cookies"). Attempts
  with a valid one are limited per cookie only, never by the account's, address's or
  relay's budget of untrusted attempts, which strangers can exhaust. The cookie is
  bound to the user's id, creation time and credential epoch, so a password change
  or reset, disabling the user or re-creating the username voids it;
* session codes: an address's first tries are counted in their own relay-wide lane,
  which repeat guessers cannot drain; see :class:`JoinCodeLimits`.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.requests import HTTPConnection

from backline.relay import users
from backline.relay.config import RelayConfig
from backline.relay.ratelimit import AttemptLimiter, address_key
from backline.relay.webauth import ApiError, Principal, client_address

if TYPE_CHECKING:
    from backline.relay.ports import Configured, Counters, Recorder, Stored

    class Relay(Recorder, Configured, Stored, Counters):
        """What the attempt limiter uses of the relay."""

        cookie_secret: str

T = TypeVar("T")
DEVICE_COOKIE = "__Host-backline-device"
#: Checks allowed to wait for an argon2 turn, per slot; beyond that, 503 at once.
WAITING_PER_SLOT = 8
#: Untrusted checks one address (an IPv6 /64) may have waiting for a turn: without
#: it one stranger's burst filled the whole queue, and every new browser got 503.
WAITING_PER_ADDRESS = 1
#: How many of an address's tries at a session code count as "first tries".
FIRST_TRIES_PER_ADDRESS = 2
#: Keys for device cookies and for signed-in users re-entering a secret: neither has
#: a relay-wide budget that bounds its live keys, so a fixed ceiling (a relay's users
#: and the browsers they use within a window). Past it, new keys share the strict
#: overflow entry (:mod:`backline.relay.ratelimit`).
DEVICE_KEYS = 10_000
USER_KEYS = 10_000
#: No table larger than this, whatever the settings (about 15 MiB at 20 failures).
MAX_KEYS = 50_000
#: Slack over a relay-wide budget: the tables' windows start a few microseconds apart.
KEY_MARGIN = 64


def limiters(c: RelayConfig) -> dict[str, AttemptLimiter]:
    """Every attempt table a relay holds, each sized to what it can legitimately need.

    A table whose every live key is also counted in a relay-wide budget (a failure
    there, or an attempt in flight) never holds more live keys than that budget: the
    per-account and per-address sign-in tables hold at most ``login_failures_global``
    (an untrusted attempt reserves all three or none), the per-address code table at
    most what the two code lanes let through in one ``session_code_window_s``. Their
    ceilings follow from the settings, so the overflow entry is only a safety net
    there. Devices and users have fixed ceilings (:data:`DEVICE_KEYS`,
    :data:`USER_KEYS`); relay-wide budgets are one key."""
    def bounded(n: int) -> int:
        return min(MAX_KEYS, n + KEY_MARGIN)

    code_windows = -(-c.session_code_window_s // c.session_code_global_window_s)
    code_lanes = c.session_code_first_tries_global + c.session_code_failures_global
    return {
        "login_account": AttemptLimiter(c.login_failures_per_account, c.login_window_s,
                                        bounded(c.login_failures_global)),
        "login_address": AttemptLimiter(c.login_failures_per_address, c.login_window_s,
                                        bounded(c.login_failures_global)),
        "login_relay": AttemptLimiter(c.login_failures_global, c.login_window_s, 1),
        "login_device": AttemptLimiter(c.login_device_failures, c.login_window_s,
                                       DEVICE_KEYS),
        # Signed-in users re-entering their password or a code: per user.
        "reauth_user": AttemptLimiter(c.login_failures_per_account, c.login_window_s,
                                      USER_KEYS),
        "code_address": AttemptLimiter(c.session_code_failures_per_address,
                                       c.session_code_window_s,
                                       bounded(code_lanes * code_windows)),
        "code_first_tries": AttemptLimiter(c.session_code_first_tries_global,
                                           c.session_code_global_window_s, 1),
        "code_repeat": AttemptLimiter(c.session_code_failures_global,
                                      c.session_code_global_window_s, 1),
    }


class Busy(Exception):
    """No argon2 turn within the wait: the check was not evaluated. ``reason``:
    ``busy`` (queue full or wait over) or ``address_busy`` (the address already has
    :data:`WAITING_PER_ADDRESS` checks waiting)."""

    def __init__(self, reason: str = "busy") -> None:
        super().__init__(reason)
        self.reason = reason


class Argon2Gate:
    """At most ``slots`` argon2 checks at once, in their own threads.

    A check waits for a turn at most ``wait_s``, behind at most ``max_waiting``
    others; past either it is refused (:class:`Busy`) rather than queued without
    bound. Checks of known devices (``trusted``) have their own queue, served first: a
    flood of strangers' guesses across many accounts cannot starve the owners. In the
    other queue, one ``owner`` (an address) may have at most
    :data:`WAITING_PER_ADDRESS` checks waiting, so filling it takes as many addresses
    as it has places.

    A turn is given back when the *thread* finishes, not when the awaiting request
    does: a client that disconnects mid-check cannot free a turn while its hash still
    holds 64 MiB."""

    def __init__(self, slots: int, wait_s: float) -> None:
        self.slots = slots
        self.wait_s = wait_s
        self.max_waiting = slots * WAITING_PER_SLOT
        self._free = slots
        self._queues: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(), deque())  # trusted first, then the rest
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="argon2")
        self._waiting: dict[str, int] = {}  # owner -> its checks waiting

    async def _acquire(self, trusted: bool, owner: str | None) -> None:
        if self._free > 0 and not any(self._queues):
            self._free -= 1
            return
        queue = self._queues[0 if trusted else 1]
        if len(queue) >= self.max_waiting:
            raise Busy
        if owner is not None:
            if self._waiting.get(owner, 0) >= WAITING_PER_ADDRESS:
                raise Busy("address_busy")
            self._waiting[owner] = self._waiting.get(owner, 0) + 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(turn)
        try:
            await asyncio.wait({turn}, timeout=self.wait_s)
        except BaseException:  # the request was cancelled while waiting
            if turn.done():
                self._release()  # it had just been handed the turn: pass it on
            else:
                turn.cancel()
                queue.remove(turn)
            raise
        finally:
            if owner is not None:
                left = self._waiting.pop(owner) - 1
                if left:
                    self._waiting[owner] = left
        if not turn.done():
            turn.cancel()
            queue.remove(turn)
            raise Busy

    def _release(self, _done: object = None) -> None:
        for queue in self._queues:
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # the turn passes straight to the next waiter
                    return
        self._free += 1

    async def run(self, fn: Callable[..., T], *args: Any, trusted: bool = False,
                  owner: str | None = None) -> T:
        """``fn(*args)`` in an argon2 thread once a turn is free; ``owner`` (untrusted
        checks: the address key) is held to :data:`WAITING_PER_ADDRESS` waiting."""
        await self._acquire(trusted, None if trusted else owner)
        try:
            future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.shield(future)


@dataclass
class Attempt:
    """Reserved slots, settled together: ``(limiter, slot, clear on success)``."""

    slots: list[tuple[AttemptLimiter, str, bool]] = field(default_factory=list)
    settled: bool = False

    def settle(self, outcome: str) -> None:
        """``failed`` keeps every slot counted, ``succeeded`` frees them (clearing
        those marked so), ``released`` frees them (never evaluated)."""
        if self.settled:
            return
        self.settled = True
        for limiter, slot, clear in self.slots:
            limiter.settle(slot, failed=outcome == "failed",
                           clear=clear and outcome == "succeeded")


def _reserve(lanes: list[tuple[AttemptLimiter, str, bool, str]]
             ) -> tuple[Attempt | None, str, float]:
    """All of ``lanes`` (limiter, key, clear, name) or none: the attempt, or the name
    of the limit that refused and its wait."""
    attempt = Attempt()
    for limiter, key, clear, name in lanes:
        slot = limiter.reserve(key)
        if slot is None:
            attempt.settle("released")
            return None, name, limiter.retry_after(key)
        attempt.slots.append((limiter, slot, clear))
    return attempt, "", 0.0


class AuthLimits:
    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        c = relay.config
        tables = limiters(c)
        self.by_account = tables["login_account"]
        self.by_address = tables["login_address"]
        self.untrusted = tables["login_relay"]
        self.by_device = tables["login_device"]
        self.by_user = tables["reauth_user"]
        self.argon2 = Argon2Gate(c.argon2_concurrency, c.argon2_wait_s)
        self._devices = URLSafeTimedSerializer(relay.cookie_secret, salt="backline-device")

    # --- evaluations -----------------------------------------------------------------

    async def hash_work(self, fn: Callable[..., T], *args: Any) -> T:
        """Run argon2 work (hashing a signed-in user's new password) through the gate, in
        the signed-in users' queue; 503 when busy."""
        try:
            return await self.argon2.run(fn, *args, trusted=True)
        except Busy:
            raise _busy(audited=False) from None

    async def _password(self, kind: str, username: str, password: str,
                        trusted: bool = False, owner: str | None = None
                        ) -> users.User | None:
        counter, engine = self.relay.metrics.auth_checks.labels(kind), self.relay.engine

        def check() -> users.User | None:  # counted once it really runs
            counter.inc()
            return users.verify_password(engine, username, password)

        return await self.argon2.run(check, trusted=trusted, owner=owner)

    def _totp(self, user: users.User, code: str) -> bool:
        self.relay.metrics.auth_checks.labels("totp").inc()
        return users.check_totp(self.relay.engine, user, code)

    # --- sign-in ---------------------------------------------------------------------

    async def sign_in(self, conn: HTTPConnection, username: str, password: str, code: str
                      ) -> tuple[users.User | None, str]:
        """Check a sign-in within the limits: the user and ``""``, or the failure's
        reason. Raises :class:`ApiError` 429 (a limit) or 503 (argon2 busy), audited."""
        address = client_address(conn)
        device = self.device_of(conn, username)
        attempt = None
        if device:
            attempt, _, _ = _reserve([(self.by_device, device, True, "device")])
        trusted = attempt is not None
        if attempt is None:  # no device cookie, or its own budget is spent: untrusted
            attempt, limit, wait = _reserve([
                (self.by_account, username, True, "account"),
                (self.by_address, address_key(address), False, "address"),
                (self.untrusted, "*", False, "relay")])
            if attempt is None:
                self._refuse_login(address, username, limit)
                raise _limited(wait, "too many failed sign-ins")
        outcome = "released"
        try:
            try:
                user = await self._password("password", username, password, trusted,
                                            owner=address_key(address))
            except Busy as busy:
                if busy.reason == "address_busy":
                    # Its own address's excess: counted against the address (never the
                    # account), so a burst from one address soon meets its 429.
                    self.by_address.fail(address_key(address))
                self._refuse_login(address, username, busy.reason)
                raise _busy() from None
            reason = "" if user else "bad_password"
            if user and user.totp_enabled:
                if not code:
                    reason = "totp_missing"
                elif not self._totp(user, code):
                    reason = "bad_totp"
            outcome = "failed" if reason else "succeeded"
            return user, reason
        finally:
            attempt.settle(outcome)

    def _refuse_login(self, address: str, username: str, limit: str) -> None:
        self.relay.metrics.errors.labels("login_rate_limited").inc()
        self.relay.record_flood(address_key(address), f"anonymous@{address}",
                                "auth.login.rate_limited", f"user:{username}",
                                reason=limit, address=address)

    def device_of(self, conn: HTTPConnection, username: str) -> str | None:
        """The id of the valid device cookie ``conn`` holds for ``username``, if any.

        Valid means signed by this relay, younger than ``login_device_days``, and bound
        to the account as it is *now*: the user's id and creation time (a username
        deleted and created again is another user, even where SQLite reuses the id) and
        credential epoch (increased by a password change or reset and by disabling the
        user), and the user not disabled. Anything else counts as no cookie at all. The
        database is read only for a cookie whose signature holds, so strangers' requests
        cost nothing more."""
        raw = conn.cookies.get(DEVICE_COOKIE)
        if not raw or len(raw) > 512:
            return None
        try:
            data = self._devices.loads(raw, max_age=self.relay.config.login_device_days * 86400)
        except BadSignature:
            return None
        if not isinstance(data, dict):
            return None
        device, bound = data.get("d"), (data.get("i"), data.get("c"), data.get("e"))
        if not (isinstance(device, str) and len(device) <= 64):
            return None
        user = users.get_user(self.relay.engine, username=username)
        if user is None or user.disabled \
                or bound != (user.id, user.created_at, user.credential_epoch):
            return None
        return device

    def device_cookie(self, conn: HTTPConnection, user: users.User) -> str:
        """The ``Set-Cookie`` value that makes this browser a known device of ``user``
        at its current credential epoch (its device id kept when it already was one).
        ``user`` must be read after any change of its epoch (a password change)."""
        device = self.device_of(conn, user.username) or secrets.token_urlsafe(16)
        value = self._devices.dumps({"i": user.id, "c": user.created_at,
                                     "e": user.credential_epoch, "d": device,
                                     "t": int(time.time())})
        max_age = int(self.relay.config.login_device_days * 86400)
        return (f"{DEVICE_COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; "
                "SameSite=Strict")

    # --- signed-in users proving themselves again ------------------------------------

    def _reauth_attempt(self, who: Principal) -> Attempt:
        attempt, _, wait = _reserve([(self.by_user, f"user:{who.user.id}", True, "user")])
        if attempt is None:
            self._refuse_reauth(who, "user")
            raise _limited(wait, "too many wrong passwords or codes")
        return attempt

    def _refuse_reauth(self, who: Principal, limit: str) -> None:
        self.relay.metrics.errors.labels("reauth_rate_limited").inc()
        self.relay.record_flood(who.actor, who.actor, "auth.reauth.rate_limited", who.actor,
                                reason=limit, address=who.address)

    async def reauth(self, who: Principal, kind: str, password: str, code: str | None = None
                     ) -> bool:
        """Whether ``who`` knows the account's password (and, when ``code`` is not
        None, a current code of its authenticator): limited per user like sign-in."""
        attempt = self._reauth_attempt(who)
        outcome = "released"
        try:
            try:
                user = await self._password(kind, who.user.username, password, trusted=True)
            except Busy:
                self._refuse_reauth(who, "busy")
                raise _busy() from None
            ok = user is not None and user.id == who.user.id
            if ok and code is not None:
                ok = self._totp(who.user, code)
            outcome = "succeeded" if ok else "failed"
            return ok
        finally:
            attempt.settle(outcome)

    def confirm_totp(self, who: Principal, code: str) -> bool:
        """Finish TOTP enrolment with ``code``, limited per user."""
        attempt = self._reauth_attempt(who)
        outcome = "released"
        try:
            self.relay.metrics.auth_checks.labels("totp").inc()
            ok = users.confirm_totp(self.relay.engine, who.user, code)
            outcome = "succeeded" if ok else "failed"
            return ok
        finally:
            attempt.settle(outcome)


def _limited(wait: float, what: str) -> ApiError:
    """A 429; always raised right after ``_refuse_*`` recorded it (by its flood key)."""
    seconds = str(int(wait) + 1)
    return ApiError(429, "rate_limited", f"{what}; try again in {seconds} s",
                    {"Retry-After": seconds}, audited=True)


def _busy(audited: bool = True) -> ApiError:
    """A 503 for a full argon2 gate; ``audited`` when ``_refuse_*`` recorded it."""
    return ApiError(503, "busy", "too many password checks at once; try again shortly",
                    {"Retry-After": "1"}, audited=audited)


class CodeRateLimited(Exception):
    """A session-code attempt refused unread; ``limit`` names the limit."""

    def __init__(self, limit: str, retry_after: float) -> None:
        super().__init__(limit)
        self.limit = limit
        self.retry_after = retry_after


class JoinCodeLimits:
    """Limits on attended-session codes that strangers cannot turn into a lock-out.

    * per address (an IPv6 /64 counts as one): ``session_code_failures_per_address``
      wrong codes per ``session_code_window_s``, reserved before the lookup;
    * relay-wide, an evaluation *rate* in two lanes per ``session_code_global_window_s``:
      an address's first :data:`FIRST_TRIES_PER_ADDRESS` tries in its window are
      counted in the first-tries lane (``session_code_first_tries_global``), the rest in
      the repeat lane (``session_code_failures_global``). A flood of repeat guesses
      exhausts only the repeat lane, so a customer typing the code they were read is
      still evaluated; keeping the first-tries lane exhausted needs that many fresh
      addresses every window. Both lanes together bound the guesses the relay
      evaluates, whatever the number of addresses.
    """

    def __init__(self, config: RelayConfig) -> None:
        tables = limiters(config)
        self.by_address = tables["code_address"]
        self.first = tables["code_first_tries"]
        self.repeat = tables["code_repeat"]

    def _lane(self, key: str) -> tuple[AttemptLimiter, str]:
        if self.by_address.used(key) < FIRST_TRIES_PER_ADDRESS:
            return self.first, "first_tries"
        return self.repeat, "repeat"

    def retry_after(self, address: str) -> tuple[float, str]:
        """Seconds until ``address`` may try (0: now) and the limit that holds it: a
        cheap early refusal, before the join frame is even read."""
        key = address_key(address)
        lane, name = self._lane(key)
        by_address, by_lane = self.by_address.retry_after(key), lane.retry_after("*")
        return (by_address, "address") if by_address >= by_lane else (by_lane, name)

    def reserve(self, address: str) -> Attempt:
        """Reserve one evaluation, or raise :class:`CodeRateLimited`."""
        key = address_key(address)
        lane, name = self._lane(key)
        attempt, limit, wait = _reserve([(self.by_address, key, False, "address"),
                                         (lane, "*", False, name)])
        if attempt is None:
            raise CodeRateLimited(limit, wait)
        return attempt

    def fail(self, address: str) -> None:
        """Count a malformed join request as a wrong code, within the limits like any
        other: when they are full it is refused anyway, and counting it past them
        would let malformed requests from many addresses fill the per-address table
        beyond what the lanes bound (see :func:`limiters`)."""
        try:
            self.reserve(address).settle("failed")
        except CodeRateLimited:
            pass
