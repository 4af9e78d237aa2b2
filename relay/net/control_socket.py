"""Agents' control sockets served straight from the connection, not through ASGI.

uvicorn hands every WebSocket upgrade to the class named by its ``ws`` setting. This
one looks at the request first: a plain upgrade of ``/agent/connect`` without an
``Origin`` (what an agent sends) is answered here and served by :class:`LeanSocket`:
a :class:`~backline.relay.net.wsframes.FrameReader` and the endpoint's coroutine, and
nothing else per socket. Every other upgrade (browsers, other paths, anything odd) is
passed, bytes and all, to uvicorn's own wsproto protocol (with a message size limit per
path and refused frames audited: :mod:`backline.relay.net.ws_limits`) and the full
Starlette app, with its Origin checks and audit.

Why: at 10,000 idle agents, uvicorn's per-socket state (ASGI scope, a queue, two
events, the wsproto connection and the h11 one it keeps) was about 14 KiB of the
47 KiB each agent cost, and its per-frame layers most of the relay's own CPU
(docs/benchmarks.md, "Idle agents").

The endpoint (:func:`backline.relay.control.connect_endpoint`) is the same coroutine
for both paths: :class:`LeanSocket` offers the part of Starlette's ``WebSocket`` it
uses (``accept``, ``receive``, ``send_text``, ``close``, ``client``, ``app``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from starlette.websockets import WebSocketDisconnect

from backline.common import protocol as control_protocol
from backline.relay.net import ws_limits, wsframes

log = logging.getLogger("backline.relay.net.control_socket")

PATH = b"/agent/connect"
#: Messages read ahead of the endpoint before the socket stops reading (back-pressure).
READ_AHEAD = 8
#: How long to wait for the agent's answer to our close frame before hanging up.
CLOSE_WAIT_S = 2.0


def _loop() -> asyncio.AbstractEventLoop:
    """The running loop without ``asyncio.get_running_loop()``, which asks the kernel
    for the process id on every call (a system call per message at 10,000 agents)."""
    global _LOOP
    if _LOOP is None or _LOOP.is_closed():
        _LOOP = asyncio.get_running_loop()
    return _LOOP


_LOOP: asyncio.AbstractEventLoop | None = None


class Address(NamedTuple):
    host: str
    port: int


class _AppRef:
    """What ``ws.app`` must offer the endpoint: ``.state.relay``."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


class LeanSocket(asyncio.Protocol):
    """One agent's control socket after the upgrade: frames in, frames out."""

    __slots__ = (
        "_close_code",
        "_close_sent",
        "_connections",
        "_drain",
        "_failure",
        "_gone",
        "_inbox",
        "_paused_reading",
        "_reader",
        "_waiter",
        "_write_paused",
        "agent_id",
        "app",
        "client",
        "handler",
        "transport",
    )

    def __init__(self, transport: asyncio.Transport, client: Address, app: _AppRef,
                 connections: set[Any]) -> None:
        self.transport = transport
        self.client = client
        self.app = app
        # The first message is the agent's ``auth``, sent before it is known: sized to
        # that message's schema, like the other sockets strangers speak on.
        self._reader = wsframes.FrameReader(control_protocol.MAX_FRAME_BYTES,
                                            ws_limits.FIRST_MESSAGE_LIMITS[PATH.decode()])
        self._inbox: deque[str | bytes] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused_reading = False
        self._drain: asyncio.Future[None] | None = None
        self._close_sent = False
        self._gone = False
        self._close_code = 1006
        self._write_paused = False
        self._connections = connections
        #: A protocol error read after messages the endpoint has not taken yet: the
        #: connection fails once it has (:meth:`_protocol_error`).
        self._failure: wsframes.FrameError | None = None
        #: Set by the endpoint once the agent is authenticated (who a frame-level
        #: violation is audited as).
        self.agent_id: str | None = None
        #: Set by the endpoint once the agent is authenticated: each message is then
        #: handled right here, in the connection's callback, with no task switch.
        self.handler: Callable[[str | bytes], None] | None = None
        connections.add(self)

    # -- the part of Starlette's WebSocket the endpoint uses -----------------------

    async def accept(self) -> None:
        """The upgrade was answered before the endpoint started."""

    async def receive(self) -> dict[str, Any]:
        while not self._inbox:
            if self._failure is not None:
                self._fail()
            if self._gone or self._close_sent:
                return {"type": "websocket.disconnect", "code": self._close_code}
            self._waiter = _loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._inbox.popleft()
        if not self._inbox:
            self._inbox = None  # an idle socket keeps no empty deque
        if self._paused_reading and not self._gone and self._failure is None:
            self._paused_reading = False
            if not self._write_paused:
                self.transport.resume_reading()
        if isinstance(message, str):
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send_text(self, text: str) -> None:
        if self._gone or self._close_sent:
            raise WebSocketDisconnect(self._close_code)
        self.transport.write(wsframes.encode(wsframes.OP_TEXT, text.encode("utf-8")))
        if self._drain is not None:
            await asyncio.shield(self._drain)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self._send_close(code, reason or "")

    # -- for a handler running in the callbacks --------------------------------------

    def write_text(self, text: str) -> None:
        """Send now, without waiting: a peer that stops reading makes this socket stop
        reading too (see :meth:`pause_writing`), so what is queued stays bounded."""
        if not (self._gone or self._close_sent):
            self.transport.write(wsframes.encode(wsframes.OP_TEXT, text.encode("utf-8")))

    def take_pending(self) -> list[str | bytes]:
        """Messages that arrived before :attr:`handler` was set (a peer may send its
        next message in the same packet as the last one the endpoint read)."""
        pending = list(self._inbox or ())
        self._inbox = None
        if self._paused_reading and not self._gone and self._failure is None:
            self._paused_reading = False
            if not self._write_paused:
                self.transport.resume_reading()
        return pending

    def set_quiet(self, quiet: bool = True) -> None:
        """Whether this socket's reads share a timer's wake-ups with the other agents'
        (:mod:`backline.relay.net.quiet_readers`), where the transport can: for a socket
        that mostly idles, once authenticated; not while a ping waits for its pong."""
        set_quiet = getattr(self.transport, "set_quiet", None)
        if set_quiet is not None and not self._gone:
            set_quiet(quiet)

    def close_now(self, code: int, reason: str = "") -> None:
        self._send_close(code, reason)

    @property
    def done(self) -> bool:
        return self._gone or self._close_sent

    async def wait_closed(self) -> None:
        """Until the connection is lost or a close frame was sent."""
        if self._failure is not None and not self._inbox:
            self._fail()
        while not (self._gone or self._close_sent):
            self._waiter = _loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    # -- asyncio.Protocol ----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._gone:
            return
        reader = self._reader
        messages = reader.feed(data)
        for opcode, payload in messages:
            if opcode == wsframes.OP_TEXT or opcode == wsframes.OP_BINARY:
                if self._close_sent:
                    continue
                if self.handler is not None:
                    try:
                        self.handler(payload)  # type: ignore[arg-type]
                    except Exception:
                        log.exception("control message from %s failed", self.client.host)
                        self._send_close(1011, "internal error")
                    continue
                if self._inbox is None:
                    self._inbox = deque()
                self._inbox.append(payload)  # type: ignore[arg-type]
            elif opcode == wsframes.OP_PING:
                if not self._close_sent:
                    self.transport.write(wsframes.encode(wsframes.OP_PONG, payload))  # type: ignore[arg-type]
            elif opcode == wsframes.OP_CLOSE:
                code, _ = payload  # type: ignore[misc]
                self._close_code = code
                if not self._close_sent:
                    self._close_sent = True
                    # Echo the code (the reader only returns codes a peer may send),
                    # or nothing for a close that had none (1005).
                    self.transport.write(wsframes.close_frame(code)
                                         if code != wsframes.CLOSE_NO_STATUS
                                         else wsframes.encode(wsframes.OP_CLOSE, b""))
                self.transport.close()
                break
        if reader.error is not None:
            self._protocol_error(reader.error)
        if (self._inbox is not None and len(self._inbox) >= READ_AHEAD
                and not self._paused_reading and not self._gone):
            self._paused_reading = True
            if not self._write_paused:
                self.transport.pause_reading()
        if self._inbox or self._close_sent:
            # Only then has the waiting endpoint anything to do: a heartbeat handled
            # above must not cost a task step of its own.
            self._wake()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._connections.discard(self)
        self._wake()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def pause_writing(self) -> None:
        # The agent is not reading what we send: stop reading what it sends (each
        # heartbeat would queue an answer) until our buffer drains.
        if self._drain is None:
            self._drain = _loop().create_future()
        if not self._write_paused and not self._gone:
            self._write_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None
        if self._write_paused and not self._gone:
            self._write_paused = False
            if not self._paused_reading:
                self.transport.resume_reading()

    # -- uvicorn's shutdown hook ---------------------------------------------------

    def shutdown(self) -> None:
        """The relay is stopping: tell the agent (1012, service restart) and hang up."""
        if not self._close_sent and not self._gone:
            self._close_sent = True
            self._close_code = wsframes.CLOSE_SERVICE_RESTART
            self.transport.write(wsframes.close_frame(wsframes.CLOSE_SERVICE_RESTART,
                                                      "relay restarting"))
        self.transport.close()
        self._wake()

    # -- inside --------------------------------------------------------------------

    def _protocol_error(self, err: wsframes.FrameError) -> None:
        """The peer broke RFC 6455 (or the size limit): audit it, then fail the
        connection (section 7.1.7): at once, or, when messages read before the bad
        frame still wait for the endpoint, once it has taken them (so it can answer
        them), reading nothing more meanwhile and hanging up after ``CLOSE_WAIT_S``
        in any case."""
        host = self.client.host
        log.info("control socket from %s: %s (close %d)", host, err.reason, err.code)
        relay = getattr(getattr(self.app, "state", None), "relay", None)
        if relay is not None:
            agent = f"agent:{self.agent_id}" if self.agent_id else ""
            relay.record_flood(host, agent or f"anonymous@{host}", "agent.protocol_error",
                               agent, reason="websocket_frame", detail=err.reason,
                               close_code=err.code, address=host)
        self._failure = err
        if self._close_sent or not self._inbox:
            self._fail()
            return
        if not self._paused_reading and not self._gone:
            self._paused_reading = True
            if not self._write_paused:
                self.transport.pause_reading()
        _loop().call_later(CLOSE_WAIT_S, self._fail)

    def _fail(self) -> None:
        """Send the pending protocol error's close code and hang up without reading on
        (the stream is no longer in step, and a hostile peer gets no more work)."""
        err, self._failure = self._failure, None
        if err is None or self._gone:
            return
        self._send_close(err.code, err.reason)
        self.transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _send_close(self, code: int, reason: str) -> None:
        if self._close_sent or self._gone:
            return
        self._close_sent = True
        self._close_code = code
        self.transport.write(wsframes.close_frame(code, reason))
        # The agent answers with its own close frame; if it does not, hang up anyway.
        _loop().call_later(CLOSE_WAIT_S, self._hang_up)
        self._wake()

    def _hang_up(self) -> None:
        if not self._gone:
            self.transport.close()


class ControlSocketProtocol(asyncio.Protocol):
    """uvicorn's ``ws`` class: serves agents' control sockets lean, passes on the rest.

    ``app_ref`` (what the endpoint sees as ``ws.app``: the Starlette app's state) and
    ``endpoint`` are set on a subclass made by :func:`protocol_class`. Once a socket is
    handed on, nothing keeps this object: it costs nothing for the socket's life."""

    app_ref: _AppRef | None = None
    endpoint: Any = None
    #: What serves every other upgrade: uvicorn's wsproto protocol with per-path
    #: message limits (:mod:`backline.relay.net.ws_limits`).
    full_stack: type[ws_limits.LimitedWSProtocol] = ws_limits.LimitedWSProtocol

    def __init__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config
        self.server_state = server_state
        self.app_state = app_state
        self.transport: asyncio.Transport | None = None
        self.inner: asyncio.Protocol | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.data_received(data)
            return
        answer = self._lean_answer(data)
        transport = self.transport
        assert transport is not None
        if answer is None:
            self._pass_on(data)
            return
        peer = transport.get_extra_info("peername") or ("unknown", 0)
        sock = LeanSocket(transport, Address(str(peer[0]), int(peer[1])),
                          type(self).app_ref, self.server_state.connections)  # type: ignore[arg-type]
        transport.write(answer)
        self.inner = sock
        # uvicorn sets this object as the transport's protocol once we return; put
        # the socket itself there right after, so frames skip this object.
        asyncio.get_running_loop().call_soon(transport.set_protocol, sock)
        task = asyncio.get_running_loop().create_task(_run(type(self).endpoint, sock))
        self.server_state.tasks.add(task)
        task.add_done_callback(self.server_state.tasks.discard)

    def _lean_answer(self, data: bytes) -> bytes | None:
        if self.config.proxy_headers and self.config.forwarded_allow_ips:
            return None  # the client's address comes from the proxy: the full stack knows how
        head, _, rest = data.partition(b"\r\n\r\n")
        if rest:
            return None  # bytes after the request: let the full stack sort it out
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"GET" or parts[1].split(b"?", 1)[0] != PATH:
            return None
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return None
            headers.append((name.strip().lower(), value.strip()))
        return wsframes.handshake_response(headers)

    def _pass_on(self, data: bytes) -> None:
        inner = type(self).full_stack(config=self.config, server_state=self.server_state,
                                      app_state=self.app_state)
        inner.connection_made(self.transport)  # type: ignore[arg-type]
        inner.data_received(data)
        self.inner = inner
        transport = self.transport
        assert transport is not None
        asyncio.get_running_loop().call_soon(transport.set_protocol, inner)

    # Until the switch above happens, forward whatever else the transport says.
    def connection_lost(self, exc: Exception | None) -> None:
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()


async def _run(endpoint: Callable[[LeanSocket], Awaitable[None]], sock: LeanSocket) -> None:
    """The endpoint's coroutine for one socket (a module function, so the task holds
    only the socket)."""
    code = 1000
    try:
        await endpoint(sock)
    except Exception:
        log.exception("control socket endpoint failed")
        code = 1011
    finally:
        sock._fail()  # a protocol error still pending has its own close code
        sock._send_close(code, "")  # nothing if the endpoint already closed it


def protocol_class(relay_app: Any, endpoint: Any) -> type[ControlSocketProtocol]:
    """A ``ws`` class for uvicorn bound to this relay's app and control endpoint; every
    socket shares one ``ws.app``."""
    app_ref = _AppRef(relay_app.state)
    return type("BoundControlSocketProtocol", (ControlSocketProtocol,),
                {"app_ref": app_ref, "endpoint": staticmethod(endpoint),
                 "full_stack": ws_limits.bound(app_ref)})
