"""The lean frame reader against a reference: the ``websockets`` library's sans-I/O
protocol (``websockets.protocol.Protocol``, server side, the same ``max_size``).

hypothesis writes streams of client frames — messages in one frame or fragmented,
ping, pong and close frames between the fragments, text cut inside a character,
invalid UTF-8, every close code, oversized frames and messages, broken frames after
good ones — and cuts each stream into arbitrary reads. Fed the same reads, both must
deliver the same messages (and pings, pongs, close) and end with the same close code:
the one websockets would send (``close_sent``), and for FrameReader the code of the
close frame it read or of its :class:`~backline.relay.net.wsframes.FrameError`.

The reference's text rule is websockets' own (``websockets.asyncio.messages``): an
incremental UTF-8 decoder fed frame by frame, failing with 1007. websockets' protocol
layer leaves text to its connection layer, which decodes when the application reads;
here, as in FrameReader, the first error in stream order ends the stream.

One deliberate difference, excluded from the generated streams and tested on its own
(:func:`test_a_control_frame_between_fragments_is_not_counted_in_the_message`):
websockets counts a control frame that interrupts a fragmented message against what
the message has left of ``max_size``; RFC 6455 makes control frames no part of the
message, and FrameReader bounds them by their own 125 bytes.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from websockets.asyncio.messages import UTF8Decoder
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side

from backline.relay.net import wsframes
from backline.relay.net.wsframes import FrameReader

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

# Close codes: every range edge of RFC 6455 section 7.4, and some from everywhere.
EDGE_CODES = [0, 1, 999, 1000, 1001, 1002, 1003, 1004, 1005, 1006, 1007, 1008, 1009,
              1010, 1011, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 3000, 3999,
              4000, 4999, 5000, 65535]
close_codes = st.one_of(st.sampled_from(EDGE_CODES), st.integers(0, 5000),
                        st.integers(0, 65535))

# Invalid UTF-8: a lone continuation byte, overlong forms, a surrogate, past U+10FFFF,
# a character cut short before an ASCII byte, a byte that never appears.
BAD_UTF8 = [b"\x80", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80",
            b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80", b"\xe2\x82A", b"\xff", b"\xfe"]


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    long_length: bool = False  # the length in a wider form than needed (allowed)
    declared: int | None = None  # a length the payload does not match: a cut-off frame

    def encode(self) -> bytes:
        n = len(self.payload) if self.declared is None else self.declared
        first = (0x80 if self.fin else 0) | self.rsv | self.opcode
        bit = 0x80 if self.masked else 0
        if n < 126 and not self.long_length:
            head = bytes((first, bit | n))
        elif n < 65536:
            head = struct.pack("!BBH", first, bit | 126, n)
        else:
            head = struct.pack("!BBQ", first, bit | 127, n)
        if not self.masked:
            return head + self.payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))


def text_payloads() -> st.SearchStrategy[bytes]:
    good = st.text(max_size=40).map(lambda t: t.encode("utf-8"))

    def spoil(data: bytes, bad: bytes, at: int) -> bytes:
        at = min(at, len(data))
        return data[:at] + bad + data[at:]

    spoiled = st.builds(spoil, good, st.sampled_from(BAD_UTF8), st.integers(0, 200))
    return st.one_of(good, good, good, spoiled)


def control_frames() -> st.SearchStrategy[Frame]:
    ping_pong = st.builds(Frame, st.sampled_from([PING, PONG]),
                          st.one_of(st.binary(max_size=20), st.binary(min_size=120,
                                                                      max_size=130)))
    reason = st.one_of(st.text(max_size=10).map(lambda t: t.encode("utf-8")),
                       st.sampled_from(BAD_UTF8))
    close = st.one_of(
        st.builds(lambda code, why: Frame(CLOSE, struct.pack("!H", code) + why),
                  close_codes, reason),
        st.just(Frame(CLOSE, b"")), st.just(Frame(CLOSE, b"\x03")),
        st.just(Frame(CLOSE, b"\x03\xe8" + b"x" * 124)),  # 126 bytes: too long
    )
    fragmented = st.builds(Frame, st.sampled_from([PING, PONG, CLOSE]),
                           st.binary(max_size=4), fin=st.just(False))
    return st.one_of(ping_pong, ping_pong, close, fragmented)


@st.composite
def messages(draw: st.DrawFn) -> list[Frame]:
    """One data message: in one frame or cut anywhere into fragments (inside a
    character too), with control frames between the fragments."""
    opcode = draw(st.sampled_from([TEXT, BINARY]))
    data = draw(text_payloads() if opcode == TEXT else st.binary(max_size=60))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    frames: list[Frame] = []
    for i, piece in enumerate(pieces):
        if i and draw(st.integers(0, 3)) == 0:
            frames.append(draw(control_frames()))
        frames.append(Frame(opcode if i == 0 else CONT, piece, fin=i == len(pieces) - 1,
                            long_length=draw(st.integers(0, 9)) == 0))
    return frames


def broken_frames() -> st.SearchStrategy[Frame]:
    payload = st.binary(max_size=8)
    return st.one_of(
        st.builds(Frame, st.sampled_from([TEXT, BINARY, CONT, PING]), payload,
                  rsv=st.sampled_from([0x10, 0x20, 0x40])),
        st.builds(Frame, st.sampled_from([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), payload),
        st.builds(Frame, st.sampled_from([TEXT, BINARY, PING, CLOSE]), payload,
                  masked=st.just(False)),
        st.builds(Frame, st.just(CONT), payload, fin=st.booleans()),
        st.builds(Frame, st.sampled_from([TEXT, BINARY]), payload, fin=st.just(False)),
    )


def oversized(max_size: int) -> st.SearchStrategy[Frame]:
    """A frame whose header alone says it is too long: only the start of it is sent."""
    return st.builds(lambda opcode, extra, fin: Frame(
        opcode, b"x" * 3, fin=fin, declared=max_size + extra),
        st.sampled_from([TEXT, BINARY, CONT, PING]),
        st.sampled_from([1, 2, 1000, 2 ** 40]), st.booleans())


@st.composite
def streams(draw: st.DrawFn) -> tuple[int, list[Frame], list[bytes]]:
    max_size = draw(st.sampled_from([8, 30, 125, 4096]))
    frames: list[Frame] = []
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 9))
        if kind < 6:
            frames += draw(messages())
        elif kind < 8:
            frames.append(draw(control_frames()))
        else:
            frames.append(draw(broken_frames()))
    if draw(st.integers(0, 4)) == 0:
        frames.append(draw(oversized(max_size)))
    assume(not control_frame_counted_by_websockets(frames, max_size))
    stream = b"".join(f.encode() for f in frames)
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return max_size, frames, chunks


def control_frame_counted_by_websockets(frames: list[Frame], max_size: int) -> bool:
    """Whether a control frame comes inside a fragmented message with more bytes than
    the message has left (the one place the two differ on purpose; module docstring)."""
    size: int | None = None
    for f in frames:
        if f.opcode in (TEXT, BINARY):
            size = None if f.fin else len(f.payload)
        elif f.opcode == CONT and size is not None:
            size = None if f.fin else size + len(f.payload)
        elif f.opcode >= CLOSE and size is not None and len(f.payload) > max_size - size:
            return True
    return False


Outcome = tuple[list[tuple[str, object]], int | None]


def _event(opcode: int, payload: object) -> tuple[str, object]:
    return ({TEXT: "text", BINARY: "binary", PING: "ping", PONG: "pong", CLOSE: "close"}
            [opcode], payload)


def lean(max_size: int, chunks: list[bytes]) -> Outcome:
    reader = FrameReader(max_size)
    events: list[tuple[str, object]] = []
    code: int | None = None
    for chunk in chunks:
        for opcode, payload in reader.feed(chunk):
            events.append(_event(opcode, payload))
            if opcode == CLOSE:
                code = payload[0]  # type: ignore[index]
        if reader.error is not None:
            return events, reader.error.code
    return events, code


def reference(max_size: int, chunks: list[bytes]) -> Outcome:
    proto = Protocol(Side.SERVER, max_size=max_size)
    events: list[tuple[str, object]] = []
    opcode: Opcode | None = None
    parts: list[object] = []
    decoder = None
    for chunk in chunks:
        proto.receive_data(chunk)
        for frame in proto.events_received():
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                if frame.opcode is not Opcode.CONT:
                    opcode, parts = frame.opcode, []
                    decoder = UTF8Decoder() if opcode is Opcode.TEXT else None
                if decoder is not None:
                    try:
                        parts.append(decoder.decode(frame.data, frame.fin))
                    except UnicodeDecodeError:
                        return events, 1007  # what websockets' connection fails with
                else:
                    parts.append(bytes(frame.data))
                if frame.fin:
                    events.append(("text", "".join(parts)) if opcode is Opcode.TEXT  # type: ignore[arg-type]
                                  else ("binary", b"".join(parts)))  # type: ignore[arg-type]
            elif frame.opcode is Opcode.CLOSE:
                assert proto.close_rcvd is not None
                events.append(("close", (proto.close_rcvd.code, proto.close_rcvd.reason)))
            else:
                events.append(_event(int(frame.opcode), bytes(frame.data)))
        if proto.close_sent is not None:
            break
    return events, None if proto.close_sent is None else int(proto.close_sent.code)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.filter_too_much])
@given(streams())
def test_same_messages_and_close_code_as_websockets(
        case: tuple[int, list[Frame], list[bytes]]) -> None:
    max_size, frames, chunks = case
    assert lean(max_size, chunks) == reference(max_size, chunks), frames


@settings(max_examples=300, deadline=None)
@given(close_codes, st.text(max_size=10))
def test_every_close_code_as_websockets(code: int, text: str) -> None:
    """A message, then a close frame with ``code``: the message is delivered either
    way; the close is taken for a code an endpoint may send, else it fails with 1002."""
    chunks = [Frame(TEXT, text.encode()).encode()
              + Frame(CLOSE, struct.pack("!H", code) + b"bye").encode()]
    ours = lean(1024, chunks)
    assert ours == reference(1024, chunks)
    valid = 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999
    assert ours == (([("text", text), ("close", (code, "bye"))], code) if valid
                    else ([("text", text)], 1002))


def test_a_control_frame_between_fragments_is_not_counted_in_the_message() -> None:
    """28 of 30 bytes sent, then a ping of 20: websockets fails 1009; RFC 6455 has the
    ping outside the message, so it is answered and the message completes."""
    stream = b"".join(f.encode() for f in (Frame(TEXT, b"a" * 28, fin=False),
                                           Frame(PING, b"p" * 20),
                                           Frame(CONT, b"bb")))
    assert lean(30, [stream]) == ([("ping", b"p" * 20), ("text", "a" * 28 + "bb")], None)
    assert reference(30, [stream])[1] == 1009
    assert wsframes.CLOSE_TOO_BIG == 1009
