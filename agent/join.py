"""``backline-agent join CODE``: one attended session, nothing installed or kept.

The command the console shows carries everything needed to trust the relay without an
enrollment: its URL and the pin of its TLS key (``--relay``, ``--pin sha256//...``;
the SHA-256 of its certificate from older relays). The agent makes a throw-away SSH
host key in memory, sends the code and that key's public half over ``/agent/join``
(TLS pinned), and learns who is asking and which CA signs their certificate. The
customer sees the technician's name and reason and answers; on yes the relay sends a
``dial`` on the same socket, and the session runs exactly like a managed one (same
tunnel, same SSH server, same policy checks, ``ask`` asked here on the terminal).
Ctrl-C ends it. Nothing is written to disk: the activity log is printed, the key dies
with the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import IO, Any, TypeVar

import asyncssh
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from backline.agent.activity import ActivityLog
from backline.agent.capabilities import Registry, SessionContext, builtin_registry
from backline.agent.consent import TerminalAsker
from backline.agent.facts import gather
from backline.agent.link import open_pinned, ws_url
from backline.agent.policy import Policy
from backline.agent.sessions import DialRefused, check_tunnel_url, open_tunnel_and_serve
from backline.agent.sshserver import ServerSettings
from backline.common import keys, protocol, sessioncode
from backline.common.protocol import ProtocolError
from backline.common.tlspin import Trust

OFFER_TIMEOUT_S = 15.0
DIAL_TIMEOUT_S = 15.0
CONSENT_TIMEOUT_S = 120.0

# What the relay's refusal codes mean to the customer.
REFUSALS = {
    "bad_code": "that session code is wrong, already used or expired; ask the technician "
                "for a new one",
    "rate_limited": "too many wrong codes were tried; wait a few minutes and try again",
}


class JoinError(Exception):
    """The join did not happen; ``code`` is stable, the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class JoinResult:
    accepted: bool
    ended: str = ""


def _clean(text: str) -> str:
    """Relay-supplied text on a terminal: printable characters only."""
    return "".join(ch for ch in text if ch.isprintable())[:300]


def _echo(out: IO[str]) -> Callable[[dict[str, Any]], None]:
    def show(entry: dict[str, Any]) -> None:
        event = entry["event"]
        what = entry.get("capability") or ""
        why = entry.get("reason") or entry.get("detail") or ""
        line = f"[backline] {event}"
        if what:
            line += f" {what}"
        if why:
            line += f": {why}"
        out.write(_clean(line) + "\n")
        out.flush()

    return show


async def _recv(ws: ClientConnection, allowed: set[str], timeout: float | None
                ) -> dict[str, Any]:
    try:
        frame = await asyncio.wait_for(ws.recv(), timeout)
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if reason in REFUSALS:  # the relay closes with the refusal's code as reason
            raise JoinError(reason, REFUSALS[reason]) from None
        raise JoinError("closed", "the relay closed the connection") from None
    except TimeoutError:
        raise JoinError("timeout", "the relay did not answer in time") from None
    msg = protocol.decode(frame, frozenset(allowed | {"error"}))
    if msg["type"] == "error":
        raise JoinError(msg["code"], REFUSALS.get(msg["code"], _clean(msg["message"])))
    return msg


async def join(code_text: str, relay_url: str, pin: str | Trust, *, policy: Policy | None = None,
               asker: TerminalAsker | None = None, out: IO[str] | None = None,
               stop: asyncio.Event | None = None, registry: Registry | None = None
               ) -> JoinResult:
    out = out or sys.stdout
    try:
        code = sessioncode.parse(code_text)
    except sessioncode.BadCode as exc:
        raise JoinError("code_malformed", str(exc)) from None
    asker = asker or TerminalAsker(out=out)
    policy = policy or Policy(source="defaults (attended)")
    stop = stop or asyncio.Event()
    key = keys.generate()  # this session's SSH host key: in memory only
    host_key = asyncssh.import_private_key(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    raw = keys.public_raw(key)
    trust = pin if isinstance(pin, Trust) else Trust.of(pin)
    async with open_pinned(ws_url(relay_url, "/agent/join"), trust, OFFER_TIMEOUT_S) as ws:
        try:
            await ws.send(protocol.encode("join", code=code, public_key=protocol.b64e(raw),
                                          **gather()))
        except ConnectionClosed:
            pass  # refused before our code was read (rate limit): the reason is queued
        offer = await _recv(ws, {"join_offer"}, OFFER_TIMEOUT_S)
        who = _clean(offer["technician"])
        why = _clean(offer["reason"])
        ticket = _clean(offer["ticket"])
        what = ", ".join(offer["capabilities"]) or "nothing"
        out.write(f"\nTechnician {who}" + (f" ({why})" if why else "")
                  + (f" [ticket {ticket}]" if ticket else "")
                  + " asks to start a support session on this machine.\n"
                  f"They may ask for: {what}. Your policy: "
                  + ", ".join(f"{k}={v}" for k, v in policy.summary().items()
                              if k in offer["capabilities"]) + ".\n")
        answer = await _unless_stopped(asker.ask("Allow?", CONSENT_TIMEOUT_S), stop)
        await ws.send(protocol.encode("consent", answer="yes" if answer.allowed else "no"))
        if not answer.allowed:
            out.write("Declined: no session was started.\n")
            return JoinResult(False)
        dial = await _unless_stopped(_recv(ws, {"dial"}, DIAL_TIMEOUT_S), stop)
        if dial["session_id"] != offer["session_id"]:
            raise JoinError("protocol", "the relay dialled another session")
        log = ActivityLog(None, echo=_echo(out))
        ctx = SessionContext(
            session_id=dial["session_id"], principal=offer["principal"], technician=who,
            mode="attended", policy=policy, log=log, state_root=None, reason=why,
            ticket=ticket, capabilities=tuple(dial["capabilities"]))
        settings = ServerSettings(session=ctx, registry=registry or builtin_registry(),
                                  host_key=host_key, ca_public_key=offer["ca_public_key"],
                                  asker=asker)
        try:
            url = check_tunnel_url(dial["url"], dial["session_id"])
        except DialRefused as exc:
            raise JoinError("protocol", str(exc)) from None
        out.write("Session starting. Press Ctrl-C to end it at any time.\n")
        out.flush()
        watcher = asyncio.create_task(_watch_relay(ws, stop))

        async def tell_relay() -> None:
            await ws.send(protocol.encode("session_ended", session_id=ctx.session_id,
                                          reason="customer"))

        try:
            ended = await open_tunnel_and_serve(url, trust, dial["token"], settings, stop,
                                                on_stop=tell_relay)
        finally:
            watcher.cancel()
        log.record("session.end", session_id=ctx.session_id, reason=ended)
        return JoinResult(True, ended)


T = TypeVar("T")


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> T:
    """``work``, unless the customer presses Ctrl-C first."""
    task = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        raise JoinError("cancelled", "cancelled by the customer: no session was started")
    return task.result()


async def _watch_relay(ws: ClientConnection, stop: asyncio.Event) -> None:
    """The join socket stays open for the session: ``session_end`` or its closing ends
    the session here too (the SSH connection closing does as well)."""
    with contextlib.suppress(ConnectionClosed, ProtocolError, WebSocketException):
        while True:
            msg = protocol.decode(await ws.recv(), frozenset({"session_end", "error"}))
            if msg["type"] == "session_end":
                break
    # The SSH connection normally ends first; this only covers a relay that went away.
    await asyncio.sleep(2)
    stop.set()


def run_join(code: str, relay_url: str, pin: str | Trust, policy: Policy) -> JoinResult:
    """Run one attended session with Ctrl-C as the customer's way to end it."""

    async def main() -> JoinResult:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        return await join(code, relay_url, pin, policy=policy, stop=stop)

    return asyncio.run(main())
