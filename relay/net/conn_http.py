"""HTTP read deadlines, and the accept loop of the event loop's own TLS engine.

:class:`BoundedH11Protocol` is uvicorn's h11 protocol with deadlines kept on the
connection's :class:`~backline.relay.net.conn_limits.Conn` (one timer, re-aimed):

- the request head must be complete within ``request_head_timeout_s`` of the
  connection's start or of the previous response (idle keep-alive ends sooner, at
  ``keepalive_timeout_s``, uvicorn's own timer);
- a declared body must arrive within ``request_body_timeout_s`` plus one second per
  ``request_body_min_bytes_per_s`` bytes received, so a body trickled slower than
  that rate runs out of time whatever its declared length;
- no deadline while the application holds the request, unless the client stops
  reading its answer: a response stuck behind a full buffer (the transport paused
  writing) for ``request_body_timeout_s`` is cut (a "slow read");
- after a WebSocket upgrade, ``websocket_auth_timeout_s`` for the endpoint to
  authenticate it (:func:`~backline.relay.net.conn_limits.authenticated`), a backstop
  behind the endpoints' own first-frame timeouts.

uvicorn alone only bounds idle keep-alive, and any byte cancels that timer.

:class:`LoopListener` is the "loop" engine's listener (and the plain-HTTP one behind a
TLS-ending proxy): it accepts itself so that a connection gets its slot before the
handshake, then lets the event loop run TLS (``connect_accepted_socket``, with both
handshake and shutdown bounded). The protocol it hands the connection to sits behind
a :class:`Guarded` shim, the one place that sees the connection end whichever
protocol (HTTP, WebSocket, control socket) is current by then.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from backline.relay.net import conn_limits
from backline.relay.net.conn_limits import Conn, Gate
from backline.relay.net.tls_socket import GatedListener

log = logging.getLogger("backline.relay.net.conn_http")

SHUTDOWN_TIMEOUT_S = 5.0

_HEAD, _BODY, _APP, _WS = "head", "body", "app", "ws"


class BoundedH11Protocol(H11Protocol):
    """uvicorn's ``H11Protocol`` with request-head, body and WebSocket-authentication
    deadlines (see the module docstring)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._bl_conn: Conn | None = transport.get_extra_info(conn_limits.EXTRA)
        self._bl_phase = ""
        self._bl_body_start = 0.0
        self._bl_body_bytes = 0
        self._bl_enter(_HEAD)

    def data_received(self, data: bytes) -> None:
        conn = self._bl_conn
        if conn is None:
            super().data_received(data)
            return
        token = conn_limits.CURRENT.set(conn)
        try:
            super().data_received(data)
        finally:
            conn_limits.CURRENT.reset(token)
        if self._bl_phase == _BODY:
            self._bl_body_bytes += len(data)
        self._bl_follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._bl_follow()

    def pause_writing(self) -> None:
        super().pause_writing()
        conn = self._bl_conn
        if conn is not None and self._bl_phase == _APP:
            conn.deadline_in(conn.gate.limits.request_body_timeout_s,
                             conn_limits.RESPONSE_WRITE)

    def resume_writing(self) -> None:
        super().resume_writing()
        conn = self._bl_conn
        if conn is not None and conn.phase == conn_limits.RESPONSE_WRITE:
            conn.clear_deadline()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._bl_enter(_WS)
        super().handle_websocket_upgrade(event)

    def _bl_follow(self) -> None:
        if self._bl_phase == _WS:
            return
        state = self.conn.their_state
        if state is h11.IDLE:
            self._bl_enter(_HEAD)
        elif state is h11.SEND_BODY:
            self._bl_enter(_BODY)
        else:
            self._bl_enter(_APP)

    def _bl_enter(self, phase: str) -> None:
        conn = self._bl_conn
        if conn is None:
            return
        limits = conn.gate.limits
        if phase == _BODY:
            if self._bl_phase != _BODY:
                self._bl_body_start = conn.gate.loop.time()
                self._bl_body_bytes = 0
            conn.deadline_at(self._bl_body_start + limits.request_body_timeout_s
                             + self._bl_body_bytes / limits.request_body_min_bytes_per_s,
                             conn_limits.REQUEST_BODY)
        elif phase == self._bl_phase:
            return
        elif phase == _HEAD:
            conn.deadline_in(limits.request_head_timeout_s, conn_limits.REQUEST_HEAD)
        elif phase == _WS:
            if conn.held:
                conn.deadline_in(limits.websocket_auth_timeout_s, conn_limits.WEBSOCKET_AUTH)
            else:
                conn.clear_deadline()
        else:
            conn.clear_deadline()
        self._bl_phase = phase


class Guarded(asyncio.Protocol):
    """Between the event loop's transport and the relay's protocol, both ways: the
    protocol for the loop's transport and the transport for the relay's protocol.
    It exists to see the end of the connection (and give back its slot) whichever
    protocol uvicorn has switched the connection to, and to offer the
    :class:`~backline.relay.net.conn_limits.Conn` through ``get_extra_info``."""

    __slots__ = ("_app", "_conn", "_transport")

    def __init__(self, app: asyncio.Protocol, conn: Conn) -> None:
        self._app = app
        self._conn = conn
        self._transport: Any = None

    # -- protocol side (called by the loop's transport) ---------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._conn.transport = self
        self._app.connection_made(self)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        self._app.data_received(data)

    def eof_received(self) -> bool | None:
        return self._app.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._conn.closed()
        self._app.connection_lost(exc)

    def pause_writing(self) -> None:
        self._app.pause_writing()

    def resume_writing(self) -> None:
        self._app.resume_writing()

    # -- transport side (called by the relay's protocol) --------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def writelines(self, lines: Any) -> None:
        self._transport.writelines(lines)

    def can_write_eof(self) -> bool:
        return bool(self._transport.can_write_eof())

    def write_eof(self) -> None:
        self._transport.write_eof()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == conn_limits.EXTRA:
            return self._conn
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return bool(self._transport.is_reading())

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._app

    def get_write_buffer_size(self) -> int:
        return int(self._transport.get_write_buffer_size())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        low, high = self._transport.get_write_buffer_limits()
        return int(low), int(high)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class LoopListener(GatedListener):
    """Accepts on ``sockets``, reserves each connection's slot in ``gate``, then runs
    TLS (when ``context`` is set) with the event loop's own implementation."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 context: ssl.SSLContext | None,
                 protocol_factory: Callable[[], asyncio.Protocol], gate: Gate) -> None:
        self.context = context
        self.protocol_factory = protocol_factory
        self.gate: Gate = gate
        self.starting: set[asyncio.Task[None]] = set()
        super().__init__(loop, sockets, gate)

    def _started(self, sock: socket.socket, slot: Conn | None) -> None:
        assert slot is not None  # this listener always has a gate
        task = self.loop.create_task(self._start(sock, slot))
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)

    async def _start(self, sock: socket.socket, conn: Conn) -> None:
        kw: dict[str, Any] = {}
        timeout = self.gate.limits.tls_handshake_timeout_s
        if self.context is not None:
            kw = {"ssl": self.context, "ssl_handshake_timeout": timeout,
                  "ssl_shutdown_timeout": SHUTDOWN_TIMEOUT_S}
        started = self.loop.time()
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await self.loop.connect_accepted_socket(
                lambda: Guarded(self.protocol_factory(), conn), sock, **kw)
        except asyncio.CancelledError:
            conn.closed()
            sock.close()
            raise
        except Exception as exc:
            # Scanners, wrong fingerprints and dropped clients end up here: not news.
            log.debug("TLS handshake failed: %r", exc)
            if self.loop.time() - started >= timeout * 0.98:
                self.gate.timed_out(conn, conn_limits.TLS_HANDSHAKE)
            conn.closed()
            sock.close()

    def close(self) -> None:
        if self._stop_listening():
            for task in list(self.starting):
                task.cancel()
