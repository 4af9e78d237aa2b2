"""The server side of RFC 6455 as the agents' control socket needs it, without I/O.

A relay holds ten thousand control sockets that each carry a small text message every
30 s. A general WebSocket stack keeps a parser, queues, events and an ASGI scope per
socket; this keeps a byte string (and, only while a fragmented message is in flight,
its fragments). What it accepts is what RFC 6455 says an endpoint must accept, less
extensions and subprotocols (none are ever agreed):

- masked client frames (an unmasked one is a protocol error, 1002);
- text and binary messages in one frame or fragmented (section 5.4: intermediaries
  may split a message), with ping, pong and close frames between the fragments;
- a message of at most ``max_size`` bytes *in all its fragments*, refused with 1009 on
  the header of the frame that would pass it, before its payload is read;
- text checked as UTF-8 fragment by fragment with an incremental decoder, so an
  invalid sequence fails with 1007 when its fragment arrives, not at the message's end;
- close frames with an empty payload (reported as 1005) or a code an endpoint may
  send (section 7.4: 1000-1003, 1007-1014, 3000-4999); any other code, a one-byte
  payload or a reason that is not UTF-8 is a protocol error (1002, or 1007).

Anything else (reserved bits, unknown opcodes, control frames over 125 bytes or
fragmented, a continuation with no message in progress, a new message before the
last one ended) fails with 1002. Checks on one frame come in the order the
``websockets`` library makes them, so the two give the same close code for the same
bytes (tests/unit/test_wsframes_differential.py), with one difference on purpose: a control
frame between fragments is bounded by its own 125 bytes, not by what the message it
interrupts has left of ``max_size`` (websockets counts it; RFC 6455 makes control
frames no part of a message).

``FrameReader.feed`` takes bytes as they arrive and returns what they completed. A
bad frame does not lose what came before it in the same read: ``feed`` returns those
messages, keeps the :class:`FrameError` in ``FrameReader.error`` and reads nothing
after it (nor after a close frame: section 1.4). ``encode`` makes the server's
(unmasked) frames; ``handshake_response`` checks an upgrade request's headers and
answers it.
"""

from __future__ import annotations

import base64
import codecs
import struct
from collections.abc import Iterable

from websockets.utils import accept_key

try:  # the C version that websockets ships; the pure-Python one is the fallback
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - depends on the wheel
    from websockets.utils import apply_mask

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_OPCODES = frozenset((OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003
CLOSE_NO_STATUS = 1005
CLOSE_BAD_DATA = 1007
CLOSE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012

_UTF8 = codecs.getincrementaldecoder("utf-8")


class FrameError(Exception):
    """The peer broke the protocol; ``code`` is the close code to answer with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Fragments:
    """A fragmented message in flight: its opcode, its parts so far (text already
    decoded), their size in bytes, and for text the decoder that holds a character
    cut between two fragments."""

    __slots__ = ("decoder", "opcode", "parts", "size")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.size = 0
        self.parts: list[str] | list[bytes] = []
        self.decoder = _UTF8() if opcode == OP_TEXT else None
        self.add(payload, False)

    def add(self, payload: bytes, last: bool) -> None:
        self.size += len(payload)
        if self.decoder is None:
            if payload:
                self.parts.append(payload)  # type: ignore[arg-type]
            return
        try:
            text = self.decoder.decode(payload, last)
        except UnicodeDecodeError:
            raise FrameError(CLOSE_BAD_DATA, "a text message is not UTF-8") from None
        if text:
            self.parts.append(text)  # type: ignore[arg-type]

    def message(self) -> tuple[int, object]:
        if self.decoder is None:
            return self.opcode, b"".join(self.parts)  # type: ignore[arg-type]
        return self.opcode, "".join(self.parts)  # type: ignore[arg-type]


class FrameReader:
    """Whole messages out of a byte stream from a client.

    Each item ``feed`` returns is ``(opcode, payload)``: ``OP_TEXT`` with a ``str``,
    ``OP_BINARY`` with ``bytes``, ``OP_CLOSE`` with ``(code, reason)``, ``OP_PING``
    and ``OP_PONG`` with ``bytes``. After a protocol error ``error`` holds it and
    ``feed`` returns nothing more; after a close frame, likewise (without an error).
    Between messages it keeps nothing but a partial frame, if one is in flight; a
    frame that arrives a byte at a time is gathered in one growing buffer, never
    re-copied per byte.

    ``first_max_size``, when given, limits the first message instead (the one a
    stranger sends before authenticating, which is small); ``max_size`` is the limit
    of the message being read."""

    __slots__ = ("_idle", "_later", "_message", "_partial", "_stopped", "error", "max_size")

    def __init__(self, max_size: int, first_max_size: int | None = None) -> None:
        self.max_size = max_size if first_max_size is None else first_max_size
        self._later = None if first_max_size is None else max_size
        self._partial: bytearray | None = None
        self._message: _Fragments | None = None
        self._stopped = False
        self.error: FrameError | None = None
        #: Nothing in flight, no first-message limit, not stopped: the one check the
        #: shortcut below makes.
        self._idle = first_max_size is None

    def feed(self, data: bytes) -> list[tuple[int, object]]:
        # What an idle agent sends, 333 times a second at 10,000 agents: one whole,
        # small, masked, final text frame in one read, with nothing in flight. Same
        # checks, in fewer steps; anything the shortcut does not accept goes the long
        # way, which says why.
        if self._idle and len(data) > 6 and data[0] == 0x81:
            length = data[1] - 0x80  # negative: not masked, which the long way refuses
            if 0 <= length < 126 and len(data) == 6 + length and length <= self.max_size:
                try:
                    return [(OP_TEXT, apply_mask(data[6:], data[2:6]).decode("utf-8"))]
                except UnicodeDecodeError:
                    pass
        if self._stopped:
            return []
        if self._partial is not None:
            self._partial += data
            buf: bytes | bytearray = self._partial
        else:
            buf = data
        out: list[tuple[int, object]] = []
        try:
            pos = self._frames(buf, out)
        except FrameError as err:
            self.error = err
            self._stop()
            return out
        if self._stopped:
            self._partial = None
        elif pos == len(buf):
            self._partial = None
        elif buf is self._partial:
            del self._partial[:pos]
        else:
            self._partial = bytearray(buf[pos:])
        self._idle = (self._partial is None and self._message is None
                      and self._later is None and not self._stopped)
        return out

    def _stop(self) -> None:
        self._stopped = True
        self._idle = False
        self._partial = None
        self._message = None

    def _frames(self, buf: bytes | bytearray, out: list[tuple[int, object]]) -> int:
        """Parse whole frames from ``buf`` into ``out``; where the unparsed rest starts."""
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            opcode = first & 0x0F
            if opcode not in _OPCODES:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a client frame must be masked")
            length = second & 0x7F
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
            message = self._message
            control = opcode >= OP_CLOSE
            # A control frame is not part of the message it interrupts: it is bounded
            # by itself (125 bytes below), not by what the message has left.
            room = self.max_size - (0 if control or message is None else message.size)
            if length > room:
                raise FrameError(CLOSE_TOO_BIG, f"a message is at most {self.max_size} "
                                                "bytes")
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set: no extension "
                                                       "was agreed")
            fin = first & 0x80
            if control:
                if length > 125 or not fin:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "a control frame is at most 125 "
                                                           "bytes and never fragmented")
            elif opcode == OP_CONT:
                if message is None:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "a continuation frame, but no "
                                                           "message is in progress")
            elif message is not None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a new message began before the "
                                                       "last one ended")
            total = head + 4 + length
            if end - pos < total:
                break
            mask = bytes(buf[pos + head:pos + head + 4])
            payload = apply_mask(bytes(buf[pos + head + 4:pos + total]), mask)
            pos += total
            if control:
                if opcode == OP_CLOSE:
                    close = _close(payload)
                    if message is not None:
                        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close frame in the "
                                                               "middle of a message")
                    out.append((OP_CLOSE, close))
                    self._stop()  # section 1.4: nothing after a close is read
                    return pos
                out.append((opcode, payload))
            elif opcode == OP_CONT:
                assert message is not None
                message.add(payload, bool(fin))
                if fin:
                    self._message = None
                    out.append(message.message())
                    if self._later is not None:
                        self.max_size, self._later = self._later, None
            elif fin:
                out.append(_message(opcode, payload))
                if self._later is not None:
                    self.max_size, self._later = self._later, None
            else:
                self._message = _Fragments(opcode, payload)
        return pos


def _message(opcode: int, payload: bytes) -> tuple[int, object]:
    if opcode == OP_TEXT:
        try:
            return opcode, payload.decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(CLOSE_BAD_DATA, "a text message is not UTF-8") from None
    return opcode, payload


def _close(payload: bytes) -> tuple[int, str]:
    """A close frame's ``(code, reason)``: 1005 when it has none (section 7.1.5)."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close frame's code is two bytes")
    code = struct.unpack("!H", payload[:2])[0]
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(CLOSE_BAD_DATA, "a close reason is not UTF-8") from None
    if not is_sendable_close_code(code):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent by "
                                               "an endpoint")
    return code, reason


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
