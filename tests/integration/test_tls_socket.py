"""TLS run by OpenSSL on the socket (relay/net/tls_socket.py), on both event loops, over
real loopback sockets: data both ways with flow control, a clean close_notify, and
the hostile cases — a client that never finishes its handshake, one that sends
garbage, one that vanishes mid-transfer, one that never reads — each ending that
connection only, with the listener still serving."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

import pytest

from backline.relay.datadir import write_self_signed
from backline.relay.net import tls_socket
from backline.relay.net.listening import bind
from backline.relay.net.quiet_readers import QuietReaders
from backline.relay.net.tls_socket import TLSListener
from tests.harness import run_on_loop

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    root = tmp_path_factory.mktemp("tls")
    cert, key = root / "cert.pem", root / "key.pem"
    write_self_signed(cert, key, ["127.0.0.1"])
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    server.num_tickets = 0
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cert)
    return server, client


class Recorder(asyncio.Protocol):
    """Echoes what it gets (upper-cased), keeps everything, pauses when told to."""

    instances: list[Recorder] = []

    def __init__(self, echo: bool = True) -> None:
        self.echo = echo
        self.received = bytearray()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[BaseException | None] = (
            asyncio.get_running_loop().create_future())
        self.paused_writing = 0
        self.resumed_writing = 0
        Recorder.instances.append(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data.upper())

    def pause_writing(self) -> None:
        self.paused_writing += 1

    def resume_writing(self) -> None:
        self.resumed_writing += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def listen(server_ctx: ssl.SSLContext, factory: Callable[[], asyncio.Protocol],
                 **kw: Any) -> tuple[TLSListener, int]:
    socks = bind("127.0.0.1", 0, 64)
    listener = TLSListener(asyncio.get_running_loop(), socks, server_ctx, factory, **kw)
    return listener, socks[0].getsockname()[1]


async def connect_and_send(port: int, client_ctx: ssl.SSLContext, data: bytes
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Recorder]:
    """A TLS client that sends ``data``; returns once the relay side has all of it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                   server_hostname="127.0.0.1")
    writer.write(data)
    for _ in range(500):
        if Recorder.instances and len(Recorder.instances[-1].received) >= len(data):
            break
        await asyncio.sleep(0.01)
    assert bytes(Recorder.instances[-1].received) == data
    return reader, writer, Recorder.instances[-1]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_echo_extra_info_and_clean_close(contexts: tuple[ssl.SSLContext, ssl.SSLContext],
                                         loop_name: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, Recorder)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="127.0.0.1")
        writer.write(b"hello")
        assert await reader.readexactly(5) == b"HELLO"
        proto = Recorder.instances[0]
        transport = proto.transport
        assert transport is not None
        assert transport.get_extra_info("sslcontext") is server_ctx
        assert transport.get_extra_info("peername") == writer.get_extra_info("sockname")
        assert transport.get_extra_info("cipher") is not None
        assert not transport.can_write_eof()
        transport.close()
        assert transport.is_closing()
        assert await reader.read() == b""  # close_notify, not a ragged end
        assert await asyncio.wait_for(proto.lost, 5) is None
        writer.close()
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_megabyte_each_way_with_flow_control(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    server_ctx, client_ctx = contexts
    blob = bytes(range(256)) * 4096  # 1 MiB

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, lambda: Recorder(echo=False))
        reader, writer, proto = await connect_and_send(port, client_ctx, blob)
        transport = proto.transport
        assert transport is not None
        # The client reads nothing yet: the server's buffer must fill and say so.
        for _ in range(16):
            transport.write(blob)
        assert proto.paused_writing == 1
        assert transport.get_write_buffer_size() > 0
        got = await reader.readexactly(16 * len(blob))
        assert hashlib.sha256(got).digest() == hashlib.sha256(blob * 16).digest()
        for _ in range(100):
            if proto.resumed_writing:
                break
            await asyncio.sleep(0.01)
        assert proto.resumed_writing == 1
        assert transport.get_write_buffer_size() == 0
        # Reading paused: nothing is delivered until it resumes.
        transport.pause_reading()
        before = len(proto.received)
        writer.write(b"later")
        await asyncio.sleep(0.2)
        assert len(proto.received) == before
        transport.resume_reading()
        for _ in range(100):
            if len(proto.received) == before + 5:
                break
            await asyncio.sleep(0.01)
        assert bytes(proto.received[before:]) == b"later"
        writer.close()
        assert await asyncio.wait_for(proto.lost, 5) is None  # the client's close_notify
        listener.close()

    run_on_loop(loop_name, main)


async def _served_after(listener_port: int, client_ctx: ssl.SSLContext) -> None:
    """A new client still gets a handshake and its bytes through."""
    _, writer = await asyncio.open_connection("127.0.0.1", listener_port, ssl=client_ctx,
                                              server_hostname="127.0.0.1")
    writer.write(b"still there?")
    for _ in range(200):
        if Recorder.instances and Recorder.instances[-1].received == b"still there?":
            break
        await asyncio.sleep(0.01)
    assert Recorder.instances[-1].received == b"still there?"
    writer.close()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_silent_and_garbage_clients_are_dropped(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, Recorder, handshake_timeout=0.3)
        loop = asyncio.get_running_loop()
        silent = socket.create_connection(("127.0.0.1", port))
        garbage = socket.create_connection(("127.0.0.1", port))
        garbage.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plain HTTP to a TLS port
        for sock in (silent, garbage):
            sock.setblocking(False)
            # Both are closed by the relay: the read ends (EOF or reset), never hangs.
            try:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
            except ConnectionResetError:
                data = b""
            assert b"HTTP" not in data
            sock.close()
        assert not listener.handshakes
        await _served_after(port, client_ctx)
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_client_vanishing_mid_transfer(contexts: tuple[ssl.SSLContext, ssl.SSLContext],
                                       loop_name: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, lambda: Recorder(echo=False))
        _, writer, proto = await connect_and_send(port, client_ctx, b"x" * 1000)
        assert proto.transport is not None
        proto.transport.write(b"y" * (4 << 20))  # more than the socket buffers hold
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST: gone without close_notify
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, OSError | ssl.SSLError)
        assert proto.transport.is_closing()
        proto.transport.write(b"ignored after the end")  # no error, nothing sent
        await _served_after(port, client_ctx)
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_client_hanging_up_without_close_notify_is_an_end_of_stream(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    """A TCP FIN without TLS close_notify (a "ragged" end, common from clients) is the
    end of the stream, as ``ssl.SSLSocket`` reads it: ``eof_received``, then the end
    of the connection with no error."""
    server_ctx, client_ctx = contexts

    class EofRecorder(Recorder):
        eof = False

        def eof_received(self) -> bool | None:
            self.eof = True
            return None

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, lambda: EofRecorder(echo=False))
        _, writer, proto = await connect_and_send(port, client_ctx, b"last words")
        fd = os.dup(writer.get_extra_info("socket").fileno())
        with socket.socket(fileno=fd) as raw:
            raw.shutdown(socket.SHUT_WR)  # FIN under the TLS layer: no close_notify
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert isinstance(proto, EofRecorder) and proto.eof
        writer.transport.abort()
        await _served_after(port, client_ctx)
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_client_resetting_the_connection_is_a_failure_not_an_end_of_stream(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    """A TCP reset (RST) while the relay only reads: OpenSSL 3 reports it as the same
    "unexpected EOF" as a FIN, but the protocol must hear ``connection_lost(exc)``, not
    ``eof_received`` and a clean end (it would take a cut request or message for a
    whole one)."""
    server_ctx, client_ctx = contexts

    class EofRecorder(Recorder):
        eof = False

        def eof_received(self) -> bool | None:
            self.eof = True
            return None

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, lambda: EofRecorder(echo=False))
        _, writer, proto = await connect_and_send(port, client_ctx, b"half a message")
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()  # RST, nothing in flight from the relay
        exc = await asyncio.wait_for(proto.lost, 5)
        assert isinstance(exc, ConnectionResetError), exc
        assert isinstance(proto, EofRecorder) and not proto.eof
        await _served_after(port, client_ctx)
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_quiet_tls_transport_still_echoes_pauses_and_closes(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, Recorder)
        reader, writer, proto = await connect_and_send(port, client_ctx, b"loud")
        assert await reader.readexactly(4) == b"LOUD"
        transport = proto.transport
        assert transport is not None
        transport.set_quiet(True)  # type: ignore[attr-defined]
        quiet = QuietReaders.of(asyncio.get_running_loop())
        assert len(quiet) == 1
        writer.write(b"soft")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"SOFT"
        transport.pause_reading()
        assert len(quiet) == 0  # a paused transport is not watched at all
        writer.write(b"later")
        await asyncio.sleep(0.1)
        assert bytes(proto.received) == b"loudsoft"
        transport.resume_reading()
        assert await asyncio.wait_for(reader.readexactly(5), 5) == b"LATER"
        assert len(quiet) == 1
        transport.close()
        assert await reader.read() == b""
        assert await asyncio.wait_for(proto.lost, 5) is None
        assert len(quiet) == 0
        writer.close()
        listener.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_close_gives_up_on_a_peer_that_never_reads(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    server_ctx, client_ctx = contexts
    monkeypatch.setattr(tls_socket, "CLOSE_TIMEOUT_S", 0.3)

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, lambda: Recorder(echo=False))
        _, writer, proto = await connect_and_send(port, client_ctx, b"hi")
        assert proto.transport is not None
        writer.transport.pause_reading()  # the client stops reading for good
        proto.transport.write(b"z" * (16 << 20))
        proto.transport.close()
        writer.write(b"after the close")  # a closing transport reads nothing more
        await asyncio.sleep(0.1)
        assert proto.received == b"hi"
        assert await asyncio.wait_for(proto.lost, 5) is None
        writer.close()
        listener.close()

    run_on_loop(loop_name, main)


def test_bind_refuses_a_port_in_use() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(OSError):
            bind("127.0.0.1", taken.getsockname()[1], 16)
    finally:
        taken.close()


class Refuses(Recorder):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        raise RuntimeError("no")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_protocol_failing_to_start_is_told_the_connection_is_over(
        contexts: tuple[ssl.SSLContext, ssl.SSLContext], loop_name: str) -> None:
    server_ctx, client_ctx = contexts

    async def main() -> None:
        Recorder.instances.clear()
        listener, port = await listen(server_ctx, Refuses)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx,
                                                       server_hostname="127.0.0.1")
        for _ in range(200):
            if Recorder.instances and Recorder.instances[0].lost.done():
                break
            await asyncio.sleep(0.01)
        assert isinstance(Recorder.instances[0].lost.result(), RuntimeError)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        listener.close()

    run_on_loop(loop_name, main)
