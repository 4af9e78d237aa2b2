"""Support sessions of an enrolled agent: ``dial`` orders from the control socket.

For each ``dial`` the agent opens a second WebSocket to the relay's tunnel URL (TLS
pinned to the certificate it pinned at enrollment), sends the one-time token as the
first frame, and runs its SSH server over the rest (:mod:`backline.agent.sshserver`).
Sessions outlive control-socket reconnects; they end when the relay closes them,
when the customer ends them (``backline-agent end ID`` or ``end-sessions``, through
the local control socket, :mod:`backline.agent.localcontrol`) or when the agent stops.

The SSH machinery (asyncssh, the SSH server) is imported at the first ``dial``: an
agent nobody is helping holds none of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from websockets.exceptions import WebSocketException

from backline.agent.activity import ACTIVITY_NAME, CUSTOMER_ENDED, ActivityLog
from backline.agent.capabilities import Registry, SessionContext, builtin_registry
from backline.agent.consent import Asker, default_asker
from backline.agent.link import RelayUnreachable, open_pinned
from backline.agent.policy import PolicyError, load_policy
from backline.agent.state import Enrollment, StateDir
from backline.common import protocol
from backline.common.tlspin import PinMismatch, Trust

if TYPE_CHECKING:
    from backline.agent.sshserver import ServerSettings

log = logging.getLogger("backline.agent.sessions")

MAX_SESSIONS = 8
Send = Callable[[str], Awaitable[Any]]


class DialRefused(Exception):
    """A dial order this agent will not carry out; the message says why."""


def check_tunnel_url(url: str, session_id: str) -> str:
    """Only ``wss://.../agent/tunnel/<this session>``: the relay names the node, the
    pinned certificate decides whether it is ours."""
    parts = urlsplit(url)
    if parts.scheme != "wss" or not parts.netloc or parts.query or parts.fragment:
        raise DialRefused("the tunnel URL is not a plain wss:// URL")
    if parts.path != f"/agent/tunnel/{session_id}":
        raise DialRefused("the tunnel URL does not name this session")
    return url


async def open_tunnel_and_serve(url: str, trust: Trust | str, token: str,
                                settings: ServerSettings, stop: asyncio.Event | None,
                                stop_reason: Callable[[], str] = lambda: CUSTOMER_ENDED,
                                on_stop: Callable[[], Awaitable[Any]] | None = None,
                                timeout: float = 10.0) -> str:
    """Open the tunnel WebSocket, authenticate it with the token, serve SSH; return why
    the session ended."""
    from backline.agent.sshserver import serve
    from backline.common.wstunnel import WebSocketTunnel

    async with open_pinned(url, trust, timeout) as ws:
        await ws.send(protocol.encode("tunnel", token=token))
        return await serve(WebSocketTunnel(ws), settings, stop, stop_reason, on_stop)


@dataclass
class Live:
    """What the customer sees of one session (``backline-agent sessions``)."""

    session_id: str
    technician: str
    since: float
    reason: str = ""
    ticket: str = ""
    #: Capabilities whose channels are open now (the SSH server keeps it current).
    in_use: Counter[str] = field(default_factory=Counter)
    #: What a capability tells the customer while it runs (``cobrowse``: what stays
    #: hidden, the control state); the room keeps it current through ``ctx.extra``.
    notes: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"id": self.session_id, "technician": self.technician,
                "since": round(self.since, 3), "reason": self.reason, "ticket": self.ticket,
                "in_use": sorted(self.in_use), **dict(self.notes)}


class SessionRunner:
    def __init__(self, state: StateDir, enrollment: Enrollment, registry: Registry | None = None,
                 asker: Asker | None = None, policy_file: Path | None = None) -> None:
        self.state = state
        self.enrollment = enrollment
        self.registry = registry or builtin_registry()
        self._asker = asker
        self.policy_file = policy_file
        self.log = ActivityLog(state.root / ACTIVITY_NAME)
        self._host_key: Any = None  # read at the first dial, with asyncssh
        self.live: dict[str, Live] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Event] = {}
        self._why: dict[str, str] = {}  # why a session is being ended from this side
        self._tell: dict[str, str] = {}  # session_ended reasons the relay must hear

    def __len__(self) -> int:
        return len(self._tasks)

    def dial(self, msg: dict[str, Any], send: Send) -> None:
        """Carry out a ``dial`` order in the background."""
        session_id = msg["session_id"]
        if session_id in self._tasks:
            return  # a repeated order for a session already running
        stop = asyncio.Event()
        self._stops[session_id] = stop
        task = asyncio.create_task(self._run(msg, send, stop), name=f"session-{session_id}")
        self._tasks[session_id] = task
        task.add_done_callback(lambda _t: self._forget(session_id))

    def _forget(self, session_id: str) -> None:
        self.live.pop(session_id, None)
        self._tasks.pop(session_id, None)
        self._stops.pop(session_id, None)
        self._why.pop(session_id, None)
        self._tell.pop(session_id, None)

    def end(self, session_id: str, reason: str) -> None:
        """The relay ended a session (it closes SSH too; this also covers a dial that
        has not reached SSH yet)."""
        stop = self._stops.get(session_id)
        if stop is not None:
            self.log.record("session.end_requested", session_id=session_id, reason=reason[:200])
            self._why.setdefault(session_id, f"ended by the relay ({reason[:100]})")
            stop.set()

    def end_all(self, reason: str = CUSTOMER_ENDED, code: str = "customer") -> None:
        """The customer (``end-sessions``) or the agent stopping ends every session."""
        for session_id in list(self._stops):
            self.end_here(session_id, reason, code)

    def end_here(self, session_id: str, reason: str = CUSTOMER_ENDED,
                 code: str = "customer") -> bool:
        """End one session from this side (``backline-agent end ID``); False if unknown."""
        stop = self._stops.get(session_id)
        if stop is None:
            return False
        self.log.record("session.end_requested", session_id=session_id, reason=reason)
        self._why.setdefault(session_id, reason)
        self._tell.setdefault(session_id, code)
        stop.set()
        return True

    def sessions(self) -> list[dict[str, Any]]:
        return [live.describe() for live in sorted(self.live.values(), key=lambda s: s.since)]

    @property
    def asker(self) -> Asker:
        if self._asker is None:
            self._asker = default_asker()
        return self._asker

    def _settings(self, ctx: SessionContext, policy_command: tuple[str, ...],
                  live: Live) -> ServerSettings:
        import asyncssh

        from backline.agent.sshserver import ServerSettings

        if self._host_key is None:
            self._host_key = asyncssh.import_private_key(self.state.key_path.read_bytes())
        asker = default_asker(policy_command) if policy_command else self.asker
        return ServerSettings(session=ctx, registry=self.registry, host_key=self._host_key,
                              ca_public_key=self.enrollment.ca_public_key, asker=asker,
                              in_use=live.in_use)

    async def close(self, reason: str = "agent stopping", timeout: float = 5.0) -> None:
        self.end_all(reason, "agent_stopping")
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()

    async def _run(self, msg: dict[str, Any], send: Send, stop: asyncio.Event) -> None:
        import asyncssh

        from backline.common.wstunnel import TunnelError

        session_id = msg["session_id"]
        technician = msg["technician"]
        try:
            if len(self._tasks) > MAX_SESSIONS:
                raise DialRefused(f"already {MAX_SESSIONS} sessions open")
            url = check_tunnel_url(msg["url"], session_id)
            try:
                policy = load_policy(self.state.root, self.policy_file)
            except PolicyError as exc:
                raise DialRefused(f"the local policy file is unusable: {exc}") from None
            ctx = SessionContext(
                session_id=session_id, principal=self.enrollment.agent_id,
                technician=technician, mode="managed", policy=policy, log=self.log,
                state_root=self.state.root, reason=msg["reason"], ticket=msg["ticket"],
                capabilities=tuple(msg["capabilities"]))
            live = Live(session_id, technician, time.time(), msg["reason"], msg["ticket"])
            self.live[session_id] = live
            ctx.extra["status_notes"] = live.notes
            settings = self._settings(ctx, policy.ask_command, live)
            self.log.record("session.dial", session_id=session_id, technician=technician,
                            reason=msg["reason"] or None, ticket=msg["ticket"] or None)
            async def tell_relay() -> None:
                code = self._tell.get(session_id)
                if code:
                    await send(protocol.encode("session_ended", session_id=session_id,
                                               reason=code))

            ended = await open_tunnel_and_serve(
                url, self.enrollment.trust, msg["token"], settings, stop,
                lambda: self._why.get(session_id, CUSTOMER_ENDED), tell_relay)
            self.log.record("session.end", session_id=session_id, technician=technician,
                            reason=self._why.get(session_id, ended))
        except asyncio.CancelledError:
            self.log.record("session.end", session_id=session_id, technician=technician,
                            reason="agent stopping")
            raise
        except (DialRefused, RelayUnreachable, PinMismatch, asyncssh.Error, OSError,
                TimeoutError, WebSocketException, TunnelError, protocol.ProtocolError) as exc:
            reason = str(exc) or type(exc).__name__
            self.log.record("session.failed", session_id=session_id, technician=technician,
                            reason=reason[:300])
            with contextlib.suppress(Exception):  # the control socket may be gone
                await send(protocol.encode("dial_failed", session_id=session_id,
                                           reason=reason[:500]))
