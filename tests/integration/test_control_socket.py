"""The agents' lean control socket: RFC 6455 framing without I/O (property-based and
hostile cases), then the real relay answering raw sockets: broken frames close that
one connection with the right code, the relay keeps serving, browsers still get the
full stack."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect

from backline.relay.net import wsframes
from backline.relay.net.wsframes import FrameError, FrameReader
from tests.harness import AgentProcess, Api, RelayProcess, bystander, send_upgrade


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0,
                 masked: bool = True, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


# --- framing, no I/O -------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=1, max_size=8), st.data())
def test_messages_survive_any_split(texts: list[str], data: st.DataObject) -> None:
    stream = b"".join(client_frame(wsframes.OP_TEXT, t.encode()) for t in texts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    reader = FrameReader(64 * 1024)
    got: list[object] = []
    last = 0
    for cut in [*cuts, len(stream)]:
        got += [payload for _, payload in reader.feed(stream[last:cut])]
        last = cut
    assert got == texts


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_is_a_frame_error_or_a_wait_never_a_crash(junk: bytes) -> None:
    reader = FrameReader(1024)
    reader.feed(junk)
    err = reader.error
    assert err is None or (err.code in (1002, 1007, 1009) and err.reason)


def _outcome(feed: Any) -> object:
    reader, messages = feed()
    err = reader.error
    return messages, None if err is None else (err.code, err.reason)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.builds(client_frame, st.sampled_from([0x0, 0x1, 0x2, 0x3, 0x8, 0x9, 0xA]),
              st.binary(max_size=130), fin=st.booleans(), rsv=st.sampled_from([0, 0x40]),
              masked=st.booleans()),
    st.binary(max_size=140)), st.sampled_from([4, 60, 1024]))
def test_the_one_frame_shortcut_agrees_with_the_long_way(data: bytes, max_size: int) -> None:
    """A whole small text frame in one read takes a shortcut (what idle agents send);
    the same bytes split after the first byte take the general path. Same outcome."""
    def whole() -> object:
        reader = FrameReader(max_size)
        return reader, reader.feed(data)

    def split() -> object:
        reader = FrameReader(max_size)
        return reader, reader.feed(data[:1]) + reader.feed(data[1:])

    assert _outcome(whole) == _outcome(split)


@pytest.mark.parametrize(("frame", "code", "words"), [
    (client_frame(wsframes.OP_TEXT, b"hi", masked=False), 1002, "masked"),
    (client_frame(wsframes.OP_TEXT, b"hi", rsv=0x40), 1002, "reserved bits"),
    (client_frame(wsframes.OP_CONT, b"hi"), 1002, "no message is in progress"),
    (client_frame(0x3, b"hi"), 1002, "opcode 3"),
    (client_frame(0xB, b"hi"), 1002, "unknown opcode"),
    (client_frame(wsframes.OP_TEXT, b"\xff\xfe"), 1007, "UTF-8"),
    (client_frame(wsframes.OP_PING, b"x" * 126), 1002, "125 bytes"),
    (client_frame(wsframes.OP_PING, b"x", fin=False), 1002, "never fragmented"),
    (client_frame(wsframes.OP_CLOSE, b"\x03"), 1002, "two bytes"),
    (client_frame(wsframes.OP_CLOSE, b"\x03\xe8\xff"), 1007, "close reason"),
])
def test_protocol_violations_have_their_close_codes(frame: bytes, code: int,
                                                    words: str) -> None:
    reader = FrameReader(1024)
    assert reader.feed(frame) == []
    assert isinstance(reader.error, FrameError)
    assert reader.error.code == code and words in reader.error.reason


def test_an_oversized_message_is_refused_from_its_header_alone() -> None:
    # Only the 10-byte header arrives: the reader refuses without waiting for 8 GiB.
    header = client_frame(wsframes.OP_TEXT, b"", length=8 * 1024 ** 3)[:10]
    reader = FrameReader(64 * 1024)
    assert reader.feed(header) == []
    assert reader.error is not None and reader.error.code == 1009


def test_control_frames_and_the_servers_own_frames() -> None:
    reader = FrameReader(1024)
    got = reader.feed(client_frame(wsframes.OP_PING, b"p")
                      + client_frame(wsframes.OP_CLOSE, struct.pack("!H", 4000) + b"bye")
                      + client_frame(wsframes.OP_CLOSE, b""))
    # Nothing after a close frame is read (RFC 6455 section 1.4).
    assert got == [(wsframes.OP_PING, b"p"), (wsframes.OP_CLOSE, (4000, "bye"))]
    assert reader.error is None and reader.feed(client_frame(wsframes.OP_PING, b"")) == []
    assert FrameReader(9).feed(client_frame(wsframes.OP_CLOSE, b"")) == [
        (wsframes.OP_CLOSE, (1005, ""))]
    assert wsframes.encode(wsframes.OP_TEXT, b"x" * 200)[:4] == bytes((0x81, 126, 0, 200))
    assert wsframes.encode(wsframes.OP_TEXT, b"x" * 70000)[1] == 127
    long_reason = "é" * 100  # 200 bytes: cut to at most 123, on a character boundary
    frame = wsframes.close_frame(1000, long_reason)
    assert frame[1] <= 125 and frame[4:].decode("utf-8")


def test_handshake_is_only_answered_for_a_plain_agent_upgrade() -> None:
    key = base64.b64encode(os.urandom(16))
    plain = [(b"host", b"relay"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
             (b"sec-websocket-version", b"13"), (b"sec-websocket-key", key)]
    answer = wsframes.handshake_response(plain)
    assert answer is not None and answer.startswith(b"HTTP/1.1 101 ")
    for odd in ([(b"origin", b"https://evil.example")],
                [(b"sec-websocket-protocol", b"chat")]):
        assert wsframes.handshake_response(plain + odd) is None
    assert wsframes.handshake_response(
        [h if h[0] != b"sec-websocket-key" else (h[0], b"short") for h in plain]) is None
    assert wsframes.handshake_response(
        [h if h[0] != b"sec-websocket-version" else (h[0], b"8") for h in plain]) is None


# --- against the real relay ----------------------------------------------------------


def raw_upgrade(relay: RelayProcess, extra: str = "") -> tuple[ssl.SSLSocket, bytes]:
    host, port = relay.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10))
    response, rest = send_upgrade(sock, "/agent/connect", host, extra)
    return sock, response + b"\r\n\r\n" + rest


def read_until_closed(sock: ssl.SSLSocket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (ssl.SSLError, OSError):
        pass
    return data


def close_code_in(data: bytes) -> int:
    at = data.find(bytes((0x88,)))
    assert at >= 0, data
    return int(struct.unpack("!H", data[at + 2:at + 4])[0])


@pytest.mark.parametrize(("frame", "code"), [
    (client_frame(wsframes.OP_TEXT, b"{}", masked=False), 1002),
    (client_frame(wsframes.OP_CLOSE, struct.pack("!H", 1005)), 1002),
    (client_frame(wsframes.OP_TEXT, b"\xff"), 1007),
    (client_frame(wsframes.OP_TEXT, b"", length=10 * 1024 * 1024)[:14], 1009),
])
def test_broken_frames_close_that_socket_with_the_right_code(
        tmp_path: Path, relay: RelayProcess, admin: Api, frame: bytes, code: int) -> None:
    with bystander(tmp_path, relay, admin):
        sock, head = raw_upgrade(relay)
        assert head.startswith(b"HTTP/1.1 101 ")
        sock.sendall(frame)
        assert close_code_in(read_until_closed(sock)) == code
        sock.close()
    assert relay.healthy()


def test_ping_is_answered_and_browsers_get_the_full_stack(relay: RelayProcess) -> None:
    from backline.common.tlspin import client_context

    wss = relay.url.replace("https", "wss")
    with connect(wss + "/agent/connect", ssl=client_context(), open_timeout=10) as agent:
        assert "challenge" in agent.recv(5)
        assert agent.ping(b"are you there").wait(5)
        # The lean path answers the upgrade itself: none of uvicorn's extra headers.
        assert agent.response is not None and "date" not in agent.response.headers
    sock, head = raw_upgrade(relay, f"Origin: {relay.url}\r\n")
    try:
        # With an Origin the full stack answers (and the endpoint refuses browsers).
        assert b"date:" in head.lower()
    finally:
        sock.close()
    assert relay.healthy()


def test_a_frame_trickling_in_byte_by_byte_is_gathered_once() -> None:
    text = "x" * 60_000
    frame = client_frame(wsframes.OP_TEXT, text.encode())
    reader = FrameReader(64 * 1024)
    got: list[object] = []
    for i in range(len(frame)):
        got += [payload for _, payload in reader.feed(frame[i:i + 1])]
    assert got == [text]
    assert reader._partial is None  # nothing kept between messages


def test_close_codes_that_may_be_echoed() -> None:
    assert all(wsframes.is_sendable_close_code(c) for c in (1000, 1001, 1011, 3000, 4409))
    assert not any(wsframes.is_sendable_close_code(c)
                   for c in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000))


def read_server_frames(sock: ssl.SSLSocket, buffered: bytes, count: int) -> list[str]:
    """``count`` unmasked text frames from the relay (what is left of the upgrade's
    read comes first)."""
    data, out = buffered, []
    while len(out) < count:
        while True:
            if len(data) >= 2:
                n, head = data[1] & 0x7F, 2
                if n == 126 and len(data) >= 4:
                    n, head = struct.unpack("!H", data[2:4])[0], 4
                if n < 126 and len(data) >= head + n:
                    break
            chunk = sock.recv(65536)
            assert chunk, out
            data += chunk
        assert data[0] == 0x81, data[:2]
        out.append(data[head:head + n].decode())
        data = data[head + n:]
    return out


def test_a_message_in_the_same_packet_as_the_auth_is_answered(
        tmp_path: Path, relay: RelayProcess) -> None:
    import json

    from backline.common import keys, protocol
    from backline.relay.datadir import pem_fingerprint

    agent = AgentProcess(tmp_path, "eager")
    assert agent.enroll(relay.token()).returncode == 0
    key = keys.load_private(agent.state_dir / "identity_key")
    sock, head = raw_upgrade(relay)
    try:
        leftover = head.partition(b"\r\n\r\n")[2]
        [challenge] = read_server_frames(sock, leftover, 1)
        auth = protocol.answer_challenge(challenge, agent.agent_id, key,
                                         pem_fingerprint(relay.data_dir / "tls.crt"), "t")
        hb = protocol.encode("hb", stats={"cpu_pct": 1.0})
        sock.sendall(client_frame(wsframes.OP_TEXT, auth.encode())
                     + client_frame(wsframes.OP_TEXT, hb.encode()))  # one TLS record
        welcome, ack = (json.loads(f) for f in read_server_frames(sock, b"", 2))
        assert welcome["type"] == "welcome" and ack["type"] == "hb_ack"
    finally:
        sock.close()


def test_only_a_heartbeat_that_asks_is_answered(tmp_path: Path, relay: RelayProcess) -> None:
    """``"ack": false`` heartbeats are taken (the relay counts them) but not answered;
    the one that asks gets its ``hb_ack`` and nothing else follows."""
    import json

    from backline.common import keys, protocol
    from backline.relay.datadir import pem_fingerprint

    agent = AgentProcess(tmp_path, "quiet")
    assert agent.enroll(relay.token()).returncode == 0
    key = keys.load_private(agent.state_dir / "identity_key")
    sock, head = raw_upgrade(relay)
    try:
        [challenge] = read_server_frames(sock, head.partition(b"\r\n\r\n")[2], 1)
        auth = protocol.answer_challenge(challenge, agent.agent_id, key,
                                         pem_fingerprint(relay.data_dir / "tls.crt"), "t")
        sock.sendall(client_frame(wsframes.OP_TEXT, auth.encode()))
        [welcome] = (json.loads(f) for f in read_server_frames(sock, b"", 1))
        assert welcome["type"] == "welcome"
        before = control_messages(relay)
        quiet = protocol.encode("hb", stats={"cpu_pct": 1.0}, ack=False).encode()
        asking = protocol.encode("hb", ack=True).encode()
        sock.sendall(client_frame(wsframes.OP_TEXT, quiet) * 3
                     + client_frame(wsframes.OP_TEXT, asking))
        [ack] = (json.loads(f) for f in read_server_frames(sock, b"", 1))
        assert ack["type"] == "hb_ack"
        sock.settimeout(1.0)
        with pytest.raises(TimeoutError):
            sock.recv(65536)  # no answer to the quiet ones
        after = control_messages(relay)
        assert (after["in"] - before["in"], after["out"] - before["out"]) == (4, 1)
    finally:
        sock.close()


def control_messages(relay: RelayProcess) -> dict[str, float]:
    counts = {}
    text = httpx.get(relay.url + "/metrics", verify=relay.tls(), timeout=5).text
    for line in text.splitlines():
        if line.startswith("backline_control_messages_total{"):
            way = line.split('"')[1]
            counts[way] = float(line.rsplit(" ", 1)[1])
    return counts


class _Sink(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.sent: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    def close(self) -> None:
        pass


def test_a_handled_message_does_not_wake_the_endpoint() -> None:
    """Once the endpoint handles messages in the callback, a heartbeat is answered there
    and the endpoint's coroutine (waiting in ``wait_closed``) stays asleep: waking it
    per heartbeat cost a task step each, at 333 heartbeats a second for 10,000 agents.
    A close frame still wakes it."""
    from backline.relay.net.control_socket import Address, LeanSocket

    async def main() -> None:
        sink = _Sink()
        sock = LeanSocket(sink, Address("127.0.0.1", 1), None, set())  # type: ignore[arg-type]
        handled: list[str | bytes] = []
        sock.handler = lambda message: (handled.append(message), sock.write_text("ack"))
        waiting = asyncio.ensure_future(sock.wait_closed())
        await asyncio.sleep(0)
        waiter = sock._waiter
        assert waiter is not None
        for _ in range(3):
            sock.data_received(client_frame(wsframes.OP_TEXT, b'{"type":"hb"}'))
        await asyncio.sleep(0)
        assert handled == ['{"type":"hb"}'] * 3 and len(sink.sent) == 3
        assert sock._waiter is waiter and not waiter.done()
        sock.data_received(client_frame(wsframes.OP_CLOSE, struct.pack("!H", 1000)))
        await asyncio.wait_for(waiting, 1)

    asyncio.run(main())
