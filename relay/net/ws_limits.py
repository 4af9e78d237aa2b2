"""Message size limits per path, and failed frames answered and audited, for the
WebSockets uvicorn's wsproto protocol serves (everything but the agents' lean control
sockets: browsers, ``/agent/enroll``, ``/agent/join``, ``/agent/tunnel/{id}``, and
``/agent/connect`` behind a trusted proxy).

Why a limit per path: uvicorn has one ``ws_max_size`` (1 MiB) for every socket, and
it counts a message's bytes as they are buffered, so a stranger who opens
``/agent/enroll`` and starts a 1 MiB message that never ends holds up to 1 MiB of the
relay's memory (300 such sockets cost 210 MiB). The messages a stranger may send
before authenticating are small and their fields bounded
(:func:`backline.common.protocol.max_encoded_bytes`): a few KiB. So the first message
on each such path is held to what its schema allows, and the tunnel's later messages
(SSH, after the token was checked) keep the larger limit.

Why this way, a :class:`WSProtocol` subclass with a wsproto extension, rather than
serving these paths with the lean frame reader: these sockets need what the full
stack gives them (Starlette's routing and path parameters, the security middleware's
Origin check and its audit, the proxy's client address), and they are few and short,
so the lean path's savings do not matter here; and behind a trusted proxy even
``/agent/connect`` takes this path, which needs the limit too. wsproto calls each
extension's ``frame_inbound_header`` with every frame's opcode and payload length
*before* it reads the payload: :class:`MessageSizeGuard` is such an extension, never
announced to the client (its ``accept`` declines every offer), that counts a
message's frames and refuses the one that would pass the limit. The payload is
never buffered.

Why the close frame: wsproto reports a frame it refused (bad UTF-8, reserved bits,
an unmasked frame, a bad close code, a guard's refusal) as if the peer had closed
with that code, and uvicorn then hangs up without a close frame and without a word.
:class:`LimitedWSProtocol` tells the two apart (a peer's close moves the connection
out of ``OPEN`` first), sends the close code, and audits the refusal
(aggregated per address, :meth:`backline.relay.state.Relay.record_flood`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any
from urllib.parse import unquote

from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
from wsproto import ConnectionType, WSConnection, events
from wsproto.connection import ConnectionState
from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, Opcode, RsvBits

from backline.common import protocol

log = logging.getLogger("backline.relay.net.ws_limits")

TUNNEL_PREFIX = "/agent/tunnel/"
#: The first message's limit on the paths strangers may speak on, from the schemas of
#: what may come there; later messages on those paths are as small (join: ``consent``
#: and ``session_ended``), except on the tunnel (SSH in binary frames).
FIRST_MESSAGE_LIMITS = {
    "/agent/enroll": protocol.max_encoded_bytes("enroll"),
    "/agent/join": protocol.max_encoded_bytes("join", "consent", "session_ended"),
    "/agent/connect": protocol.max_encoded_bytes("auth"),
    TUNNEL_PREFIX: protocol.max_encoded_bytes("tunnel"),
}
LATER_MESSAGE_LIMITS = {
    "/agent/enroll": FIRST_MESSAGE_LIMITS["/agent/enroll"],
    "/agent/join": FIRST_MESSAGE_LIMITS["/agent/join"],
    "/agent/connect": protocol.MAX_FRAME_BYTES,
}
_NO_RSV = RsvBits(False, False, False)


def limits_for(path: str, default: int) -> tuple[int, int]:
    """``(first message, later messages)`` byte limits for a socket on ``path``."""
    key = TUNNEL_PREFIX if path.startswith(TUNNEL_PREFIX) else path
    if key not in FIRST_MESSAGE_LIMITS:
        return default, default
    return FIRST_MESSAGE_LIMITS[key], LATER_MESSAGE_LIMITS.get(key, default)


class MessageSizeGuard(Extension):
    """A wsproto extension in name only: it refuses, on its header, the frame that
    takes a message past its limit (1009), fragments counted together. A text or
    binary frame starts a message, a continuation adds to it; control frames are no
    part of a message (wsproto bounds them to 125 bytes itself)."""

    name = "x-backline-message-size"

    def __init__(self, first: int, later: int) -> None:
        self.first = first
        self.later = later
        self.messages = 0
        self.size = 0
        self.refused: int | None = None  #: the limit a refused frame passed

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool:
        return False

    def accept(self, offer: str) -> None:
        return None  # never agreed with the client, never in a response header

    def frame_inbound_header(self, proto: Any, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            self.messages += 1
            self.size = payload_length
        elif opcode is Opcode.CONTINUATION:
            self.size += payload_length
        else:
            return _NO_RSV
        limit = self.first if self.messages <= 1 else self.later
        if self.size > limit:
            self.refused = limit
            return CloseReason.MESSAGE_TOO_BIG
        return _NO_RSV


class _GuardedConnection(WSConnection):
    """wsproto's server connection, with :attr:`guard` among the extensions of the
    handshake's answer (so the frame decoder calls it) once one is set."""

    def __init__(self) -> None:
        super().__init__(ConnectionType.SERVER)
        self.guard: MessageSizeGuard | None = None

    def send(self, event: events.Event) -> bytes:
        if isinstance(event, events.AcceptConnection) and self.guard is not None:
            event = dataclasses.replace(event, extensions=[*event.extensions, self.guard])
        return super().send(event)


class LimitedWSProtocol(WSProtocol):
    """uvicorn's wsproto protocol with the limits above, and a frame it refuses
    answered with its close code and audited. ``app_ref`` (the Starlette app's state,
    for ``.relay``) is set on the subclass :func:`bound` makes."""

    app_ref: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn = _GuardedConnection()
        self.path = ""

    def handle_connect(self, event: events.Request) -> None:
        self.path = unquote(event.target.partition("?")[0])
        first, later = limits_for(self.path, self.config.ws_max_size)
        self.conn.guard = MessageSizeGuard(first, later)
        # uvicorn's own count of a message's buffered bytes stays, as a second line.
        self.buffer.max_length = max(first, later)
        super().handle_connect(event)

    def handle_close(self, event: events.CloseConnection) -> None:
        if not self.close_sent and self.conn.state is ConnectionState.OPEN:
            self._refuse(event.code, event.reason or "")
            return
        super().handle_close(event)

    def _refuse(self, code: int, reason: str) -> None:
        """A frame wsproto refused: fail the connection (RFC 6455 section 7.1.7) with
        its close code, tell the endpoint, audit it."""
        guard = self.conn.guard
        if guard is not None and guard.refused is not None:
            reason = f"a message is at most {guard.refused} bytes here"
        client = self.scope.get("client") if hasattr(self, "scope") else self.client
        address = str(client[0]) if client else "unknown"
        log.info("WebSocket %s from %s: %s (close %d)", self.path, address, reason, code)
        relay = getattr(getattr(type(self).app_ref, "state", None), "relay", None)
        if relay is not None:
            action = ("agent.protocol_error" if self.path.startswith("/agent/")
                      else "websocket.protocol_error")
            relay.record_flood(address, f"anonymous@{address}", action, self.path,
                               reason="websocket_frame", detail=reason[:200],
                               close_code=code, address=address)
        self.close_sent = True
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code,
                               "reason": reason})
        if not self.transport.is_closing():
            self.transport.write(self.conn.send(events.CloseConnection(
                code=code, reason=reason[:120])))
            self.transport.close()


def bound(app_state: Any) -> type[LimitedWSProtocol]:
    """A :class:`LimitedWSProtocol` that finds the relay in ``app_state``."""
    return type("BoundLimitedWSProtocol", (LimitedWSProtocol,), {"app_ref": app_state})
