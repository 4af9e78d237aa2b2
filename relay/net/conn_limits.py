"""Bounds on connections that have not shown who they are: in number and in time.

Why: a descriptor is the relay's scarcest resource. Before this, a client that
finished TLS and then said nothing (or trickled its request head, or a declared body)
was held for ever, and about 1,000 of them at a 1,024-descriptor limit made
``/healthz`` and ``/agent/connect`` unreachable. So every connection gets a
:class:`Conn` *at accept time*, before the TLS handshake (the slow step a stranger
can stretch), from a :class:`Gate` that refuses it outright when its address, or the
relay as a whole, already holds too many unauthenticated ones; the slot is given back
the moment the connection authenticates (:func:`authenticated`) or closes.

"Authenticated" has exactly one marking point per kind of client, each a single
:func:`authenticated` call where the relay has just accepted the credentials:

- an agent's control socket, once its signed challenge passes (``relay/control.py``);
- an agent's session tunnel or attended join, once its token or code is accepted
  (``relay/sessions/sockets.py``);
- a browser or API client, once a request on the connection carries a valid session
  cookie or API token (``relay/webauth.py``: :func:`webauth.authenticate`), which
  also covers the console's WebSockets.

Everything else (sign-in pages, ``/healthz``, enrolment, strangers) stays counted
for its whole life, which the time bounds keep short. Time bounds hold whether or
not a connection authenticated: each :class:`Conn` carries one deadline (one timer),
re-aimed by the HTTP protocol (:mod:`backline.relay.net.conn_http`) as the connection
moves from reading a head to reading a body to waiting for the application, and set
at the WebSocket upgrade for the time the endpoint has to authenticate it. A deadline
that passes hangs up at once (``abort``: the descriptor is freed now, not after a
TLS goodbye the peer may never answer).

Refusals and timeouts are counted in metrics and audited as floods
(:meth:`backline.relay.state.Relay.record_flood`): the first few per address, then
one aggregated event.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import resource
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("backline.relay.net.conn_limits")

#: Once this share of the global cap is taken, only addresses holding fewer than
#: :data:`NEWCOMER_HOLD` unauthenticated connections get one more: a few addresses
#: cannot fill the last quarter, which is kept for everyone else (health checks,
#: agents reconnecting, people signing in).
PRESSURE_SHARE = 0.75
NEWCOMER_HOLD = 4
#: Connections past their deadline hung up per turn of the event loop (Gate._expire).
EXPIRE_PER_TURN = 32

#: The automatic overall cap never exceeds this: past it, memory (each TLS connection in
#: its handshake holds OpenSSL's buffers and state) would run out before descriptors do.
AUTO_CEILING = 16_384

#: Phases a deadline can end (``reason`` of a ``connection.timeout`` event).
TLS_HANDSHAKE = "tls_handshake"
REQUEST_HEAD = "request_head"
REQUEST_BODY = "request_body"
WEBSOCKET_AUTH = "websocket_auth"
RESPONSE_WRITE = "response_write"
#: A socket the relay hung up (a console dropped, a room ended) that did not close:
#: its peer does not read, so its last frames wait in a send that never returns.
HUNG_UP = "hung_up"
#: How long such a socket may take nothing before it is aborted (:func:`end_within`),
#: and how long it has in all to take its last frames and close, however it reads.
HANG_UP_GRACE_S = 10.0
HANG_UP_MAX_S = 120.0

#: The connection whose bytes are being handled: set around the HTTP protocol's
#: ``data_received``, so the tasks it starts (requests, WebSocket endpoints) inherit
#: it and :func:`authenticated` finds their connection without any plumbing.
CURRENT: contextvars.ContextVar[Conn | None] = contextvars.ContextVar(
    "backline_conn", default=None)

#: ``get_extra_info`` name under which transports offer their :class:`Conn`.
EXTRA = "backline_conn"


def nofile_limit() -> int:
    """The process's soft RLIMIT_NOFILE (descriptors it may hold at once)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


@dataclass(frozen=True)
class Limits:
    """The effective bounds (settings resolved; ``0`` caps computed from the
    descriptor limit). See docs/operator-guide.md, "Connection limits"."""

    max_unauthenticated: int
    max_unauthenticated_per_address: int
    tls_handshake_timeout_s: float = 10.0
    request_head_timeout_s: float = 10.0
    request_body_timeout_s: float = 30.0
    request_body_min_bytes_per_s: int = 1024
    keepalive_timeout_s: float = 5.0
    websocket_auth_timeout_s: float = 15.0
    exempt: frozenset[str] = frozenset()

    @classmethod
    def from_config(cls, cfg: Any, nofile: int | None = None) -> Limits:
        """Half the descriptor limit for unauthenticated connections overall, at most
        :data:`AUTO_CEILING` (the other half stays for agents, browsers signed in, the
        database and the relay itself);
        a quarter of that per address (many agents behind one NAT reconnect at once
        after a restart; the pressure rule, not this cap, keeps the last quarter free)."""
        nofile = nofile_limit() if nofile is None else nofile
        total = cfg.max_unauthenticated_connections or max(16, min(AUTO_CEILING, nofile // 2))
        per_address = cfg.max_unauthenticated_per_address or max(4, total // 4)
        return cls(max_unauthenticated=total,
                   max_unauthenticated_per_address=min(per_address, total),
                   tls_handshake_timeout_s=cfg.tls_handshake_timeout_s,
                   request_head_timeout_s=cfg.request_head_timeout_s,
                   request_body_timeout_s=cfg.request_body_timeout_s,
                   request_body_min_bytes_per_s=cfg.request_body_min_bytes_per_s,
                   keepalive_timeout_s=cfg.keepalive_timeout_s,
                   websocket_auth_timeout_s=cfg.websocket_auth_timeout_s,
                   exempt=frozenset(cfg.trusted_proxies))


class Reporter(Protocol):
    def __call__(self, kind: str, address: str, reason: str) -> None: ...


class _Hangable(Protocol):
    def abort(self) -> None: ...
    def is_closing(self) -> bool: ...


def address_key(host: str) -> str:
    """What the per-address cap counts by: the IPv4 address, or the IPv6 /64 (one
    customer's network; an attacker has billions of addresses inside one)."""
    if ":" not in host:
        return host  # accept() gives IPv4 addresses in their one canonical form
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class Conn:
    """One accepted connection's slot (while unauthenticated) and its one deadline."""

    __slots__ = ("address", "due", "gate", "held", "hung_at", "key", "on_hung_up", "over",
                 "phase", "timer", "transport")

    def __init__(self, gate: Gate, address: str, key: str) -> None:
        self.gate = gate
        self.address = address
        self.key = key
        self.held = True  # counts against the caps
        self.transport: _Hangable | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.due = 0.0
        self.phase = ""
        self.over = False  # closed: no deadline may be set any more
        #: Who audits a hung-up socket's abort (:func:`end_within`): the room, which
        #: knows whose console it was; else it is reported as any timeout.
        self.on_hung_up: Callable[[], None] | None = None
        self.hung_at: float | None = None  # loop time of the first end_within

    # -- the slot --------------------------------------------------------------------

    def authenticated(self) -> None:
        """The connection showed valid credentials: it no longer counts against the
        caps, and a WebSocket's authentication deadline is over."""
        if self.phase == WEBSOCKET_AUTH:
            self.clear_deadline()
        self._release()

    def closed(self) -> None:
        """The connection is over (any way at all): idempotent."""
        self.over = True
        self.clear_deadline()
        self.transport = None
        self._release()

    def _release(self) -> None:
        if self.held:
            self.held = False
            self.gate._release(self.key)

    # -- the deadline ------------------------------------------------------------------

    def deadline_in(self, seconds: float, phase: str) -> None:
        self.deadline_at(self.gate.loop.time() + seconds, phase)

    def deadline_at(self, when: float, phase: str) -> None:
        """End the connection at loop time ``when`` unless moved or cleared first.
        Moving it later costs no new timer: the one set fires and re-aims itself."""
        if self.over:
            return
        self.phase = phase
        self.due = when
        if self.timer is not None:
            if self.timer.when() <= when:
                return
            self.timer.cancel()
        self.timer = self.gate.loop.call_at(when, self._fire)

    def clear_deadline(self) -> None:
        self.phase = ""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fire(self) -> None:
        self.timer = None
        if not self.phase:
            return
        now = self.gate.loop.time()
        if self.due > now + 0.001:
            self.timer = self.gate.loop.call_at(self.due, self._fire)
            return
        self.gate._expire(self)

    def _end(self) -> None:
        """Hang up now: the deadline passed (called by :meth:`Gate._drain`)."""
        if not self.phase or self.timer is not None:
            return  # authenticated, closed, or given a new deadline while it waited
        phase, self.phase = self.phase, ""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        hook = self.on_hung_up if phase == HUNG_UP else None
        self.gate.timed_out(self, phase, report=hook is None)
        transport.abort()
        if hook is not None:
            try:
                hook()
            except Exception:
                log.exception("could not report a hung-up connection's abort")


class Gate:
    """Counts unauthenticated connections per address and overall; admits or refuses
    each new one at accept time."""

    def __init__(self, limits: Limits, loop: asyncio.AbstractEventLoop,
                 report: Reporter | None = None, registry: Any = None) -> None:
        self.limits = limits
        self.loop = loop
        self.report = report
        self.total = 0
        self.by_key: dict[str, int] = {}
        self._thread = threading.get_ident()
        self._exempt_all = "*" in limits.exempt
        self._exempt_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in limits.exempt:
            try:
                self._exempt_nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue
        self._pressure = max(1, int(limits.max_unauthenticated * PRESSURE_SHARE))
        self.refused: dict[str, int] = {}
        self.timeouts: dict[str, int] = {}
        self._refused_metric: Any = None
        self._timeout_metric: Any = None
        self._children: dict[tuple[Any, str], Any] = {}  # labelled counters, looked up once
        self._expiring: deque[Conn] = deque()
        self._draining = False
        if registry is not None:
            self._register(registry)

    def _register(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self._refused_metric = Counter(
            "backline_connections_refused_total",
            "Connections refused at accept time by the unauthenticated-connection caps",
            ["reason"], registry=registry)
        self._timeout_metric = Counter(
            "backline_connections_timed_out_total",
            "Connections ended by a deadline (TLS handshake, request head or body, "
            "WebSocket authentication, a hung-up socket that did not close)", ["phase"],
            registry=registry)
        gauge = Gauge("backline_connections_unauthenticated",
                      "Connections open that have not authenticated", registry=registry)
        gauge.set_function(lambda: self.total)

    def admit(self, host: str) -> Conn | None:
        """A slot for a connection just accepted from ``host``, or ``None`` (refused,
        counted and reported) when a cap is reached."""
        key = address_key(host)
        held = self.by_key.get(key, 0)
        limits = self.limits
        reason = ""
        exempt = (self._exempt_all or bool(self._exempt_nets)) and self._is_exempt(host)
        if self.total >= limits.max_unauthenticated:
            reason = "global_cap"
        elif not exempt and held >= limits.max_unauthenticated_per_address:
            reason = "address_cap"
        elif not exempt and self.total >= self._pressure and held >= NEWCOMER_HOLD:
            reason = "global_pressure"
        if reason:
            self.refused[reason] = self.refused.get(reason, 0) + 1
            self._count(self._refused_metric, reason)
            self._report("refused", host, reason)
            return None
        self.total += 1
        self.by_key[key] = held + 1
        return Conn(self, host, key)

    def _is_exempt(self, host: str) -> bool:
        """A trusted proxy (``trusted_proxies``): it carries many clients' connections."""
        if self._exempt_all:
            return True
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in net for net in self._exempt_nets)

    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread

    def _expire(self, conn: Conn) -> None:
        """Queue ``conn``'s hang-up. Connections admitted together (an attack opens
        thousands at once) reach their deadline together, and the event loop runs every
        timer that is due in one pass before it looks at the sockets again: aborting
        two thousand transports in that pass held ``/healthz`` for a quarter of a
        second. So hang-ups go :data:`EXPIRE_PER_TURN` at a time, one batch per turn
        of the loop, with I/O polled between batches."""
        self._expiring.append(conn)
        if not self._draining:
            self._draining = True
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        queue = self._expiring
        for _ in range(min(EXPIRE_PER_TURN, len(queue))):
            conn = queue.popleft()
            try:
                conn._end()
            except Exception:
                log.exception("could not end a connection past its deadline")
        if queue:
            self.loop.call_soon(self._drain)
        else:
            self._draining = False

    def _release(self, key: str) -> None:
        self.total -= 1
        left = self.by_key.get(key, 1) - 1
        if left > 0:
            self.by_key[key] = left
        else:
            self.by_key.pop(key, None)

    def timed_out(self, conn: Conn | None, phase: str, address: str = "",
                  report: bool = True) -> None:
        """A deadline ended a connection: count it and (unless its owner reports it
        itself) report it."""
        self.timeouts[phase] = self.timeouts.get(phase, 0) + 1
        self._count(self._timeout_metric, phase)
        if report:
            self._report("timeout", conn.address if conn is not None else address, phase)

    def _count(self, metric: Any, label: str) -> None:
        if metric is None:
            return
        child = self._children.get((metric, label))  # by identity: one metric, its label
        if child is None:
            child = self._children[(metric, label)] = metric.labels(label)
        child.inc()

    def _report(self, kind: str, address: str, reason: str) -> None:
        if self.report is None:
            return
        try:
            self.report(kind, address, reason)
        except Exception:
            log.exception("could not report a connection %s", kind)


def current(ws: Any = None) -> Conn | None:
    """The connection of ``ws`` (a :class:`~backline.relay.net.control_socket.LeanSocket`,
    whose transport knows it), else the one whose bytes started the running task; None
    outside a bounded connection."""
    conn: Conn | None = None
    transport = getattr(ws, "transport", None)
    if transport is not None:
        conn = transport.get_extra_info(EXTRA)
    return conn if conn is not None else CURRENT.get()


def end_within(conn: Conn | None, seconds: float = HANG_UP_GRACE_S,
               on_abort: Callable[[], None] | None = None) -> None:
    """The relay hung ``conn`` up (its last frames and close frame are queued): abort
    it if it takes nothing for ``seconds`` (its sender calls this again after each
    frame the socket took, so a slow console that reads is given its time, up to
    :data:`HANG_UP_MAX_S` after the first call). A peer
    that does not read would otherwise hold the socket, and the task waiting in its
    send, for as long as TCP lets it. ``on_abort`` audits the abort (it knows whose
    socket it was); without it, ``connection.timeout`` reason :data:`HUNG_UP`. From
    the loop's thread."""
    if conn is not None and conn.gate.in_loop_thread():
        if on_abort is not None:
            conn.on_hung_up = on_abort
        now = conn.gate.loop.time()
        if conn.hung_at is None:
            conn.hung_at = now
        # A console that takes a frame now and then is given its time, up to a cap: a
        # trickle must not hold a room's end for hours.
        conn.deadline_at(min(now + seconds, conn.hung_at + HANG_UP_MAX_S), HUNG_UP)


def authenticated(ws: Any = None) -> None:
    """Mark the current connection authenticated (see the module's docstring for the
    marking points). ``ws``: a :class:`~backline.relay.net.control_socket.LeanSocket`,
    whose transport knows its connection; otherwise the connection is the one whose
    bytes started the running task. Nothing happens outside a bounded connection."""
    conn = current(ws)
    if conn is None:
        return
    if conn.gate.in_loop_thread():
        conn.authenticated()
    else:  # a request handler run in a worker thread
        conn.gate.loop.call_soon_threadsafe(conn.authenticated)


def flood_reporter(record_flood: Callable[..., Any]) -> Reporter:
    """A :class:`Reporter` that audits as floods (``Relay.record_flood``, or a
    :class:`~backline.relay.audit_floods.FloodAggregator`'s ``record``): actions
    ``connection.refused`` and ``connection.timeout``, aggregated per address."""

    def report(kind: str, address: str, reason: str) -> None:
        # One source per IPv6 /64, as the caps count: not a flood of "first five"s.
        action = "connection.refused" if kind == "refused" else "connection.timeout"
        record_flood(address_key(address), f"anonymous@{address}", action, "",
                     reason=reason, address=address)

    return report
