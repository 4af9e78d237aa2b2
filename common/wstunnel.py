"""A WebSocket as an asyncio transport, so asyncssh can run SSH over it.

asyncssh accepts ``tunnel=`` any object whose ``create_connection(factory, host,
port)`` returns ``(transport, protocol)``. :class:`WebSocketTunnel` is that object
for one already-open WebSocket: the agent's side is a ``websockets`` client
connection, the relay's a Starlette ``WebSocket``; :func:`pipe_for` wraps either in
the three calls the transport needs (send bytes, receive bytes, close).

Why a transport of our own rather than a pair of copy loops: SSH writes many small
packets from synchronous code. The transport keeps them in one ordered buffer that a
single writer task drains in frames of at most :data:`MAX_FRAME` bytes, and it
applies back-pressure the asyncio way: past ``high_water`` buffered bytes it calls
the protocol's ``pause_writing()``, below ``low_water`` ``resume_writing()``, while
the WebSocket's own send waits for the socket to drain.

One caveat, measured in tests/unit/test_wstunnel.py: asyncssh 2.24's connection object
treats ``pause_writing()`` as a no-op. What really bounds the bytes queued in a
tunnel is SSH's flow control: a sender may not have more in flight on a channel than
the window its peer advertised. Both ends therefore set the window explicitly
(:data:`SSH_WINDOW`), so a slow reader costs at most about one window per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

log = logging.getLogger("backline.wstunnel")

MAX_FRAME = 64 * 1024
SSH_WINDOW = 512 * 1024  # per SSH channel, both directions (see the caveat above)
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
ABORT_FLUSH_S = 2.0

# Close codes a tunnel uses (4000-4999 are the application's).
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL = 4400


class TunnelError(Exception):
    """The peer broke the tunnel's rules (a text frame once SSH has started)."""


class Pipe(Protocol):
    """The smallest WebSocket surface a tunnel needs."""

    async def send(self, data: bytes) -> None: ...

    async def recv(self) -> bytes | None:
        """The next binary frame, or ``None`` once the peer has closed."""

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None: ...

    @property
    def close_code(self) -> int | None:
        """The close code the peer sent, once closed."""


class WebsocketsPipe:
    """A ``websockets.asyncio`` connection (the agent's side)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._close_code: int | None = None

    async def send(self, data: bytes) -> None:
        await self.ws.send(data)  # awaits the socket's drain: back-pressure

    async def recv(self) -> bytes | None:
        try:
            frame = await self.ws.recv()
        except ConnectionClosed as exc:
            self._close_code = exc.rcvd.code if exc.rcvd is not None else None
            return None
        if isinstance(frame, str):
            raise TunnelError("text frame inside an SSH tunnel")
        return bytes(frame)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        await self.ws.close(code, reason)

    @property
    def close_code(self) -> int | None:
        return self._close_code


class StarlettePipe:
    """A Starlette/ASGI ``WebSocket`` (the relay's side), used duck-typed so the agent
    never needs Starlette installed."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self._close_code: int | None = None
        self._closed = False

    async def send(self, data: bytes) -> None:
        await self.ws.send_bytes(data)  # uvicorn waits while its transport is paused

    async def recv(self) -> bytes | None:
        if self._closed:
            return None
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            self._closed = True
            self._close_code = message.get("code")
            return None
        data = message.get("bytes")
        if data is None:
            raise TunnelError("text frame inside an SSH tunnel")
        return bytes(data)

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # already gone is fine
            await self.ws.close(code, reason)

    @property
    def close_code(self) -> int | None:
        return self._close_code


def pipe_for(ws: Any) -> Pipe:
    """Wrap a Starlette WebSocket or a ``websockets`` connection."""
    if hasattr(ws, "send_bytes") and hasattr(ws, "receive"):
        return StarlettePipe(ws)
    return WebsocketsPipe(ws)


class TunnelTransport(asyncio.Transport):
    """An asyncio transport over a :class:`Pipe`: ordered, chunked, back-pressured."""

    def __init__(self, pipe: Pipe, protocol: asyncio.BaseProtocol,
                 extra: dict[str, Any] | None = None, high_water: int = HIGH_WATER,
                 low_water: int = LOW_WATER, max_frame: int = MAX_FRAME) -> None:
        super().__init__(extra)
        if not 0 < max_frame <= MAX_FRAME or not 0 <= low_water <= high_water:
            raise ValueError("need 0 < max_frame <= 64 KiB and low_water <= high_water")
        self._pipe = pipe
        self._protocol = protocol
        self._high = high_water
        self._low = low_water
        self._max_frame = max_frame
        self._buffer = bytearray()
        self._has_data = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._paused = False
        self._closing = False
        self._aborting = False
        self._finishing = False
        self._lost = False
        self._tasks: list[asyncio.Task[None]] = []
        self.closed = asyncio.Event()
        self.frames_sent = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.error: BaseException | None = None

    # --- life cycle ------------------------------------------------------------------

    def start(self) -> None:
        """Begin moving bytes; call after the protocol's ``connection_made``."""
        self._tasks = [asyncio.ensure_future(self._write_loop()),
                       asyncio.ensure_future(self._read_loop())]

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then close the WebSocket."""
        if self._closing:
            return
        self._closing = True
        self._has_data.set()  # the writer flushes, closes the pipe and reports the loss

    def abort(self) -> None:
        """Close at once: read nothing more, accept no more writes.

        What ``write()`` already accepted is still sent, within :data:`ABORT_FLUSH_S`:
        on a real socket those bytes would already be in the kernel's buffer, and
        asyncssh relies on that (it writes its DISCONNECT message, then aborts)."""
        if self._aborting:
            return
        self._aborting = True
        self._closing = True
        for task in self._tasks[1:]:  # the reader
            task.cancel()
        self._has_data.set()
        asyncio.get_running_loop().call_later(ABORT_FLUSH_S, self._hard_abort)
        if not self._tasks:  # never started
            self._hard_abort()

    def _hard_abort(self) -> None:
        if self.closed.is_set() or self._finishing:
            return
        self._buffer.clear()
        for task in self._tasks:
            task.cancel()
        self._tasks.append(asyncio.ensure_future(self._finish(None)))

    async def _finish(self, exc: BaseException | None, code: int = CLOSE_NORMAL) -> None:
        self._closing = True
        self._finishing = True
        if self.error is None:
            self.error = exc
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._pipe.close(code, "tunnel closed"), 5)
        self._connection_lost(exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.closed.set()

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = True
        try:
            self._protocol.connection_lost(exc if isinstance(exc, Exception) else None)
        except Exception:
            log.exception("protocol.connection_lost failed")

    # --- writing ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._buffer.extend(data)
        self._has_data.set()
        if not self._paused and len(self._buffer) > self._high:
            self._paused = True
            self._call_protocol("pause_writing")

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket tunnel has no half-close")

    def get_write_buffer_size(self) -> int:
        return len(self._buffer)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (self._low, self._high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def _call_protocol(self, name: str) -> None:
        try:
            getattr(self._protocol, name)()
        except Exception:
            log.exception("protocol.%s failed", name)

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._buffer:
                    if self._closing:
                        break
                    self._has_data.clear()
                    await self._has_data.wait()
                    continue
                chunk = bytes(self._buffer[: self._max_frame])
                del self._buffer[: len(chunk)]
                await self._pipe.send(chunk)
                self.frames_sent += 1
                self.bytes_sent += len(chunk)
                if self._paused and len(self._buffer) <= self._low:
                    self._paused = False
                    self._call_protocol("resume_writing")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the WebSocket went away under us
            await self._finish(exc)
            return
        await self._finish(None)

    # --- reading ---------------------------------------------------------------------

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    async def _read_loop(self) -> None:
        receive: Callable[[bytes], Any] = self._protocol.data_received  # type: ignore[attr-defined]
        try:
            while True:
                await self._reading.wait()
                data = await self._pipe.recv()
                if data is None:
                    break
                if data:
                    self.bytes_received += len(data)
                    receive(data)
        except asyncio.CancelledError:
            raise
        except TunnelError as exc:
            await self._finish(exc, CLOSE_PROTOCOL)
            return
        except Exception as exc:
            await self._finish(exc)
            return
        # The peer closed: tell the protocol, drop what we still meant to send.
        keep_open = False
        with contextlib.suppress(Exception):
            keep_open = bool(self._protocol.eof_received())  # type: ignore[attr-defined]
        if not keep_open:
            self._buffer.clear()
            self._closing = True
            await self._finish(None)


class WebSocketTunnel:
    """What asyncssh's ``tunnel=`` wants, for one open WebSocket.

    ``create_connection`` may be called once: one WebSocket carries one SSH connection.
    """

    def __init__(self, ws: Any, extra: dict[str, Any] | None = None,
                 high_water: int = HIGH_WATER, low_water: int = LOW_WATER,
                 max_frame: int = MAX_FRAME) -> None:
        self.pipe = ws if isinstance(ws, WebsocketsPipe | StarlettePipe) else pipe_for(ws)
        self.extra = extra or {}
        self.limits = (high_water, low_water, max_frame)
        self.transport: TunnelTransport | None = None
        self._made = asyncio.Event()

    async def create_connection(self, protocol_factory: Callable[[], Any], host: str = "",
                                port: int = 0) -> tuple[TunnelTransport, Any]:
        if self.transport is not None:
            raise RuntimeError("this WebSocket already carries a connection")
        protocol = protocol_factory()
        high, low, frame = self.limits
        self.transport = TunnelTransport(self.pipe, protocol, self.extra, high, low, frame)
        protocol.connection_made(self.transport)
        self.transport.start()
        self._made.set()
        return self.transport, protocol

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def wait_closed(self) -> None:
        """Until the tunnel's transport has closed (returns at once if it never opened
        and the pipe is gone)."""
        await self._made.wait()
        assert self.transport is not None
        await self.transport.closed.wait()

    @property
    def close_code(self) -> int | None:
        return self.pipe.close_code


async def run_until_closed(tunnel: WebSocketTunnel, stop: Awaitable[Any] | None = None) -> None:
    """Wait for the tunnel to close, or for ``stop`` (then close it)."""
    if stop is None:
        await tunnel.wait_closed()
        return
    closed = asyncio.ensure_future(tunnel.wait_closed())
    stopping = asyncio.ensure_future(stop)
    try:
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not closed.done():
            tunnel.close()
            closed.cancel()
