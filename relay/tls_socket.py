"""TLS on the socket itself: an asyncio transport over a non-blocking ``SSLSocket``.

Why not the event loop's own TLS (``create_server(ssl=...)``)? asyncio and uvloop run
OpenSSL over memory buffers: every record read is a ``recv`` into the loop's buffer,
a copy into OpenSSL's input BIO, the decrypt, and a copy out again; every write the
same the other way, plus the loop's own bookkeeping around each step. For a relay
that mostly holds ten thousand sockets and answers one small heartbeat on each every
30 seconds, that per-record overhead is the whole cost. Here OpenSSL reads and writes
the socket directly (a ``recv`` for the record, a ``send`` for the answer) and the
loop only says when the socket is ready. Measured on loopback with a small record
each way (2,000 a second over 4,000 connections): 48-49 µs of CPU per exchange
against 104-117 µs through uvloop's TLS; in the relay at 10,000 idle agents, about
20.5 KiB per agent against 31 KiB (docs/benchmarks.md, "What was chosen, and why").

:class:`TLSListener` accepts, runs the handshake (bounded by a timeout) and only then
makes the protocol, so a half-open client costs no HTTP state. :class:`TLSTransport`
is an ordinary :class:`asyncio.Transport` for that protocol: uvicorn's HTTP and
WebSocket protocols, the relay's lean control socket and the session tunnels all run
on it unchanged, with the usual flow control both ways.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
RECORD = 16 * 1024  # a full TLS record's payload: more is probably waiting
MAX_RECORDS_PER_WAKE = 8
WRITE_CHUNK = 64 * 1024
HIGH_WATER = 64 * 1024
LOW_WATER = 16 * 1024
ACCEPTS_PER_WAKE = 64
ACCEPT_PAUSE_S = 1.0
CLOSE_TIMEOUT_S = 30.0

_WOULD_BLOCK = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError,
                InterruptedError)
_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class TLSTransport(asyncio.Transport):
    """One established TLS connection, read and written by OpenSSL on the socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                 protocol: asyncio.Protocol, context: ssl.SSLContext) -> None:
        super().__init__()
        self._loop = loop
        self._sock: ssl.SSLSocket | None = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._extra: dict[str, Any] = {
            "socket": sock, "sslcontext": context, "ssl_object": sock,
            "peername": _safe(sock.getpeername), "sockname": _safe(sock.getsockname),
            "cipher": sock.cipher(), "compression": sock.compression(),
            "peercert": sock.getpeercert(),
        }
        self._out = bytearray()
        self._inflight: bytes | None = None  # a write OpenSSL must be given again as is
        self._writer_on = False
        self._write_wants_read = False
        self._reading = True
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._high = HIGH_WATER
        self._low = LOW_WATER

    # -- set-up ----------------------------------------------------------------------

    def start(self) -> None:
        self._protocol.connection_made(self)
        if self._sock is None:
            return
        if self._reading and not self._closing:
            self._loop.add_reader(self._fd, self._read_ready)
            # The client's first bytes may have come with its last handshake record.
            self._loop.call_soon(self._read_ready)

    # -- reading ---------------------------------------------------------------------

    def _read_ready(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
        for _ in range(MAX_RECORDS_PER_WAKE):
            sock = self._sock
            if sock is None or not self._reading:
                return
            try:
                data = sock.recv(READ_SIZE)
            except _WOULD_BLOCK:
                return
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            if not data:
                self._eof()
                return
            try:
                self._protocol.data_received(data)
            except Exception as exc:
                log.exception("the connection's protocol failed on incoming data")
                self._fatal(exc)
                return
            if len(data) < RECORD and not (self._sock is not None and self._sock.pending()):
                return  # a small message: the socket is most likely drained

    def _eof(self) -> None:
        try:
            self._protocol.eof_received()
        finally:
            self.close()

    def pause_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._reading = False
            if not self._closing:
                self._loop.remove_reader(self._fd)

    def resume_reading(self) -> None:
        if not self._reading and self._sock is not None and not self._closing:
            self._reading = True
            self._loop.add_reader(self._fd, self._read_ready)
            self._loop.call_soon(self._read_ready)  # OpenSSL may hold decrypted bytes

    def is_reading(self) -> bool:
        return self._reading and not self._closing

    # -- writing ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._sock is None or not data:
            return
        if self._inflight is None and not self._out and len(data) <= WRITE_CHUNK:
            chunk = bytes(data)
            try:
                self._sock.send(chunk)
                return
            except ssl.SSLWantReadError:
                self._inflight = chunk  # OpenSSL wants this very write repeated
                self._write_wants_read = True
                self._check_high()
                return
            except _WOULD_BLOCK:
                self._inflight = chunk
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
        else:
            self._out += data
        self._want_writer()
        self._check_high()

    def _flush(self) -> None:
        sock = self._sock
        while sock is not None:
            if self._inflight is None:
                if not self._out:
                    break
                self._inflight = bytes(self._out[:WRITE_CHUNK])
                del self._out[:WRITE_CHUNK]
            try:
                sock.send(self._inflight)
            except ssl.SSLWantReadError:
                # OpenSSL must read before it can write (rare in TLS 1.3): retry when
                # the socket is readable, not in a loop on "writable".
                self._write_wants_read = True
                if self._writer_on:
                    self._writer_on = False
                    self._loop.remove_writer(self._fd)
                return
            except _WOULD_BLOCK:
                self._want_writer()
                return
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            self._inflight = None
        if self._writer_on:
            self._writer_on = False
            self._loop.remove_writer(self._fd)
        self._check_low()
        if self._closing and self._sock is not None:
            self._finish_close(None, notify_peer=True)

    def _want_writer(self) -> None:
        if not self._writer_on and self._sock is not None:
            self._writer_on = True
            self._loop.add_writer(self._fd, self._flush)

    def _check_high(self) -> None:
        if not self._writing_paused and self.get_write_buffer_size() > self._high:
            self._writing_paused = True
            try:
                self._protocol.pause_writing()
            except Exception:
                log.exception("pause_writing failed")

    def _check_low(self) -> None:
        if self._writing_paused and self.get_write_buffer_size() <= self._low:
            self._writing_paused = False
            try:
                self._protocol.resume_writing()
            except Exception:
                log.exception("resume_writing failed")

    def get_write_buffer_size(self) -> int:
        return len(self._out) + (len(self._inflight) if self._inflight else 0)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_high()

    def can_write_eof(self) -> bool:
        return False  # TLS has no half-close

    def write_eof(self) -> None:
        raise NotImplementedError("TLS connections cannot be half-closed")

    # -- closing ---------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is buffered, then TLS close_notify, then close the socket."""
        if self._closing:
            return
        self._closing = True
        if self._sock is not None and self._reading:
            self._loop.remove_reader(self._fd)
        if not self.get_write_buffer_size():
            self._finish_close(None, notify_peer=True)
        else:  # a peer that never reads must not keep the socket forever
            self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def abort(self) -> None:
        self._closing = True
        self._finish_close(None, notify_peer=False)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("TLS connection %s failed: %r", self._extra.get("peername"), exc)
        self._closing = True
        self._finish_close(exc, notify_peer=False)

    def _finish_close(self, exc: BaseException | None, *, notify_peer: bool) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        self._loop.remove_reader(self._fd)
        if self._writer_on:
            self._writer_on = False
            self._loop.remove_writer(self._fd)
        self._out.clear()
        self._inflight = None
        if notify_peer:
            try:
                sock.unwrap()  # sends close_notify; does not wait for the peer's
            except (OSError, ssl.SSLError, ValueError):
                pass
        sock.close()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._protocol.connection_lost, exc)

    # -- the rest of the transport interface -----------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Handshake:
    """A TLS handshake in progress on a freshly accepted socket."""

    __slots__ = ("fd", "listener", "sock", "timer", "writer_on")

    def __init__(self, listener: TLSListener, sock: ssl.SSLSocket) -> None:
        self.listener = listener
        self.sock = sock
        self.fd = sock.fileno()
        self.writer_on = False
        loop = listener.loop
        self.timer = loop.call_later(listener.handshake_timeout, self.fail, "timed out")
        loop.add_reader(self.fd, self.step)
        listener.handshakes.add(self)

    def step(self) -> None:
        loop = self.listener.loop
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._writer(False)
            return
        except ssl.SSLWantWriteError:
            self._writer(True)
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.fail(exc)
            return
        self._done()
        loop.remove_reader(self.fd)
        try:
            protocol = self.listener.protocol_factory()
            TLSTransport(loop, self.sock, protocol, self.listener.context).start()
        except Exception:
            log.exception("could not start the connection's protocol")
            self.sock.close()

    def _writer(self, on: bool) -> None:
        if on != self.writer_on:
            self.writer_on = on
            if on:
                self.listener.loop.add_writer(self.fd, self.step)
            else:
                self.listener.loop.remove_writer(self.fd)

    def _done(self) -> None:
        self.timer.cancel()
        self._writer(False)
        self.listener.handshakes.discard(self)

    def fail(self, why: object) -> None:
        # Scanners, wrong fingerprints and dropped clients end up here: not news.
        if self not in self.listener.handshakes:
            return  # already over; its descriptor number may belong to another socket now
        log.debug("TLS handshake failed: %s", why)
        self._done()
        self.listener.loop.remove_reader(self.fd)
        self.sock.close()


class TLSListener:
    """Listening sockets whose connections get TLS via :class:`TLSTransport`.

    Offers what uvicorn needs of an ``asyncio.Server``: ``sockets``, ``close`` and
    ``wait_closed``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 context: ssl.SSLContext, protocol_factory: Callable[[], asyncio.Protocol],
                 handshake_timeout: float = 15.0) -> None:
        self.loop = loop
        self.sockets = sockets
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.handshakes: set[_Handshake] = set()
        self._closed = False
        for sock in sockets:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                conn, _ = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    # Out of descriptors or memory: stop accepting for a moment rather
                    # than spin; the backlog keeps the waiting clients.
                    log.error("accepting connections paused for %.0f s: %s",
                              ACCEPT_PAUSE_S, exc)
                    self.loop.remove_reader(listening.fileno())
                    self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accept, listening)
                    return
                raise
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                tls = self.context.wrap_socket(conn, server_side=True,
                                               do_handshake_on_connect=False)
            except (OSError, ssl.SSLError) as exc:
                log.debug("dropped a connection before its handshake: %r", exc)
                conn.close()
                continue
            _Handshake(self, tls)

    def _resume_accept(self, listening: socket.socket) -> None:
        if not self._closed:
            self.loop.add_reader(listening.fileno(), self._accept, listening)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        for handshake in list(self.handshakes):
            handshake.fail("relay shutting down")

    async def wait_closed(self) -> None:
        return None


def _safe(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None
