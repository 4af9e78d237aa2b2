"""Finding 7 of issue 10: the relay's frame layer as RFC 6455 has it, and the sockets
strangers speak on held to the size of their messages.

Without I/O: fragmented messages (control frames between fragments, a character cut
between two fragments), invalid close codes, a good message and a bad frame in one
read, UTF-8 refused at the fragment that breaks it, a message's size counted over its
fragments. Against a real relay: a real agent's key on a raw socket sends a fragmented
heartbeat, an invalid close code, good messages with bad frames in one TLS record;
300 never-finished oversized messages to ``/agent/enroll`` cost the relay next to
nothing and are each refused with 1009. Every refusal is audited.
(The differential test against ``websockets`` is tests/unit/test_wsframes_differential.py.)
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import pytest

from backline.common import keys, protocol
from backline.relay.datadir import pem_fingerprint
from backline.relay.net import ws_limits, wsframes
from backline.relay.net.wsframes import FrameReader
from tests.harness import AgentProcess, RelayProcess, audit_actions, send_upgrade, wait_for
from tests.integration.test_control_socket import _Sink, client_frame

TEXT, BINARY, CONT = wsframes.OP_TEXT, wsframes.OP_BINARY, wsframes.OP_CONT
PING, CLOSE = wsframes.OP_PING, wsframes.OP_CLOSE


def frames(*specs: tuple[int, bytes] | tuple[int, bytes, bool]) -> bytes:
    return b"".join(client_frame(s[0], s[1], fin=s[2] if len(s) > 2 else True)  # type: ignore[misc]
                    for s in specs)


# --- the reader, no I/O -----------------------------------------------------------------


def test_a_fragmented_message_with_pings_between_and_a_character_cut_in_two() -> None:
    text = "héllo wörld €".encode()
    cut = text.index("€".encode()) + 1  # inside the three bytes of the euro sign
    reader = FrameReader(1024)
    got = reader.feed(frames((TEXT, text[:3], False), (PING, b"1"), (CONT, text[3:cut], False),
                             (wsframes.OP_PONG, b"2"), (CONT, text[cut:])))
    assert got == [(PING, b"1"), (wsframes.OP_PONG, b"2"), (TEXT, "héllo wörld €")]
    assert reader.error is None and reader._message is None and reader._partial is None
    binary = frames((BINARY, b"\x00\xff", False), (CONT, b"", False), (CONT, b"\x01"))
    assert FrameReader(3).feed(binary) == [(BINARY, b"\x00\xff\x01")]


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999,
                                  5000, 65535])
def test_a_close_code_an_endpoint_may_not_send_is_a_protocol_error(code: int) -> None:
    reader = FrameReader(1024)
    assert reader.feed(client_frame(CLOSE, struct.pack("!H", code))) == []
    assert reader.error is not None and reader.error.code == 1002
    assert str(code) in reader.error.reason


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999])
def test_a_close_code_an_endpoint_may_send_is_taken(code: int) -> None:
    assert FrameReader(1024).feed(client_frame(CLOSE, struct.pack("!H", code) + b"ok")) == [
        (CLOSE, (code, "ok"))]


@pytest.mark.parametrize(("bad", "code"), [
    (client_frame(TEXT, b"\xff"), 1007),
    (client_frame(TEXT, b"x", masked=False), 1002),
    (client_frame(CLOSE, struct.pack("!H", 1006)), 1002),
    (client_frame(TEXT, b"", length=10 ** 9)[:10], 1009),
])
def test_messages_before_a_bad_frame_in_the_same_read_are_delivered(bad: bytes,
                                                                    code: int) -> None:
    reader = FrameReader(64 * 1024)
    got = reader.feed(frames((TEXT, b"first"), (PING, b"p"), (TEXT, b"sec", False),
                             (CONT, b"ond")) + bad + client_frame(TEXT, b"never"))
    assert got == [(TEXT, "first"), (PING, b"p"), (TEXT, "second")]
    assert reader.error is not None and reader.error.code == code
    assert reader.feed(client_frame(TEXT, b"later")) == []  # nothing read after it


def test_invalid_utf8_fails_at_its_fragment_not_at_the_message_end() -> None:
    reader = FrameReader(1024)
    assert reader.feed(client_frame(TEXT, b"ok \xe2\x82", fin=False)) == []  # cut: wait
    assert reader.error is None
    assert reader.feed(client_frame(CONT, b"\xac fine", fin=False)) == []
    assert reader.error is None
    assert reader.feed(client_frame(CONT, b"\xc0\xaf", fin=False)) == []  # overlong
    assert reader.error is not None and reader.error.code == 1007
    cut_at_the_end = FrameReader(1024)
    cut_at_the_end.feed(frames((TEXT, b"a\xe2", False), (CONT, b"\x82")))
    assert cut_at_the_end.error is not None and cut_at_the_end.error.code == 1007


def test_the_size_limit_is_the_whole_messages_checked_on_each_header() -> None:
    reader = FrameReader(100)
    assert reader.feed(frames((TEXT, b"a" * 40, False), (CONT, b"b" * 40, False))) == []
    # Only the third fragment's header arrives: it would make 120 bytes; refused unread.
    assert reader.feed(client_frame(CONT, b"", length=40)[:6]) == []
    assert reader.error is not None and reader.error.code == 1009
    exact = FrameReader(100)
    assert exact.feed(frames((TEXT, b"a" * 50, False), (CONT, b"b" * 50))) == [
        (TEXT, "a" * 50 + "b" * 50)]


@pytest.mark.parametrize(("stream", "words"), [
    (frames((CONT, b"x")), "no message is in progress"),
    (frames((TEXT, b"x", False), (TEXT, b"y")), "before the last one ended"),
    (frames((TEXT, b"x", False), (BINARY, b"y")), "before the last one ended"),
    (frames((TEXT, b"x", False), (CLOSE, struct.pack("!H", 1000))), "middle of a message"),
])
def test_fragments_out_of_order_are_protocol_errors(stream: bytes, words: str) -> None:
    reader = FrameReader(1024)
    reader.feed(stream)
    assert reader.error is not None and reader.error.code == 1002
    assert words in reader.error.reason


def test_the_first_message_has_its_own_limit() -> None:
    reader = FrameReader(1000, first_max_size=10)
    assert reader.feed(frames((TEXT, b"a" * 10), (TEXT, b"b" * 500))) == [
        (TEXT, "a" * 10), (TEXT, "b" * 500)]
    small = FrameReader(1000, first_max_size=10)
    small.feed(client_frame(TEXT, b"a" * 11))
    assert small.error is not None and small.error.code == 1009


@pytest.mark.parametrize("msg_type", ["enroll", "join", "tunnel", "auth", "consent",
                                      "session_ended"])
def test_the_largest_valid_message_fits_its_sockets_limit(msg_type: str) -> None:
    """Every string field at its longest, in the characters JSON writes longest."""
    fields: dict[str, Any] = {}
    for name, rule in protocol.SCHEMAS[msg_type].items():
        assert rule.max_len is not None
        if rule.pattern is None:
            fields[name] = "\x01" * rule.max_len
        else:  # the pattern's alphabet is ASCII: its longest valid value
            fields[name] = {"code": "1" * 9, "answer": "yes",
                            "reason": "agent_stopping"}.get(name, "A" * rule.max_len)
            if name == "agent_id":
                fields[name] = "ag_" + "a" * 40
            if name == "session_id":
                fields[name] = "ss_" + "a" * 40
    size = len(protocol.encode(msg_type, **fields).encode())
    assert size <= protocol.max_encoded_bytes(msg_type) < 12 * 1024


def test_a_pending_error_waits_for_the_endpoint_to_take_earlier_messages() -> None:
    """The agent's ``auth`` and a bad frame in one read: the endpoint still reads the
    ``auth`` and its answer goes out, then the connection fails with 1007, audited."""
    import asyncio

    from backline.relay.net.control_socket import Address, LeanSocket

    recorded: list[tuple[Any, ...]] = []

    class Relay:
        def record_flood(self, *args: Any, **details: Any) -> None:
            recorded.append((*args, details))

    class State:
        relay = Relay()

    class App:
        state = State()

    class Sink(_Sink):
        paused = False

        def pause_reading(self) -> None:
            self.paused = True

        def resume_reading(self) -> None:
            raise AssertionError("no reading after a protocol error")

    async def main() -> None:
        sink = Sink()
        sock = LeanSocket(sink, Address("192.0.2.7", 1), App(), set())  # type: ignore[arg-type]
        sock.data_received(frames((TEXT, b'{"auth":1}')) + client_frame(TEXT, b"\xff"))
        assert sink.paused and not sock.done and not sink.sent
        assert (await sock.receive())["text"] == '{"auth":1}'
        await sock.send_text("welcome")
        assert (await sock.receive())["type"] == "websocket.disconnect"
        assert sink.sent[0] == wsframes.encode(TEXT, b"welcome")
        assert sink.sent[1][:4] == bytes((0x88, sink.sent[1][1])) + struct.pack("!H", 1007)

    asyncio.run(main())
    [(source, actor, action, target, details)] = recorded
    assert (source, actor, action, target) == ("192.0.2.7", "anonymous@192.0.2.7",
                                               "agent.protocol_error", "")
    assert details["close_code"] == 1007 and "UTF-8" in details["detail"]


# --- against the real relay -------------------------------------------------------------


def tls_socket(relay: RelayProcess, source: str | None = None) -> ssl.SSLSocket:
    host, port = relay.url.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((host, int(port)), timeout=10,
                                   source_address=(source, 0) if source else None)
    return ctx.wrap_socket(raw)


def upgrade(relay: RelayProcess, path: str, source: str | None = None, extra: str = ""
            ) -> tuple[ssl.SSLSocket, bytes]:
    """A raw WebSocket upgrade; the socket and what came after the 101's headers."""
    sock = tls_socket(relay, source)
    response, rest = send_upgrade(sock, path, extra=extra)
    assert response.startswith(b"HTTP/1.1 101 "), response
    # The size guard is a wsproto extension in name only: never agreed, even if offered.
    assert b"sec-websocket-extensions" not in response.lower(), response
    return sock, rest


class ServerFrames:
    """The relay's (unmasked, unfragmented) frames on a raw socket: ``(opcode,
    payload)``; ``(None, b"")`` once the connection is closed."""

    def __init__(self, sock: ssl.SSLSocket, buffered: bytes = b"") -> None:
        self.sock, self.data = sock, buffered

    def next(self) -> tuple[int | None, bytes]:
        while True:
            if len(self.data) >= 2:
                n, head = self.data[1] & 0x7F, 2
                if n == 126 and len(self.data) >= 4:
                    n, head = struct.unpack("!H", self.data[2:4])[0], 4
                if n < 126 and len(self.data) >= head + n:
                    opcode, payload = self.data[0] & 0x0F, self.data[head:head + n]
                    self.data = self.data[head + n:]
                    return opcode, payload
            try:
                chunk = self.sock.recv(65536)
            except (ssl.SSLError, OSError):
                chunk = b""
            if not chunk:
                return None, b""
            self.data += chunk

    def close_code(self) -> int | None:
        while True:
            opcode, payload = self.next()
            if opcode is None:
                return None
            if opcode == CLOSE:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005


def authenticated(relay: RelayProcess, agent: AgentProcess) -> tuple[ssl.SSLSocket,
                                                                      ServerFrames]:
    """A raw control socket logged in with the agent's real key (welcome read)."""
    key = keys.load_private(agent.state_dir / "identity_key")
    sock, rest = upgrade(relay, "/agent/connect")
    server = ServerFrames(sock, rest)
    opcode, challenge = server.next()
    assert opcode == TEXT, challenge
    auth = protocol.answer_challenge(challenge.decode(), agent.agent_id, key,
                                     pem_fingerprint(relay.data_dir / "tls.crt"), "t")
    sock.sendall(client_frame(TEXT, auth.encode()))
    opcode, welcome = server.next()
    assert json.loads(welcome)["type"] == "welcome", welcome
    return sock, server


@pytest.fixture
def agent(tmp_path: Path, relay: RelayProcess) -> AgentProcess:
    agent = AgentProcess(tmp_path, "framed")
    assert agent.enroll(relay.token()).returncode == 0
    return agent


def test_a_real_agent_key_on_raw_sockets(relay: RelayProcess, agent: AgentProcess) -> None:
    """One relay, four sockets: a fragmented heartbeat (with a ping between its
    fragments) is answered; a close with code 1005 is failed with 1002; a heartbeat
    and a bad frame in one TLS record: the heartbeat is answered, then 1007; the
    ``auth`` and a bad frame in one record: the welcome comes, then 1002."""
    hb = protocol.encode("hb", stats={"cpu_pct": 1.5}, ack=True).encode()
    sock, server = authenticated(relay, agent)
    try:
        sock.sendall(client_frame(TEXT, hb[:5], fin=False))
        sock.sendall(client_frame(PING, b"between") + client_frame(CONT, hb[5:9], fin=False))
        sock.sendall(client_frame(CONT, hb[9:]))
        assert server.next() == (wsframes.OP_PONG, b"between")
        opcode, ack = server.next()
        assert opcode == TEXT and json.loads(ack)["type"] == "hb_ack"
        sock.sendall(client_frame(CLOSE, struct.pack("!H", 1005)))
        assert server.close_code() == 1002
    finally:
        sock.close()

    sock, server = authenticated(relay, agent)
    try:
        sock.sendall(client_frame(TEXT, hb) + client_frame(TEXT, b'{"v":1,"type":"hb"\xff}'))
        opcode, ack = server.next()
        assert opcode == TEXT and json.loads(ack)["type"] == "hb_ack"
        assert server.close_code() == 1007
    finally:
        sock.close()

    key = keys.load_private(agent.state_dir / "identity_key")
    sock, rest = upgrade(relay, "/agent/connect")
    try:
        server = ServerFrames(sock, rest)
        _, challenge = server.next()
        auth = protocol.answer_challenge(challenge.decode(), agent.agent_id, key,
                                         pem_fingerprint(relay.data_dir / "tls.crt"), "t")
        sock.sendall(client_frame(TEXT, auth.encode()) + client_frame(0x3, b"?"))
        opcode, welcome = server.next()
        assert opcode == TEXT and json.loads(welcome)["type"] == "welcome"
        assert server.close_code() == 1002
    finally:
        sock.close()

    assert relay.healthy()
    refused = wait_for(lambda: [e for e in audit_actions(relay)
                                if e["action"] == "agent.protocol_error"
                                and e["details"].get("reason") == "websocket_frame"], 10,
                       "the frame-level refusals audited")
    # The last one came before the agent was authenticated: a stranger's, then.
    me = f"agent:{agent.agent_id}"
    assert sorted((e["details"]["close_code"], e["actor"], e["target"]) for e in refused) == [
        (1002, me, me), (1002, "anonymous@127.0.0.1", ""), (1007, me, me)]


@pytest.mark.parametrize(("path", "limit"), [
    ("/agent/enroll", ws_limits.FIRST_MESSAGE_LIMITS["/agent/enroll"]),
    ("/agent/join", ws_limits.FIRST_MESSAGE_LIMITS["/agent/join"]),
    ("/agent/tunnel/ss_abcdefghijkl", ws_limits.FIRST_MESSAGE_LIMITS["/agent/tunnel/"]),
])
def test_pre_auth_sockets_refuse_a_message_past_its_schema_at_the_header(
        relay: RelayProcess, path: str, limit: int) -> None:
    """Only the header of a message one byte too long is sent, in two fragments: the
    relay refuses at the second header with 1009 (it never waits for the payload)."""
    sock, rest = upgrade(relay, path,
                         extra=f"Sec-WebSocket-Extensions: {ws_limits.MessageSizeGuard.name}\r\n")
    try:
        sock.sendall(client_frame(TEXT, b"{" * 100, fin=False)
                     + client_frame(CONT, b"", length=limit - 99)[:14])
        assert ServerFrames(sock, rest).close_code() == 1009
    finally:
        sock.close()
    # A message within the limit on the same kind of socket is read (and refused by the
    # endpoint for what it says, not for its size).
    sock, rest = upgrade(relay, path)
    try:
        sock.sendall(client_frame(TEXT, b"{" * 100, fin=False)
                     + client_frame(CONT, b"}" * (limit - 100)))
        assert ServerFrames(sock, rest).close_code() in (4400, 4401, 4408)
    finally:
        sock.close()
    assert relay.healthy()


def test_a_frame_the_full_stack_refuses_gets_its_close_code_and_is_audited(
        relay: RelayProcess) -> None:
    """wsproto refused such frames as if the peer had closed: uvicorn hung up with no
    close frame and no audit. Now the client is told why, and the trail says so."""
    for frame, code in ((client_frame(TEXT, b"{\xff}"), 1007),
                        (client_frame(TEXT, b"{}", rsv=0x20), 1002),
                        (client_frame(CLOSE, struct.pack("!H", 2999)), 1002)):
        sock, rest = upgrade(relay, "/agent/join")
        try:
            sock.sendall(frame)
            assert ServerFrames(sock, rest).close_code() == code
        finally:
            sock.close()
    assert relay.healthy()
    refused = wait_for(lambda: [e for e in audit_actions(relay)
                                if e["action"] == "agent.protocol_error"
                                and e["target"] == "/agent/join"], 10, "the audit")
    assert sorted(e["details"]["close_code"] for e in refused) == [1002, 1002, 1007]
    assert {e["actor"] for e in refused} == {"anonymous@127.0.0.1"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_300_never_finished_oversized_enrollments_cost_next_to_nothing(
        relay: RelayProcess) -> None:
    """Each socket declares a 1 MiB message and sends 128 KiB of it (before, the relay
    buffered all it got, for every socket: 10 MiB for 60 of them). Now each is refused
    with 1009 at the header, the relay's memory barely moves, and the refusals are
    audited, aggregated per address. The sockets come from 30 loopback addresses, 10
    each, all held open until the end (opened by four threads: TLS handshakes are most
    of this test's time)."""
    from concurrent.futures import ThreadPoolExecutor

    assert relay.proc is not None
    # Binary: text would be refused as soon as its (masked, random) bytes are not UTF-8.
    start = client_frame(BINARY, b"", length=1 << 20)[:14]
    for _ in range(5):  # warm up: TLS, the upgrade path, the audit
        sock, _ = upgrade(relay, "/agent/enroll")
        sock.sendall(start)
        sock.close()
    before = rss_kib(relay.proc.pid)
    payload = os.urandom(128 * 1024)

    def never_finished(i: int) -> tuple[ssl.SSLSocket, bytes]:
        sock, rest = upgrade(relay, "/agent/enroll", source=f"127.0.0.{2 + i % 30}")
        try:
            sock.sendall(start + payload)
        except OSError:
            pass  # the relay refused at the header and hung up
        return sock, rest

    with ThreadPoolExecutor(4) as pool:
        held = list(pool.map(never_finished, range(300)))
    try:
        grown = rss_kib(relay.proc.pid) - before
        codes = [ServerFrames(sock, rest).close_code() for sock, rest in held]
    finally:
        for sock, _ in held:
            sock.close()
    assert codes == [1009] * 300
    assert grown < 6 * 1024, f"the relay grew by {grown} KiB"
    assert relay.healthy()
    relay.stop()  # the aggregated summaries are written at the latest on a clean stop
    events = [e for e in audit_actions(relay) if e["action"] == "agent.protocol_error"
              and e["target"] == "/agent/enroll"]
    total = sum(e["details"].get("count", 1) if e["details"].get("aggregated") else 1
                for e in events)
    assert total == 305 and len(events) < 305
    assert {e["details"]["close_code"] for e in events if not e["details"].get("aggregated")
            } == {1009}


def test_the_documented_limits_are_the_computed_ones() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "protocol.md").read_text()
    for limit in [*ws_limits.FIRST_MESSAGE_LIMITS.values(), protocol.MAX_FRAME_BYTES]:
        assert f"{limit:,} bytes" in doc, limit
