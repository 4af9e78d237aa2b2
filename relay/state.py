"""Everything one relay process holds: config, database, keys, presence and the live bus."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import sqlalchemy as sa

from backline.common import keys
from backline.relay import audit_events, metrics, pinset_serial, retention, tls_identity
from backline.relay.agents import Presence, get_agent
from backline.relay.audit import AuditLog
from backline.relay.audit_floods import FloodAggregator
from backline.relay.auth_limits import AuthLimits
from backline.relay.blobs import BlobStore
from backline.relay.capabilities.runner import ChannelRunner
from backline.relay.config import RelayConfig
from backline.relay.datadir import DataDir
from backline.relay.fixes.service import FixService
from backline.relay.live import LiveBus
from backline.relay.sessions.manager import SessionManager
from backline.relay.siem.stream import SiemStreamer
from backline.relay.store import open_store
from backline.relay.tls_identity import TlsIdentity
from backline.relay.webhooks import WebhookSender

log = logging.getLogger("backline.relay")
_T = TypeVar("_T")
#: How long a worker thread waits for the loop to write its audit event (a loop this
#: busy is a relay in trouble: the thread raises, and its caller logs it).
ON_LOOP_TIMEOUT_S = 60.0


@dataclass
class Relay:
    config: RelayConfig
    engine: sa.Engine
    datadir: DataDir
    audit: AuditLog
    fingerprint: str
    ca_public_key: str
    cookie_secret: str
    presence: Presence = field(default_factory=Presence)
    bus: LiveBus = field(default_factory=LiveBus)
    started_at: float = field(default_factory=time.time)
    auth: AuthLimits = field(init=False)
    metrics: metrics.RelayMetrics = field(init=False)
    sessions: SessionManager = field(init=False)
    channels: ChannelRunner = field(init=False)
    webhooks: WebhookSender = field(init=False)
    blobs: BlobStore = field(init=False)
    floods: FloodAggregator = field(init=False)
    #: Approved fixes: catalogue, fix key, revocation push (relay/fixes/service.py).
    fixes: FixService = field(init=False)
    #: The audit trail streamed to SIEM destinations (relay/siem/stream.py).
    siem: SiemStreamer = field(init=False)
    #: SPKI pins agents are told to trust (relay/tls_identity.py), current key first.
    pins: tuple[str, ...] = ()
    tls_identity: TlsIdentity | None = None
    #: ``pins`` signed by the audit key with their serial, for ``GET /agent/pins``.
    pin_announcement: pinset_serial.Announcement | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _pending: list[tuple[str, str, str, dict[str, Any]]] = field(default_factory=list)
    _flush_scheduled: bool = False
    _loop: asyncio.AbstractEventLoop | None = None
    #: Set when the server starts to stop: sockets closed from then on ended by it.
    stopping: bool = False

    def __post_init__(self) -> None:
        c = self.config
        self.auth = AuthLimits(self)
        self.metrics = metrics.RelayMetrics(self)
        # Summaries are written as declared (audit_events.FLOOD_SUMMARY), unchecked: what
        # they count was checked when it reached record_flood.
        self.floods = FloodAggregator(self._append, window_s=c.audit_flood_window_s)
        self.audit.listeners.append(self.bus.publish_audit)
        self.audit.on_sink_failure = self._sink_failed
        self.sessions = SessionManager(self)
        self.channels = ChannelRunner(self)
        self.blobs = BlobStore(self.datadir.root / "blobs")
        self.fixes = FixService(self)
        self.siem = SiemStreamer(self)
        self.webhooks = WebhookSender.from_config(
            c, self.record, lambda agent_id: get_agent(self.engine, self.presence, agent_id))

    def set_tls_identity(self, identity: TlsIdentity) -> None:
        """What the relay serves and pins now: at start, and after a reload (SIGHUP)."""
        self.tls_identity = identity
        self.fingerprint = identity.fingerprint
        self.pins = identity.pins
        # Ending TLS itself (a certificate file), the relay knows the key it serves.
        self.pin_announcement = pinset_serial.announce(self.datadir, self.audit.signing_key,
                                                       identity.pins, bool(identity.cert_path))

    @property
    def token_pins(self) -> tuple[str, ...]:
        """What tokens and ``join --pin`` carry: the SPKI pins, or (a proxy configured
        only with ``tls_fingerprint``) the legacy certificate hash."""
        return self.pins or (self.fingerprint,)

    @property
    def token_serial(self) -> int:
        """The serial of the signed pin set that :attr:`token_pins` is (0: none)."""
        announced = self.pin_announcement
        return announced.serial if announced and announced.pins == self.token_pins else 0

    @property
    def tls_bindings(self) -> tuple[str, ...]:
        """What agents' enrollment and control signatures may be bound to."""
        return self.tls_identity.bindings if self.tls_identity else (self.fingerprint,)

    @property
    def origin(self) -> str:
        return self.config.effective_public_url

    def record(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        """Append an audit event and log it; refusals are logged at warning level. The
        event must be in the catalogue (:mod:`backline.relay.audit_events`). From any
        thread (:meth:`_on_loop`)."""
        details = audit_events.checked(action, details)
        self._on_loop(functools.partial(self._append, actor, action, target, **details))

    def _on_loop(self, write: Callable[[], _T]) -> _T:
        """Run ``write`` on the serving loop's thread and return what it returned. The
        pending batch (:meth:`record_soon`) and the flood counters are the loop's own,
        unlocked: a worker thread (a scheduled report's delivery, a retention pass) that
        wrote directly raced the loop on them. The thread waits for its write, so the
        trail holds the event before the thread goes on, as with a direct write. Not
        serving (the CLI, tests, a closed loop): written here."""
        loop = self._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or loop.is_closed():
            return write()
        done: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def call() -> None:
            if not done.set_running_or_notify_cancel():
                return  # the thread gave up waiting: it was told nothing was written
            try:
                done.set_result(write())
            except BaseException as exc:  # the waiting thread hears of it, whatever it is
                done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise  # and the loop too (KeyboardInterrupt, SystemExit)

        try:
            loop.call_soon_threadsafe(call)
        except RuntimeError:  # closed meanwhile: nothing else writes now
            return write()
        try:
            return done.result(timeout=ON_LOOP_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            if done.cancel():  # never to be written: the caller's error says so
                raise
            return done.result(timeout=ON_LOOP_TIMEOUT_S)  # being written: its outcome

    def record_once(self, claim: Callable[[sa.Connection], bool], actor: str, action: str,
                    target: str = "", **details: Any) -> bool:
        """:meth:`record`, in one transaction with ``claim``
        (:meth:`AuditLog.append_many`): False, and nothing written, when ``claim`` says it
        was recorded before. From any thread."""
        details = audit_events.checked(action, details)
        return self._on_loop(functools.partial(self._record_once, claim, actor, action,
                                               target, details))

    def _record_once(self, claim: Callable[[sa.Connection], bool], actor: str, action: str,
                     target: str, details: dict[str, Any]) -> bool:
        if self._pending:
            self.flush_records()
        if not self.audit.append_many([(actor, action, target, details)], claim):
            return False
        _log_event(actor, action, target, details)
        return True

    def _append(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        if self._pending:
            self.flush_records()  # the trail keeps the order things happened in
        self.audit.append(actor, action, target, details)
        _log_event(actor, action, target, details)

    def record_flood(self, source: str, actor: str, action: str, target: str = "",
                     **details: Any) -> None:
        """:meth:`record` for what can come in floods (refusals a stranger or a
        compromised agent can repeat at will): the first few from ``source`` (an
        address, an agent) are written one by one, the rest of the minute as one
        aggregated event (:mod:`backline.relay.audit_floods`)."""
        details = audit_events.checked(action, details, flooding=True)
        self._on_loop(functools.partial(self.floods.record, source, actor, action, target,
                                        **details))

    def record_soon(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        """:meth:`record`, batched with the others of this turn of the event loop into
        one transaction, written at the start of the next turn (or before any
        :meth:`record`, or on stop). For agents connecting and leaving: in a reconnect
        storm one commit per agent was a fifth of the relay's CPU
        (docs/benchmarks.md, "Idle agents")."""
        details = audit_events.checked(action, details)
        self._pending.append((actor, action, target, details))
        _log_event(actor, action, target, details)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush_records)

    def flush_records(self) -> None:
        self._flush_scheduled = False
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.audit.append_many(pending)
        except Exception:
            # Kept, in order, and tried again shortly (a busy database, say).
            self._pending[:0] = pending
            log.exception("could not write %d audit events; will retry", len(pending))
            with contextlib.suppress(RuntimeError):  # no running loop: a later record()
                asyncio.get_running_loop().call_later(1.0, self._retry_records)
                self._flush_scheduled = True

    def _retry_records(self) -> None:
        self._flush_scheduled = False
        self.flush_records()

    def _sink_failed(self, sink: str, reason: str, error: str) -> None:
        """A checkpoint sink failed (from any thread: the syslog sink's own, or a
        worker's append): audited on the loop, aggregated per sink (record_flood)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return  # not serving (yet): logged and counted by the AuditLog
        loop.call_soon_threadsafe(functools.partial(
            self.record_flood, f"sink:{sink}", "system", "audit.sink.failed",
            f"sink:{sink}", reason=reason, error=error))

    async def start_background(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self._housekeeping()))
        self._tasks.append(asyncio.create_task(self.sessions.reaper()))
        from backline.relay.reports import delivery  # reports (issue 14): the schedule

        self._tasks.append(asyncio.create_task(delivery.run(self)))
        self._tasks += self.siem.start()
        self._tasks.append(asyncio.create_task(retention.periodic(self)))

    async def stop_background(self) -> None:
        await self.sessions.close_all("relay_shutdown")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: S110 - shutting down
                pass
        self._tasks.clear()
        await self.webhooks.stop()
        await self.siem.stop()
        self.floods.flush_all()
        self.presence.flush_last_seen(self.engine)
        self.flush_records()

    def seal(self) -> None:
        """The last step of a clean stop: a signed checkpoint over the whole trail, so
        ``audit verify`` can tell a clean stop from events cut off after it."""
        self.flush_records()
        self.audit.checkpoint()

    async def _housekeeping(self) -> None:
        """Flush last-seen times and sign audit checkpoints on their timers; forget old
        self-service run keys once an hour (the first pass a tick after the start)."""
        from backline.relay.fixes import self_service

        tick = min(15.0, self.config.audit_checkpoint_seconds)
        flushed = time.monotonic()
        pruned = time.monotonic() - PRUNE_EVERY_S
        while True:
            await asyncio.sleep(tick)
            try:
                if time.monotonic() - flushed >= LAST_SEEN_FLUSH_S - tick / 2:
                    flushed = time.monotonic()
                    self.presence.flush_last_seen(self.engine)
                if time.monotonic() - pruned >= PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    await asyncio.to_thread(self_service.prune, self.engine)
                self.audit.checkpoint_if_due()
            except Exception:
                log.exception("housekeeping failed; will retry")


def _log_event(actor: str, action: str, target: str, details: dict[str, Any]) -> None:
    """The audit event as a log line. Actor, target and details hold network input (a
    username, a hostname): the relay's formatter (:mod:`backline.relay.logfmt`) escapes
    them; the ``json`` format also gets them as fields (``extra``)."""
    level = (logging.WARNING if ".refused" in action or "failed" in action
             or "error" in action else logging.INFO)
    if log.isEnabledFor(level):
        shown = _loggable(details)
        log.log(level, "audit %s %s %s %s", actor, action, target, shown,
                extra={"audit": {"actor": actor, "action": action, "target": target,
                                 "details": shown}})


#: How stale an online agent's ``last_seen`` row may get (after a crash, at most this).
LAST_SEEN_FLUSH_S = 60.0
#: How often keys no longer needed are forgotten (``self_service_runs``).
PRUNE_EVERY_S = 3600.0

#: Words that, as a whole word of a detail's name (``password``, ``new_password``,
#: ``totp_code``, ``code``, ``csrf_token``), mark a secret. ``totp`` (whether a second
#: factor was used) and ``close_code`` (a WebSocket close code) are facts, not secrets.
_SECRET_WORDS = frozenset({"password", "passwd", "secret", "token", "signature", "code",
                           "cookie"})
_NOT_SECRET = frozenset({"close_code", "status_code", "exit_code", "error_code"})


def _is_secret(name: str) -> bool:
    lowered = name.lower()
    return lowered not in _NOT_SECRET and not _SECRET_WORDS.isdisjoint(
        re.split(r"[^a-z0-9]+", lowered))


def _loggable(details: dict[str, Any]) -> dict[str, Any]:
    """Secrets never reach logs: mask any detail whose name says it is one."""
    return {k: ("***" if _is_secret(k) else v) for k, v in details.items()}


def open_relay(config: RelayConfig) -> Relay:
    """Open (creating on first use) the data directory and database of ``config``."""
    store = open_store(config)
    identity = tls_identity.load(config, store.datadir)
    ca_public = keys.public_openssh(keys.load_private(store.datadir.ca_key))
    relay = Relay(config=config, engine=store.engine, datadir=store.datadir,
                  audit=store.audit, fingerprint=identity.fingerprint,
                  ca_public_key=ca_public, cookie_secret=store.datadir.read_cookie_secret())
    relay.set_tls_identity(identity)
    return relay
