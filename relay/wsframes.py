"""The server side of RFC 6455 as the agents' control socket needs it, without I/O.

A relay holds ten thousand control sockets that each carry a small text message every
30 s. A general WebSocket stack keeps a parser, queues, events and an ASGI scope per
socket; this keeps a byte string. It supports exactly what the agent sends: masked,
unfragmented text frames of at most ``max_size`` bytes, close, ping and pong, with no
extensions and no subprotocols. Anything else is a protocol error with the close code
RFC 6455 gives for it, so the caller can say why before it hangs up.

``FrameReader.feed`` takes bytes as they arrive and returns whole messages;
``encode`` makes the server's (unmasked) frames; ``handshake_response`` checks an
upgrade request's headers and answers it.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable

from websockets.utils import accept_key

try:  # the C version that websockets ships; the pure-Python one is the fallback
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - depends on the wheel
    from websockets.utils import apply_mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_BAD_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012


class FrameError(Exception):
    """The peer broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameReader:
    """Whole messages out of a byte stream from a client.

    Each item ``feed`` returns is ``(opcode, payload)``: ``OP_TEXT`` with a ``str``,
    ``OP_BINARY`` with ``bytes``, ``OP_CLOSE`` with ``(code, reason)``, ``OP_PING``
    and ``OP_PONG`` with ``bytes``. Between messages it keeps nothing but a partial
    frame, if one is in flight; a frame that arrives a byte at a time is gathered in
    one growing buffer, never re-copied per byte."""

    __slots__ = ("_partial", "max_size")

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._partial: bytearray | None = None

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        # What an idle agent sends, 333 times a second at 10,000 agents: one whole,
        # small, masked, final text frame in one read. Same checks, in fewer steps.
        if self._partial is None and len(data) > 6 and data[0] == 0x81:
            length = data[1] - 0x80  # negative: not masked, which the long way refuses
            if 0 <= length < 126 and len(data) == 6 + length and length <= self.max_size:
                return [_message(OP_TEXT, apply_mask(data[6:], data[2:6]))]
        if self._partial is not None:
            self._partial += data
            buf: bytes | bytearray = self._partial
        else:
            buf = data
        out: list[tuple[int, object]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set: no extension "
                                                       "was agreed")
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a client frame must be masked")
            opcode, fin, length = first & 0x0F, first & 0x80, second & 0x7F
            head = 2
            if length == 126:
                if end - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if opcode >= OP_CLOSE:
                if length > 125 or not fin:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "a control frame is at most 125 "
                                                           "bytes and never fragmented")
            elif opcode not in (OP_TEXT, OP_BINARY):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unexpected opcode {opcode}: "
                                                       "no message is in progress")
            elif not fin:
                raise FrameError(CLOSE_UNSUPPORTED, "fragmented messages are not accepted "
                                                    "on the control socket")
            if length > self.max_size:
                raise FrameError(CLOSE_TOO_BIG, f"a message is at most {self.max_size} bytes")
            if opcode not in (OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            total = head + 4 + length
            if end - pos < total:
                break
            mask = bytes(buf[pos + head:pos + head + 4])
            payload = apply_mask(bytes(buf[pos + head + 4:pos + total]), mask)
            pos += total
            out.append(_message(opcode, payload))
        if pos == end:
            self._partial = None
        elif buf is self._partial:
            del self._partial[:pos]
        else:
            self._partial = bytearray(buf[pos:])
        return out


def _message(opcode: int, payload: bytes) -> tuple[int, object]:
    if opcode == OP_TEXT:
        try:
            return opcode, payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(CLOSE_BAD_DATA, "a text message is not UTF-8") from None
    if opcode == OP_CLOSE:
        if not payload:
            return opcode, (CLOSE_NO_STATUS, "")
        if len(payload) == 1:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a close frame's code is two bytes")
        code = struct.unpack("!H", payload[:2])[0]
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(CLOSE_BAD_DATA, "a close reason is not UTF-8") from None
        return opcode, (code, reason)
    return opcode, payload


def is_sendable_close_code(code: int) -> bool:
    """A code an endpoint may put in a close frame (RFC 6455 section 7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def encode(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame (servers do not mask)."""
    length = len(payload)
    if length < 126:
        return bytes((0x80 | opcode, length)) + payload
    if length < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, length) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, length) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    data = reason.encode("utf-8")[:123]
    while data:  # do not cut a character in half
        try:
            data.decode("utf-8")
            break
        except UnicodeDecodeError:
            data = data[:-1]
    return encode(OP_CLOSE, struct.pack("!H", code) + data)


def handshake_response(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``101`` answer to a plain WebSocket upgrade, or ``None`` when the request is
    not one this module serves (then the full stack answers it, errors included)."""
    upgrade = connection = version = key = b""
    for name, value in headers:
        if name == b"upgrade":
            upgrade = value
        elif name == b"connection":
            connection += b"," + value
        elif name == b"sec-websocket-version":
            version = value
        elif name == b"sec-websocket-key":
            key = value
        elif name in (b"origin", b"sec-websocket-protocol"):
            return None  # a browser, or a subprotocol: not an agent
    if upgrade.strip().lower() != b"websocket" or version.strip() != b"13":
        return None
    if b"upgrade" not in [t.strip().lower() for t in connection.split(b",")]:
        return None
    try:
        if len(base64.b64decode(key.strip(), validate=True)) != 16:
            return None
    except ValueError:
        return None
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
            + accept_key(key.strip().decode("ascii")).encode("ascii") + b"\r\n\r\n")
