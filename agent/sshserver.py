"""The agent's SSH server, run over the session tunnel (``asyncssh.connect_reverse``).

It accepts exactly one kind of client: one holding a user certificate signed by the
relay CA this agent pinned, naming this agent as a principal, within its validity.
No passwords, no keyboard-interactive, no plain keys, no other CA; no port, agent,
X11, UNIX-socket or TUN/TAP forwarding; no shell or exec. What remains is
subsystems, one per capability, each screened by the local policy before any work:
``deny`` (and anything unknown or outside the session's scope) refuses the channel
request itself, ``ask`` asks the customer first, and only then does a handler run.
A pty is accepted (bounded type and size) only for a terminal capability (``shell``),
which needs one; its channel then carries bytes, every other channel UTF-8 text.

Every refusal and every channel is written to the agent's own activity log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from backline.agent.activity import CUSTOMER_ENDED
from backline.agent.capabilities import Registry, SessionContext
from backline.agent.consent import Asker, Held, question
from backline.common.capabilities import ChannelExit
from backline.common.wstunnel import ABORT_FLUSH_S, SSH_WINDOW, WebSocketTunnel

log = logging.getLogger("backline.agent.ssh")
logging.getLogger("asyncssh").setLevel(logging.WARNING)

__all__ = ["CUSTOMER_ENDED", "EXIT_REFUSED", "ServerSettings", "serve"]

EXIT_REFUSED = ChannelExit.REFUSED
LOGIN_TIMEOUT_S = 15
END_GRACE_S = 2.0
#: What a pty request may ask for (the relay's contract: 1..500 x 1..200).
TERM_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
MAX_COLS, MAX_ROWS = 500, 200


@dataclass
class ServerSettings:
    session: SessionContext
    registry: Registry
    host_key: asyncssh.SSHKey
    ca_public_key: str  # OpenSSH "ssh-ed25519 AAAA..." line
    asker: Asker
    login_timeout_s: float = LOGIN_TIMEOUT_S
    #: Capabilities whose channels are open now, and how many of each
    #: (``backline-agent sessions`` shows them).
    in_use: Counter[str] = field(default_factory=Counter)


def authorized_keys(ca_public_key: str, principal: str) -> asyncssh.SSHAuthorizedKeys:
    """Trust the pinned CA, and only for certificates naming ``principal``.

    ``principals=`` makes asyncssh require that one of the certificate's principals
    matches: a certificate with no principals (valid for anyone, in OpenSSH's eyes)
    never does."""
    line = ca_public_key.strip().splitlines()[0]
    if any(ch in principal for ch in '",*?! \n'):
        raise ValueError("malformed principal")
    return asyncssh.import_authorized_keys(f'cert-authority,principals="{principal}" {line}\n')


class AgentSSHServer(asyncssh.SSHServer):
    def __init__(self, settings: ServerSettings) -> None:
        self.s = settings
        self.ctx = settings.session
        self.conn: asyncssh.SSHServerConnection | None = None
        self.authenticated = False
        self.auth_attempted = False
        self.lost: Exception | None = None
        self.channels = 0

    # --- authentication ------------------------------------------------------------

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc
        if self.auth_attempted and not self.authenticated:
            self._refuse("auth", "no_valid_certificate",
                         "the relay's client presented no acceptable certificate")

    def begin_auth(self, username: str) -> bool:
        self.auth_attempted = True
        if username != self.ctx.principal:
            self._refuse("auth", "wrong_user", f"asked to log in as {username[:64]!r}")
            if self.conn is not None:
                self.conn.disconnect(asyncssh.DISC_ILLEGAL_USER_NAME, "wrong user name")
        return True  # authentication is always required

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        self._refuse("auth", "plain_key", "a plain key (not a relay certificate) was offered")
        return False

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        pinned = asyncssh.import_public_key(self.s.ca_public_key.strip().splitlines()[0])
        if key.public_data == pinned.public_data:
            self._refuse("auth", "wrong_principal",
                         "a relay certificate that does not name this agent")
        else:
            self._refuse("auth", "untrusted_ca", "a certificate from a CA this agent does "
                                                 "not trust")
        return False

    def auth_completed(self) -> None:
        self.authenticated = True
        self.ctx.log.record("session.start", session_id=self.ctx.session_id,
                            technician=self.ctx.technician, mode=self.ctx.mode,
                            reason=self.ctx.reason or None, ticket=self.ctx.ticket or None,
                            capabilities=list(self.ctx.capabilities))

    # --- what a client may ask for -------------------------------------------------

    def session_requested(self) -> asyncssh.SSHServerProcess[str]:
        return CapabilityProcess(self)

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str,
                             orig_port: int) -> bool:
        self._refuse("forwarding", "not_offered", "direct TCP/IP forwarding")
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self._refuse("forwarding", "not_offered", "remote port forwarding")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self._refuse("forwarding", "not_offered", "UNIX socket forwarding")
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self._refuse("forwarding", "not_offered", "UNIX socket listening")
        return False

    def tun_requested(self, unit: int | None) -> bool:
        self._refuse("forwarding", "not_offered", "TUN forwarding")
        return False

    def tap_requested(self, unit: int | None) -> bool:
        self._refuse("forwarding", "not_offered", "TAP forwarding")
        return False

    def screen(self, capability: str) -> bool:
        """The synchronous part of the policy check, at the channel request."""
        if self.s.registry.get(capability) is None:
            self._refuse(capability, "unknown", "no such capability on this agent")
            return False
        if capability not in self.ctx.capabilities:
            self._refuse(capability, "out_of_scope", "not one of this session's capabilities")
            return False
        if self.ctx.policy.decision(capability) == "deny":
            self._refuse(capability, "policy_deny", f"denied by {self.ctx.policy.source}",
                         decision="deny")
            return False
        return True

    async def run_channel(self, process: asyncssh.SSHServerProcess[str]) -> None:
        name = process.subsystem or ""
        cap = self.s.registry.get(name)
        if cap is None or not self.screen(name):  # screened already; belt and braces
            process.exit(EXIT_REFUSED)
            return
        decision = self.ctx.policy.decision(name)
        how = "policy_allow"
        held: Held | None = None
        if decision == "ask" and cap.asks_itself:
            # The room checks first, then asks with what it checked (docs/capabilities.md).
            how = "asked_by_room"
        elif decision == "ask":
            words = question(self.ctx.technician, name, self.ctx.reason, self.ctx.ticket,
                             self.ctx.policy.shell_account if cap.terminal else "")
            hold = getattr(self.s.asker, "ask_and_hold", None)
            if cap.terminal and hold is not None:
                answer = await hold(words, self.ctx.policy.ask_timeout_s, self.ctx, name)
            else:
                answer = await self.s.asker.ask(words, self.ctx.policy.ask_timeout_s)
            if not answer.allowed:
                self._refuse(name, answer.how, "the customer was asked" if answer.how !=
                             "no_way_to_ask" else "ask, with no way to ask the customer",
                             decision="ask")
                line = json.dumps({"refused": answer.how, "capability": name}) + "\n"
                process.stderr.write(line.encode() if cap.terminal else line)
                process.exit(EXIT_REFUSED)
                return
            how = answer.how
            held = answer.held
        if cap.asks_itself:
            self.ctx.extra.setdefault("asker", self.s.asker)
        self.channels += 1
        self.s.in_use[name] += 1
        self.ctx.log.record("channel.start", session_id=self.ctx.session_id,
                            technician=self.ctx.technician, capability=name,
                            decision=decision, how=how)
        started = time.perf_counter()
        status = 1
        try:
            result = await self._run_handler(cap.load(), process, held, name)
            status = 0 if result is None else int(result)
        except (asyncssh.Error, ConnectionError, BrokenPipeError) as exc:
            log.info("channel %s ended early: %s", name, exc)
        except Exception:
            log.exception("capability %s failed", name)
        finally:
            self.s.in_use[name] -= 1
            if self.s.in_use[name] <= 0:
                del self.s.in_use[name]
            if held is not None:
                await held.close()
            self.ctx.log.record("channel.end", session_id=self.ctx.session_id,
                                technician=self.ctx.technician, capability=name,
                                exit_status=status,
                                duration_ms=round((time.perf_counter() - started) * 1000, 1))
        process.exit(status)

    async def _run_handler(self, handler: Any, process: asyncssh.SSHServerProcess[Any],
                           held: Held | None, name: str) -> int | None:
        """The handler; while the customer's indicator (``held``) is open, its closing
        ends the channel at once."""
        if held is None:
            return await handler(process, self.ctx)  # type: ignore[no-any-return]
        work = asyncio.ensure_future(handler(process, self.ctx))
        ended = asyncio.ensure_future(held.ended.wait())
        try:
            await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
        if not work.done():
            self._refuse(name, "customer_ended", "the customer closed the indicator",
                         decision="ask")
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            line = json.dumps({"refused": "customer_ended", "capability": name}) + "\n"
            with contextlib.suppress(OSError, asyncssh.Error):
                process.stderr.write(line.encode())
            return int(EXIT_REFUSED)
        return work.result()  # type: ignore[no-any-return]

    def _refuse(self, what: str, reason: str, detail: str, decision: str | None = None) -> None:
        self.ctx.log.record("channel.refused" if what not in ("auth", "forwarding", "pty")
                            else f"{what}.refused", session_id=self.ctx.session_id,
                            technician=self.ctx.technician, capability=what, decision=decision,
                            reason=reason, detail=detail)


class CapabilityProcess(asyncssh.SSHServerProcess[str]):
    """One session channel: only subsystems, each screened before it is accepted."""

    def __init__(self, server: AgentSSHServer) -> None:
        super().__init__(self._run, None, 0, False)
        self._server = server
        self._pty = False

    def pty_requested(self, term_type: str, term_size: tuple[int, int, int, int],
                      term_modes: Any) -> bool:
        """Accepted when its type and size are sane; only a terminal capability may then
        follow (:meth:`subsystem_requested`)."""
        cols, rows = term_size[0], term_size[1]
        if not TERM_TYPE_RE.fullmatch(term_type) or not (
                1 <= cols <= MAX_COLS and 1 <= rows <= MAX_ROWS):
            self._server._refuse("pty", "bad_pty", f"a pty of type {term_type[:64]!r}, "
                                 f"{cols}x{rows} (allowed: 1..{MAX_COLS} x 1..{MAX_ROWS})")
            return False
        self._pty = True
        return True

    def shell_requested(self) -> bool:
        self._server._refuse("shell", "not_offered", "an interactive shell")
        return False

    def exec_requested(self, command: str) -> bool:
        self._server._refuse("exec", "not_offered", "running a command")
        return False

    def subsystem_requested(self, subsystem: str) -> bool:
        if not self._server.screen(subsystem):
            return False
        cap = self._server.s.registry.get(subsystem)
        terminal = cap is not None and cap.terminal
        if terminal and not self._pty:
            self._server._refuse(subsystem, "needs_pty", "a terminal without a pty request")
            return False
        if self._pty and not terminal:
            self._server._refuse(subsystem, "pty_not_offered", "a pty for a capability that "
                                 "is not a terminal")
            return False
        if terminal:  # a terminal's bytes are not text (as asyncssh does for SFTP)
            self._chan.set_encoding(None)
            self._encoding = None
        return True

    async def _run(self, process: asyncssh.SSHServerProcess[str]) -> None:
        await self._server.run_channel(process)


def server_options(settings: ServerSettings) -> dict[str, Any]:
    """Everything asyncssh would otherwise default to something permissive, set."""
    return {
        "server_host_keys": [settings.host_key],
        "authorized_client_keys": authorized_keys(settings.ca_public_key,
                                                  settings.session.principal),
        "password_auth": False, "kbdint_auth": False, "host_based_auth": False,
        "public_key_auth": True, "gss_host": None,
        "agent_forwarding": False, "x11_forwarding": False, "allow_pty": True,
        "allow_scp": False, "sftp_factory": None, "line_editor": False,
        "config": None, "login_timeout": settings.login_timeout_s,
        "keepalive_interval": 30, "keepalive_count_max": 3,
        "encoding": "utf-8", "window": SSH_WINDOW,
    }


async def serve(tunnel: WebSocketTunnel, settings: ServerSettings,
                stop: asyncio.Event | None = None,
                stop_reason: Callable[[], str] = lambda: CUSTOMER_ENDED,
                on_stop: Callable[[], Awaitable[Any]] | None = None) -> str:
    """Run the SSH server over ``tunnel`` until the session ends; return why it ended.

    Setting ``stop`` ends it from this side. ``on_stop`` first tells the relay why
    (``session_ended``), so the relay closes the session with the right reason; if the
    relay has not closed it within :data:`END_GRACE_S`, the agent disconnects itself.
    """
    server = AgentSSHServer(settings)
    conn = await asyncssh.connect_reverse(tunnel=tunnel, server_factory=lambda: server,
                                          **server_options(settings))
    closed = asyncio.ensure_future(conn.wait_closed())
    waiters: set[asyncio.Future[Any]] = {closed}
    stopping = asyncio.ensure_future(stop.wait()) if stop is not None else None
    if stopping is not None:
        waiters.add(stopping)
    why = ""
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not closed.done():
            why = stop_reason()
            if on_stop is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(on_stop(), 2)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(closed), END_GRACE_S)
            if not closed.done():
                conn.disconnect(asyncssh.DISC_BY_APPLICATION, why)
                await asyncio.wait_for(asyncio.shield(closed), 5)
    finally:
        if stopping is not None:
            stopping.cancel()
        # asyncssh counts the connection closed once it has *written* its goodbye; let
        # the tunnel deliver it before the WebSocket goes.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(tunnel.wait_closed(), ABORT_FLUSH_S + 1)
    return why or describe_end(server.lost)


def describe_end(exc: BaseException | None) -> str:
    if isinstance(exc, asyncssh.DisconnectError) and exc.reason:
        return exc.reason[:200]
    if exc is None:  # a polite SSH disconnect from the client: the relay closed it
        return "closed by the relay"
    return f"connection lost ({type(exc).__name__})"
