"""The WebSocket tunnel transport: ordered, chunked to 64 KiB, back-pressured, and
good enough for asyncssh to move megabytes through with bounded buffers."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Coroutine
from typing import Any

import asyncssh
import pytest

from backline.common.wstunnel import (
    HIGH_WATER,
    MAX_FRAME,
    TunnelError,
    TunnelTransport,
    WebSocketTunnel,
)


def run_async(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop (no asyncio plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 120))

    return wrapper


class MemPipe:
    """One end of an in-memory WebSocket: frames through queues, optionally gated."""

    def __init__(self, inbox: asyncio.Queue[Any], outbox: asyncio.Queue[Any]) -> None:
        self.inbox = inbox
        self.outbox = outbox
        self.gate = asyncio.Event()
        self.gate.set()
        self.sent: list[bytes] = []
        self.closed_with: int | None = None

    async def send(self, data: bytes) -> None:
        await self.gate.wait()
        self.sent.append(data)
        await self.outbox.put(data)

    async def recv(self) -> bytes | None:
        item = await self.inbox.get()
        if isinstance(item, Exception):
            raise item
        return item

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed_with is None:
            self.closed_with = code
            await self.outbox.put(None)

    @property
    def close_code(self) -> int | None:
        return self.closed_with


def pipe_pair() -> tuple[MemPipe, MemPipe]:
    a: asyncio.Queue[Any] = asyncio.Queue()
    b: asyncio.Queue[Any] = asyncio.Queue()
    return MemPipe(a, b), MemPipe(b, a)


class Recorder(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.events: list[str] = []
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.events.append("made")

    def data_received(self, data: bytes) -> None:
        self.data.extend(data)

    def eof_received(self) -> bool:
        self.events.append("eof")
        return False

    def pause_writing(self) -> None:
        self.events.append("pause")

    def resume_writing(self) -> None:
        self.events.append("resume")

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def _transport(pipe: MemPipe, **kw: Any) -> tuple[TunnelTransport, Recorder]:
    proto = Recorder()
    transport = TunnelTransport(pipe, proto, **kw)
    proto.connection_made(transport)
    transport.start()
    return transport, proto


@run_async
async def test_writes_stay_in_order_in_frames_of_at_most_64k() -> None:
    mine, _theirs = pipe_pair()
    transport, _ = await _transport(mine)
    pieces = [os.urandom(n) for n in (1, 70_000, 5, 65_536, 200_000, 3)]
    for piece in pieces:
        transport.write(piece)
    transport.close()
    await asyncio.wait_for(transport.closed.wait(), 5)
    assert b"".join(mine.sent) == b"".join(pieces)
    assert max(len(f) for f in mine.sent) <= MAX_FRAME
    assert mine.closed_with == 1000


@run_async
async def test_back_pressure_pauses_and_resumes_the_protocol() -> None:
    mine, _ = pipe_pair()
    mine.gate.clear()  # a peer that does not read
    transport, proto = await _transport(mine)
    transport.write(b"x" * (HIGH_WATER // 2))
    assert proto.events == ["made"]
    transport.write(b"x" * HIGH_WATER)
    assert proto.events == ["made", "pause"]
    transport.write(b"x" * 10)  # still paused: no second pause
    assert proto.events.count("pause") == 1
    await asyncio.sleep(0.01)
    assert transport.get_write_buffer_size() > HIGH_WATER - MAX_FRAME  # nothing moved
    mine.gate.set()
    for _ in range(100):
        if "resume" in proto.events and not transport.get_write_buffer_size():
            break
        await asyncio.sleep(0.01)
    assert proto.events == ["made", "pause", "resume"]
    assert sum(map(len, mine.sent)) == HIGH_WATER // 2 + HIGH_WATER + 10


@run_async
async def test_peer_close_reports_eof_then_loss_once() -> None:
    mine, theirs = pipe_pair()
    transport, proto = await _transport(mine)
    await theirs.send(b"hello")
    await theirs.close()
    await asyncio.wait_for(transport.closed.wait(), 5)
    assert bytes(proto.data) == b"hello"
    assert proto.events == ["made", "eof"]
    assert proto.lost == [None]
    transport.abort()  # after the fact: harmless
    await asyncio.sleep(0.01)
    assert proto.lost == [None]


@run_async
async def test_text_frame_breaks_the_tunnel_cleanly() -> None:
    mine, _theirs = pipe_pair()
    transport, proto = await _transport(mine)
    await mine.inbox.put(TunnelError("text frame inside an SSH tunnel"))
    await asyncio.wait_for(transport.closed.wait(), 5)
    assert len(proto.lost) == 1 and isinstance(proto.lost[0], TunnelError)
    assert mine.closed_with == 4400


@run_async
async def test_abort_still_sends_what_was_written_like_a_socket() -> None:
    mine, _ = pipe_pair()
    transport, proto = await _transport(mine)
    transport.write(b"DISCONNECT")  # asyncssh: send_disconnect(), then abort()
    transport.abort()
    transport.write(b"late")  # refused after abort
    await asyncio.wait_for(transport.closed.wait(), 5)
    assert mine.sent == [b"DISCONNECT"] and proto.lost == [None]


@run_async
async def test_abort_gives_up_on_a_peer_that_never_reads() -> None:
    import backline.common.wstunnel as wstunnel

    mine, _ = pipe_pair()
    mine.gate.clear()
    transport, proto = await _transport(mine)
    transport.write(b"y" * 1000)
    started = asyncio.get_running_loop().time()
    transport.abort()
    await asyncio.wait_for(transport.closed.wait(), wstunnel.ABORT_FLUSH_S + 3)
    assert asyncio.get_running_loop().time() - started >= wstunnel.ABORT_FLUSH_S - 0.1
    assert proto.lost == [None] and transport.get_write_buffer_size() == 0


def test_frame_limit_cannot_exceed_64k() -> None:
    with pytest.raises(ValueError):
        TunnelTransport(pipe_pair()[0], Recorder(), max_frame=MAX_FRAME + 1)


class Echo(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False


@run_async
async def test_ssh_moves_megabytes_through_with_bounded_buffers() -> None:
    """SSH over the tunnel end to end (no auth, in memory): 8 MiB each way intact, with
    the tunnel's buffer bounded.

    asyncssh 2.24's connection ignores ``pause_writing`` (a documented no-op), so what
    bounds the bytes queued in a tunnel is the SSH channel window the *receiver*
    advertises: the sender may not have more than that in flight. Relay and agent set
    it explicitly (``SSH_WINDOW``); here it is 256 KiB."""
    mine, theirs = pipe_pair()
    high = 128 * 1024
    server_tunnel = WebSocketTunnel(mine, high_water=high, low_water=high // 4)
    client_tunnel = WebSocketTunnel(theirs, high_water=high, low_water=high // 4)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    window = 256 * 1024
    peak = 0

    async def handler(process: asyncssh.SSHServerProcess[bytes]) -> None:
        while True:
            data = await process.stdin.read(65536)
            if not data:
                break
            process.stdout.write(data)
            await process.stdout.drain()
        process.exit(0)

    async def watch() -> None:
        nonlocal peak
        while True:
            for t in (server_tunnel.transport, client_tunnel.transport):
                if t is not None:
                    peak = max(peak, t.get_write_buffer_size())
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    server = asyncio.ensure_future(asyncssh.connect_reverse(
        tunnel=server_tunnel, server_host_keys=[host_key], server_factory=Echo,
        process_factory=handler, encoding=None, config=None, gss_host=None, window=window))
    async with asyncssh.connect("x", tunnel=client_tunnel, known_hosts=None, config=None,
                                username="u", agent_path=None, client_keys=[],
                                gss_host=None, window=window) as conn:
        await server
        payload = os.urandom(8 * 1024 * 1024)
        proc = await conn.create_process(encoding=None)

        async def feed() -> None:
            proc.stdin.write(payload)
            await proc.stdin.drain()
            proc.stdin.write_eof()

        feeder = asyncio.create_task(feed())
        echoed = await asyncio.wait_for(proc.stdout.read(), 60)
        await feeder
    watcher.cancel()
    assert echoed == payload
    assert peak <= window + 2 * MAX_FRAME, peak
    assert max(len(f) for f in mine.sent + theirs.sent) <= MAX_FRAME
