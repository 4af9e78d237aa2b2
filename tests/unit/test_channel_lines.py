"""Whole lines from a real asyncssh channel with the relay's window
(relay/capabilities/lines.py): asyncssh's own ``readline`` hands back a part of a line
longer than the window as if it were whole, the line reader does not."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncssh
import pytest

from backline.common.wstunnel import SSH_WINDOW
from backline.relay.capabilities.lines import LineReader, LineTooLong

LONG = b"x" * (SSH_WINDOW + 200 * 1024) + b"\n"  # 712 KiB: past the window, under 1 MiB


class _Open(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: a loopback test server


@asynccontextmanager
async def channel(payload: bytes) -> AsyncIterator[asyncssh.SSHReader[bytes]]:
    """An in-process SSH server on loopback whose one session writes ``payload`` and
    exits; the client's stdout, opened with the relay's window."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    async def session(process: asyncssh.SSHServerProcess[bytes]) -> None:
        process.stdout.write(payload)
        await process.stdout.drain()
        process.exit(0)

    server = await asyncssh.create_server(
        _Open, "127.0.0.1", 0, server_host_keys=[host_key], process_factory=session,
        encoding=None)
    port = server.sockets[0].getsockname()[1]
    try:
        async with asyncssh.connect("127.0.0.1", port, known_hosts=None, username="t",
                                    client_keys=None) as conn:
            proc = await conn.create_process(encoding=None, window=SSH_WINDOW)
            yield proc.stdout
    finally:
        server.close()
        await server.wait_closed()


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


def test_asyncssh_readline_splits_a_line_longer_than_the_window() -> None:
    """The cause, pinned: if asyncssh ever stops doing this, the reader is still right."""
    async def test() -> None:
        async with channel(LONG + b"ok\n") as out:
            first = await out.readline()
            assert len(first) < len(LONG) and not first.endswith(b"\n")
    run(test)


def test_the_reader_returns_the_long_line_whole_then_the_next() -> None:
    async def test() -> None:
        async with channel(LONG + b"ok\n" + b"tail") as out:
            reader = LineReader(out, 1024 * 1024)
            assert await reader.readline() == LONG
            assert await reader.readline() == b"ok\n"
            assert await reader.readline() == b"tail"  # the last, without its newline
            assert await reader.readline() == b""
    run(test)


def test_a_line_over_the_limit_is_refused_before_it_is_read_whole() -> None:
    async def test() -> None:
        async with channel(b"x" * (3 * 1024 * 1024) + b"\n") as out:
            reader = LineReader(out, 64 * 1024)
            with pytest.raises(LineTooLong) as err:
                await reader.readline()
            assert 64 * 1024 < err.value.size < 1024 * 1024
    run(test)


class Chunks:
    """A stream of given reads (the shapes a channel can deliver)."""

    def __init__(self, *parts: bytes) -> None:
        self.parts = list(parts)

    async def read(self, n: int = -1) -> bytes:
        await asyncio.sleep(0)
        return self.parts.pop(0) if self.parts else b""


@pytest.mark.parametrize("parts", [
    (b"a\nb", b"c\n\nd\n"),
    (b"a", b"\n", b"bc\n", b"\n", b"d\n"),
    (b"a\nbc\n\nd\n",),
])
def test_lines_are_the_same_however_the_bytes_arrive(parts: tuple[bytes, ...]) -> None:
    async def test() -> None:
        reader, got = LineReader(Chunks(*parts), 16), []
        while line := await reader.readline():
            got.append(line)
        assert got == [b"a\n", b"bc\n", b"\n", b"d\n"]
    run(test)


def test_a_cancelled_read_loses_nothing() -> None:
    async def test() -> None:
        gate = asyncio.Event()

        class Slow(Chunks):
            async def read(self, n: int = -1) -> bytes:
                if len(self.parts) == 1:
                    await gate.wait()
                return await super().read(n)

        reader = LineReader(Slow(b"hel", b"lo\n"), 16)
        pending = asyncio.ensure_future(reader.readline())
        await asyncio.sleep(0.01)
        pending.cancel()
        gate.set()
        assert await reader.readline() == b"hello\n"
    run(test)


def test_a_whole_line_over_the_limit_in_one_read_is_refused() -> None:
    async def test() -> None:
        reader = LineReader(Chunks(b"x" * 20 + b"\nok\n"), 16)
        with pytest.raises(LineTooLong):
            await reader.readline()
        assert await reader.readline() == b"ok\n"
    run(test)
