"""Support sessions on the relay: open, dial, SSH over the tunnel, channels, close.

A session is a row in ``support_sessions`` (what the console lists and auditors
read) and, while it is open, a :class:`LiveSession` on the node that holds its SSH
connection. The life of a managed session:

1. a technician opens it (API): the relay writes the row, makes a one-time tunnel
   token and sends ``dial`` on the agent's control socket;
2. the agent opens ``/agent/tunnel/{id}`` and sends the token; the relay runs an SSH
   *client* over that WebSocket, checking the agent's host key against the key it
   enrolled with and presenting a fresh certificate from the relay CA (key id = the
   technician, principal = the agent, all extensions off but what the session needs);
3. SSH ready: the technician runs capabilities, one SSH channel each (run by
   :mod:`backline.relay.capabilities.runner`);
4. it ends when the technician closes it, the customer ends it, it idles out or
   reaches its maximum length, the tunnel is lost, or the relay stops.

An attended session starts from a code instead (``create_code``); the customer's
``backline-agent join`` redeems it on ``/agent/join`` and, once they accept, the
same dial-tunnel-SSH path follows. Every step, refusal and channel is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh
import sqlalchemy as sa

from backline.common import protocol
from backline.common.capabilities import DEFAULT_GRANTS, KNOWN
from backline.common.wstunnel import ABORT_FLUSH_S, SSH_WINDOW, WebSocketTunnel
from backline.relay.db import writing
from backline.relay.schema import support_sessions
from backline.relay.sessions import states
from backline.relay.sessions.codes import SessionCodes
from backline.relay.sessions.session import (
    LiveSession,
    SessionError,
    new_session_id,
    speaker,
    token_hash,
)
from backline.relay.sessions.states import State
from backline.relay.sessions.tunnel import TunnelClient
from backline.relay.sshca import RelayCA, host_key_from_raw

if TYPE_CHECKING:
    from backline.relay.sessions.host import SessionHost

log = logging.getLogger("backline.relay.sessions")

# What a session may be allowed to do; the agent's policy decides what it does.
CAPABILITIES = KNOWN
DEFAULT_CAPABILITIES = DEFAULT_GRANTS
SSH_TIMEOUT_S = 10.0
CLOSE_SHUTDOWN = 1012


class SessionManager:
    def __init__(self, relay: SessionHost) -> None:
        self.relay = relay
        self.ca = RelayCA(relay.datadir.ca_key)
        self.codes = SessionCodes(relay, self._new_live)
        self._live: dict[str, LiveSession] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        relay.metrics.sessions.set_function(lambda: len(self._live))

    def __len__(self) -> int:
        return len(self._live)

    def get(self, session_id: str) -> LiveSession | None:
        return self._live.get(session_id)

    def live(self) -> list[LiveSession]:
        return list(self._live.values())

    # --- the database ------------------------------------------------------------------

    def _update(self, session_id: str, **values: Any) -> None:
        with writing(self.relay.engine) as conn:
            conn.execute(support_sessions.update()
                         .where(support_sessions.c.id == session_id).values(**values))

    def row(self, session_id: str) -> dict[str, Any] | None:
        with self.relay.engine.connect() as conn:
            r = conn.execute(sa.select(support_sessions).where(
                support_sessions.c.id == session_id[:64])).mappings().first()
        return self.public(r) if r else None

    def rows(self, *, state: str | None = None, agent_id: str | None = None,
             limit: int = 100, group_ids: set[int] | None = None,
             technician: str = "") -> list[dict[str, Any]]:
        """Newest first. With ``group_ids`` (a technician's grants), only sessions on
        those groups' agents or opened by ``technician``."""
        q = sa.select(support_sessions).order_by(support_sessions.c.created_at.desc()).limit(limit)
        if group_ids is not None:
            q = q.where(sa.or_(support_sessions.c.group_id.in_(group_ids or {-1}),
                               support_sessions.c.technician == technician))
        if agent_id:
            q = q.where(support_sessions.c.agent_id == agent_id)
        if state == "open":
            q = q.where(support_sessions.c.state.in_(states.OPEN))
        elif state:
            q = q.where(support_sessions.c.state == state)
        with self.relay.engine.connect() as conn:
            return [self.public(r) for r in conn.execute(q).mappings()]

    def public(self, r: Any) -> dict[str, Any]:
        state = r["state"]
        if state == State.WAITING and (r["code_expires_at"] or 0) <= time.time():
            state = "expired"
        live = self._live.get(r["id"])
        setup_ms = (round((r["ready_at"] - r["opened_at"]) * 1000, 1)
                    if r["ready_at"] and r["opened_at"] else None)
        return {
            "id": r["id"], "mode": r["mode"], "agent_id": r["agent_id"],
            "group_id": r["group_id"], "technician": r["technician"],
            "reason": r["reason"], "ticket": r["ticket"],
            "capabilities": [c for c in r["capabilities"].split(",") if c],
            "state": state, "created_at": r["created_at"], "opened_at": r["opened_at"],
            "ready_at": r["ready_at"], "closed_at": r["closed_at"],
            "close_reason": r["close_reason"], "setup_ms": setup_ms,
            "code_expires_at": r["code_expires_at"] if r["mode"] == "attended" else None,
            "remote_hostname": r["remote_hostname"], "remote_address": r["remote_address"],
            "channels": live.channels if live else None,
            # The session's outcome (migration 0010; relay/api/session_outcome.py).
            "outcome": r.get("outcome"), "outcome_note": r.get("outcome_note") or "",
            "outcome_by": r.get("outcome_by"), "outcome_at": r.get("outcome_at"),
        }

    def _close_stale(self) -> None:
        """Sessions this node held when it stopped without closing them (a crash).

        Only the serving process may do this (from :meth:`reaper`): command-line tools
        open the same relay state while the server runs."""
        now = time.time()
        node = self.relay.origin
        with writing(self.relay.engine) as conn:
            stale = [r.id for r in conn.execute(sa.select(support_sessions.c.id).where(
                support_sessions.c.node == node, support_sessions.c.state.in_(states.OPEN)))]
            if stale:
                conn.execute(support_sessions.update()
                             .where(support_sessions.c.id.in_(stale))
                             .values(state=State.CLOSED,  # from any of states.OPEN
                                     closed_at=now, close_reason="relay_restart"))
        for session_id in stale:
            self.relay.record("system", "session.end", f"session:{session_id}",
                              reason="relay_restart")

    # --- events --------------------------------------------------------------------

    def _event(self, kind: str, session: LiveSession, **details: Any) -> None:
        row = self.row(session.id)
        self.announce(kind, row, session.group_id, session.technician)
        if row is not None:
            with contextlib.suppress(Exception):
                self.relay.webhooks.submit(f"session.{kind}", {"session": row, **details})

    def announce(self, kind: str, row: dict[str, Any] | None, group_id: int | None = None,
                 technician: str | None = None) -> None:
        """A change of a session (``row``, its state now) to every console that may see
        it; also a change of one that is over (its outcome). Consoles replace their copy
        with each pushed row, in the order the bus sends them, so a change not pushed
        would be undone by the "end" event still on its way (seen under load: the
        outcome vanished from the page right after it was saved)."""
        self.relay.bus.publish({
            "type": "session", "event": kind,
            "group_id": group_id if row is None else row["group_id"],
            "technician": technician if row is None else row["technician"], "session": row})

    def _spawn(self, work: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- opening -------------------------------------------------------------------

    def _new_live(self, *, mode: str, principal: str, group_id: int | None, technician: str,
                  opened_by: str, reason: str, ticket: str, capabilities: tuple[str, ...],
                  host_key_raw: bytes, session_id: str | None = None,
                  state: State = State.DIALING) -> LiveSession:
        now = time.time()
        session = LiveSession(
            id=session_id or new_session_id(), mode=mode, principal=principal,
            group_id=group_id, technician=technician, opened_by=opened_by, reason=reason,
            ticket=ticket, capabilities=capabilities, host_key=host_key_from_raw(host_key_raw),
            valid_until=now + self.relay.config.session_max_hours * 3600, opened_at=now,
            state=state)
        self._live[session.id] = session
        return session

    def _dial_message(self, session: LiveSession) -> str:
        token = secrets.token_urlsafe(32)
        session.token_hash = token_hash(token)
        url = self.relay.origin.replace("https://", "wss://", 1) + f"/agent/tunnel/{session.id}"
        return protocol.encode("dial", session_id=session.id, url=url, token=token,
                               technician=session.technician, reason=session.reason,
                               ticket=session.ticket, capabilities=list(session.capabilities))

    async def open_managed(self, agent: dict[str, Any], host_key_raw: bytes, technician: str,
                           actor: str, reason: str, ticket: str,
                           capabilities: tuple[str, ...], address: str) -> dict[str, Any]:
        """Dial the agent and wait (bounded) until SSH is ready; the session's row."""
        conn = self.relay.presence.get(agent["id"])
        if conn is None:
            raise SessionError(409, "offline", "the agent is offline")
        session = self._new_live(mode="managed", principal=agent["id"],
                                 group_id=agent["group_id"], technician=technician,
                                 opened_by=actor, reason=reason, ticket=ticket,
                                 capabilities=capabilities, host_key_raw=host_key_raw)
        with writing(self.relay.engine) as db:
            db.execute(support_sessions.insert().values(
                id=session.id, mode="managed", agent_id=agent["id"], group_id=agent["group_id"],
                technician=technician, opened_by=actor, reason=reason, ticket=ticket,
                capabilities=",".join(capabilities), state=session.state, node=self.relay.origin,
                created_at=session.opened_at, opened_at=session.opened_at))
        self.relay.record(actor, "session.open", f"session:{session.id}", agent=agent["id"],
                          mode="managed", reason=reason, ticket=ticket,
                          capabilities=list(capabilities), address=address)
        session.notify = conn.send
        try:
            await conn.send(self._dial_message(session))
        except Exception as exc:
            await self.close(session, "dial_failed", f"control socket: {type(exc).__name__}")
        return await self.wait_ready(session)

    async def wait_ready(self, session: LiveSession) -> dict[str, Any]:
        timeout = self.relay.config.session_open_timeout_s
        try:
            await asyncio.wait_for(asyncio.shield(session.ready), timeout)
        except TimeoutError:
            await self.close(session, "dial_timeout", f"no SSH session within {timeout:g} s")
            raise SessionError(504, "timeout", f"the agent did not open the session within "
                                               f"{timeout:g} s") from None
        except SessionError:
            raise
        row = self.row(session.id)
        assert row is not None
        return row

    def from_agent(self, principal: str, msg: dict[str, Any]) -> None:
        """``dial_failed`` or ``session_ended`` from the agent's control (or join) socket;
        an agent speaks only for its own sessions."""
        session = self._live.get(msg["session_id"])
        if session is not None and session.principal != principal:
            # An agent naming another's session: hostile, and repeatable at will.
            self.relay.metrics.errors.labels("session_not_its_own").inc()
            self.relay.record_flood(principal, speaker(principal), "session.agent.refused",
                                    f"session:{session.id}", reason="not_its_session",
                                    message=msg["type"])
            return
        if session is None or session.closing:
            return  # already over (a message crossing the close): nothing to do
        if msg["type"] == "dial_failed" and session.state == State.DIALING:
            self._spawn(self.close(session, "dial_failed", msg["reason"][:300],
                                   f"agent:{principal}"))
        elif msg["type"] == "session_ended":
            who = (f"agent:{principal}" if session.mode == "managed"
                   else f"customer@{session.remote_address}")
            self._spawn(self.close(session, msg["reason"], "the agent's side ended it", who))

    # --- the tunnel ----------------------------------------------------------------

    def claim_tunnel(self, session_id: str, token: str) -> LiveSession:
        """The session a tunnel's first frame names, if its one-time token is right."""
        session = self._live.get(session_id)
        if (session is None or session.state != State.DIALING or not session.token_hash
                or not hmac.compare_digest(token_hash(token), session.token_hash)):
            raise SessionError(401, "bad_token", "no session is waiting for this tunnel")
        session.token_hash = ""  # one use
        return session

    async def run_tunnel(self, session: LiveSession, ws: Any, address: str) -> None:
        """Run the SSH client over a claimed tunnel until the session ends."""
        tunnel = WebSocketTunnel(ws)
        session.tunnel = tunnel
        creds = self.ca.issue(session.technician, session.principal, session.opened_at,
                              session.valid_until, pty="shell" in session.capabilities)
        session.cert_serial = creds.serial
        try:
            ssh = await asyncio.wait_for(asyncssh.connect(
                session.principal, 22, tunnel=tunnel, client_factory=lambda: TunnelClient(session),
                username=session.principal, known_hosts=([session.host_key], [], []),
                client_keys=[(creds.key, creds.certificate)], agent_path=None, config=None,
                gss_host=None, preferred_auth="publickey", x509_trusted_certs=None,
                keepalive_interval=30, keepalive_count_max=3, encoding=None, window=SSH_WINDOW,
                login_timeout=SSH_TIMEOUT_S, connect_timeout=SSH_TIMEOUT_S), SSH_TIMEOUT_S)
        except (asyncssh.Error, OSError, TimeoutError, ValueError) as exc:
            tunnel.close()
            detail = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("session %s: SSH over the tunnel failed: %s", session.id, detail)
            await self.close(session, "ssh_failed", detail, f"agent:{session.principal}")
            return
        if session.closing:  # closed while SSH was starting
            ssh.close()
            return
        session.ssh = ssh
        session.state = State.READY
        session.ready_at = time.time()
        session.touch()
        self._update(session.id, state=session.state, ready_at=session.ready_at)
        setup_ms = round((session.ready_at - session.opened_at) * 1000, 1)
        self.relay.record(f"user:{session.technician}", "session.start", f"session:{session.id}",
                          agent=session.principal, mode=session.mode, setup_ms=setup_ms,
                          cert_serial=str(creds.serial), cert_valid_before=creds.valid_before,
                          tunnel_address=address)
        self._event("start", session)
        if not session.ready.done():
            session.ready.set_result(None)
        await ssh.wait_closed()
        with contextlib.suppress(TimeoutError):  # let our goodbye reach the agent
            await asyncio.wait_for(tunnel.wait_closed(), ABORT_FLUSH_S + 1)
        if not session.closing:
            code, detail = self._why_lost(session, tunnel)
            actor = f"agent:{session.principal}" if code == "customer" else "system"
            await self.close(session, code, detail, actor)

    def _why_lost(self, session: LiveSession, tunnel: WebSocketTunnel) -> tuple[str, str]:
        """Why SSH ended when nobody on this side ended it. (An agent ending a session
        deliberately says so first with ``session_ended``; asyncssh reports a polite
        SSH disconnect as a clean close and drops its reason text.)"""
        exc = session.lost
        if tunnel.close_code == CLOSE_SHUTDOWN or self.relay.stopping:
            return "relay_shutdown", "the relay is shutting down"
        if exc is None:
            return "agent_closed", "the agent closed the connection"
        if isinstance(exc, asyncssh.DisconnectError):
            return "agent_closed", exc.reason[:200]
        return "tunnel_lost", type(exc).__name__

    # --- closing -------------------------------------------------------------------

    async def close(self, session: LiveSession, reason: str, detail: str = "",
                    actor: str = "system") -> None:
        """End a session (idempotent): tell the agent, close SSH, record, audit."""
        if session.closing:
            await session.closed.wait()
            return
        session.closing = True
        was_ready = session.state == State.READY
        session.state = State.CLOSED
        if not session.ready.done():
            session.ready.set_exception(SessionError(502, reason, detail or reason))
        if session.notify is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.notify(protocol.encode(
                    "session_end", session_id=session.id, reason=reason)), 2)
        if session.ssh is not None:
            session.ssh.disconnect(asyncssh.DISC_BY_APPLICATION, f"session closed: {reason}")
            with contextlib.suppress(Exception):
                await asyncio.wait_for(session.ssh.wait_closed(), 5)
        elif session.tunnel is not None:
            session.tunnel.close()
        self._live.pop(session.id, None)
        now = time.time()
        self._update(session.id, state=session.state, closed_at=now, close_reason=reason[:256])
        details: dict[str, Any] = {"reason": reason, "agent": session.principal,
                                   "mode": session.mode, "channels": session.channels,
                                   "duration_s": round(now - session.opened_at, 3)}
        if detail and detail != reason:
            details["detail"] = detail[:300]
        action = "session.end" if was_ready else "session.open.failed"
        self.relay.record(actor, action, f"session:{session.id}", **details)
        self._event("end", session, reason=reason)
        session.closed.set()

    async def close_matching(self, reason: str, actor: str, *, agent_id: str | None = None,
                             technician: str | None = None, group_id: int | None = None
                             ) -> int:
        """End the live sessions that match every filter given (an agent revoked, a
        technician disabled or no longer granted the group): access withdrawn is
        withdrawn now, not at the next idle-out."""
        victims = [s for s in self._live.values()
                   if (agent_id is None or s.principal == agent_id)
                   and (technician is None or s.technician == technician)
                   and (group_id is None or s.group_id == group_id)]
        await asyncio.gather(*(self.close(s, reason, actor=actor) for s in victims),
                             return_exceptions=True)
        return len(victims)

    async def close_all(self, reason: str) -> None:
        sessions = list(self._live.values())
        if sessions:
            await asyncio.gather(*(self.close(s, reason) for s in sessions),
                                 return_exceptions=True)

    async def reaper(self) -> None:
        """At server start, close what a crash left open; then idle-out and
        maximum-length checks, on a timer."""
        self._close_stale()
        cfg = self.relay.config
        idle_s = cfg.session_idle_minutes * 60
        every = max(0.25, min(30.0, idle_s / 4))
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for session in list(self._live.values()):
                if session.closing:
                    continue
                if time.time() >= session.valid_until:
                    self._spawn(self.close(session, "max_duration"))
                elif (session.state == State.READY and session.active_channels == 0
                      and now - session.last_activity >= idle_s):
                    self._spawn(self.close(session, "idle",
                                           f"idle for {cfg.session_idle_minutes:g} min"))

    # --- channels ----------------------------------------------------------------
    # Opening, running, bounding, auditing and recording channels is the one channel
    # runner's job (backline.relay.capabilities.runner); the manager holds the SSH
    # connection they run on.

    def accepted(self, session: LiveSession, notify: Callable[[str], Awaitable[Any]]) -> str:
        """The customer said yes: the ``dial`` to send on the join socket."""
        session.notify = notify
        session.state = State.DIALING
        self._update(session.id, state=session.state)
        return self._dial_message(session)


