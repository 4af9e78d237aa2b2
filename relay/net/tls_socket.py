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

from backline.relay.net import conn_limits, quiet_readers
from backline.relay.net.conn_limits import Conn, Gate
from backline.relay.net.quiet_readers import QuietReaders

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

_ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# ``tcpi_state`` (the first byte of TCP_INFO) of a socket the peer reset: TCP_CLOSE.
# A peer that only hung up (FIN) leaves it in CLOSE_WAIT.
_TCP_CLOSE = 7


def _was_reset(sock: socket.socket) -> bool:
    """Whether the peer reset the connection (RST), rather than closed it (FIN).

    OpenSSL 3 reports both as the same "unexpected EOF" (``SSLEOFError``): the
    ``ECONNRESET`` of the ``recv`` it made is lost on the way. The kernel still knows:
    a reset socket is closed outright, a finished one waits in CLOSE_WAIT for us."""
    info = getattr(socket, "TCP_INFO", None)
    try:
        if info is not None:
            return sock.getsockopt(socket.IPPROTO_TCP, info, 1)[0] == _TCP_CLOSE
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNRESET
    except OSError:
        return False


class TLSTransport(asyncio.Transport):
    """One established TLS connection, read and written by OpenSSL on the socket.

    What the loop watches follows from the state (:meth:`_watch`): readable while the
    protocol wants data, writable while output waits; and the two swap when OpenSSL
    needs the other direction to finish a read or a write (``SSL_ERROR_WANT_*``), so
    neither ever spins on a condition that is already true."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: ssl.SSLSocket,
                 protocol: asyncio.Protocol, context: ssl.SSLContext,
                 conn: Conn | None = None) -> None:
        super().__init__()
        self._loop = loop
        self._sock: ssl.SSLSocket | None = sock
        # OpenSSL's connection object itself (``_ssl._SSLSocket``): ``read``, ``write``
        # and ``pending`` without the three layers of checks ``ssl.SSLSocket`` puts in
        # front of each, per heartbeat. The wrapper's one extra (a ragged EOF read as
        # end of stream) is done in :meth:`_read`; without the attribute, the wrapper.
        self._ssl: Any = getattr(sock, "_sslobj", None) or sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._extra: dict[str, Any] = {
            "socket": sock, "sslcontext": context, "ssl_object": sock,
            "peername": _safe(sock.getpeername), "sockname": _safe(sock.getsockname),
            "cipher": sock.cipher(), "compression": sock.compression(),
            "peercert": sock.getpeercert(),
            conn_limits.EXTRA: conn,
        }
        # The connection's slot and deadline (relay/net/conn_limits.py), given back when
        # the connection ends, whatever protocol is current by then.
        self._conn = conn
        if conn is not None:
            conn.transport = self
        self._out = bytearray()
        self._inflight: bytes | None = None  # a write OpenSSL must be given again as is
        self._reader_on: asyncio.AbstractEventLoop | QuietReaders | None = None
        self._quiet = False  # read through QuietReaders (see set_quiet)
        self._writer_on = False
        self._write_wants_read = False  # the pending write waits for readability
        self._read_wants_write = False  # reading waits for writability
        self._reading = True
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._abort_timer: asyncio.TimerHandle | None = None
        self._high = HIGH_WATER
        self._low = LOW_WATER

    # -- set-up and what the loop watches ------------------------------------------------

    def start(self) -> None:
        self._protocol.connection_made(self)
        self._watch()
        # The client's first bytes may have come with its last handshake record.
        self._loop.call_soon(self._readable)

    def _wants_data(self) -> bool:
        return self._reading and not self._closing

    def _watch(self) -> None:
        if self._sock is None:
            return
        pending = self._inflight is not None or bool(self._out)
        reader = (not self._read_wants_write
                  and (self._wants_data() or self._write_wants_read))
        writer = self._read_wants_write or (pending and not self._write_wants_read)
        where = (None if not reader
                 else QuietReaders.of(self._loop) if self._quiet else self._loop)
        if where is not self._reader_on:
            if isinstance(self._reader_on, QuietReaders):
                self._reader_on.remove(self._fd)
            elif self._reader_on is not None:
                self._loop.remove_reader(self._fd)
            self._reader_on = where
            if isinstance(where, QuietReaders):
                where.add(self._fd, self._readable)
            elif where is not None:
                self._loop.add_reader(self._fd, self._readable)
        if writer != self._writer_on:
            self._writer_on = writer
            if writer:
                self._loop.add_writer(self._fd, self._writable)
            else:
                self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        if self._write_wants_read:
            self._write_wants_read = False
            self._flush()
        if not self._read_wants_write:
            self._read()

    def _writable(self) -> None:
        if self._read_wants_write:
            self._read_wants_write = False
            self._read()
        self._flush()

    # -- reading ---------------------------------------------------------------------

    def _read(self) -> None:
        for _ in range(MAX_RECORDS_PER_WAKE):
            if self._sock is None or not self._wants_data():
                break
            try:
                data = self._ssl.read(READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                break
            except ssl.SSLWantWriteError:
                self._read_wants_write = True
                self._watch()
                return
            except ssl.SSLEOFError:
                if self._sock is not None and _was_reset(self._sock):
                    # A reset is a failure, not an end of stream: the protocol must not
                    # take what it has as complete (a request, a last message).
                    self._fatal(ConnectionResetError(errno.ECONNRESET,
                                                     "connection reset by peer"))
                    return
                data = b""  # the peer hung up (FIN) without close_notify: end of stream
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
            if len(data) < RECORD and not (self._sock is not None and self._ssl.pending()):
                return  # a small message: the socket is most likely drained

    def _eof(self) -> None:
        try:
            self._protocol.eof_received()
        finally:
            self.close()

    def pause_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._watch()

    def resume_reading(self) -> None:
        if not self._reading:
            self._reading = True
            self._watch()
            self._loop.call_soon(self._readable)  # OpenSSL may hold decrypted bytes

    def is_reading(self) -> bool:
        return self._wants_data()

    def set_quiet(self, quiet: bool = True) -> None:
        """Whether this connection's reads may wait a little (up to
        :data:`~backline.relay.net.quiet_readers.HOLD_S`) to share a wake-up with others:
        for a socket that mostly idles and whose messages are not urgent. Where
        epoll is missing, nothing changes."""
        if quiet != self._quiet and quiet_readers.SUPPORTED:
            self._quiet = quiet
            self._watch()

    # -- writing ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._sock is None or not data:
            return
        if self._inflight is None and not self._out and len(data) <= WRITE_CHUNK:
            chunk = bytes(data)
            try:
                self._ssl.write(chunk)
                return
            except ssl.SSLWantReadError:
                self._write_wants_read = True
                self._inflight = chunk  # OpenSSL wants this very write repeated
            except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                self._inflight = chunk
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
        else:
            self._out += data
        self._watch()
        self._check_high()

    def _flush(self) -> None:
        sock = self._sock
        while sock is not None and not self._write_wants_read:
            if self._inflight is None:
                if not self._out:
                    break
                self._inflight = bytes(self._out[:WRITE_CHUNK])
                del self._out[:WRITE_CHUNK]
            try:
                self._ssl.write(self._inflight)
            except ssl.SSLWantReadError:
                self._write_wants_read = True  # rare in TLS 1.3: retry when readable
                break
            except (ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                break
            except (OSError, ssl.SSLError) as exc:
                self._fatal(exc)
                return
            self._inflight = None
        if self._sock is None:
            return
        self._watch()
        self._check_low()
        if self._closing and not self.get_write_buffer_size():
            self._finish_close(None, notify_peer=True)

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
        """As asyncio's transports: ``high`` defaults to four times ``low`` or 64 KiB, ``low``
        to a quarter of ``high``."""
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
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
        if not self.get_write_buffer_size():
            self._finish_close(None, notify_peer=True)
            return
        self._watch()  # stop reading; keep writing out what is queued
        # A peer that never reads must not keep the socket forever.
        self._abort_timer = self._loop.call_later(CLOSE_TIMEOUT_S, self.abort)

    def abort(self) -> None:
        self._closing = True
        self._finish_close(None, notify_peer=False)

    def _fatal(self, exc: BaseException) -> None:
        log.debug("TLS connection %s failed: %r", self._extra.get("peername"), exc)
        self._closing = True
        self._finish_close(exc, notify_peer=False)

    def _finish_close(self, exc: BaseException | None, *, notify_peer: bool) -> None:
        sock = self._sock
        if sock is None:
            return
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        self._read_wants_write = self._write_wants_read = False
        self._out.clear()
        self._inflight = None
        self._reading = False
        self._watch()  # nothing watched any more: both removed before the close
        self._sock = None
        self._ssl = None
        if notify_peer:
            try:
                sock.unwrap()  # sends close_notify; does not wait for the peer's
            except (OSError, ssl.SSLError, ValueError):
                pass
        sock.close()
        if self._conn is not None:
            self._conn.closed()
        if not self._lost:
            self._lost = True
            self._loop.call_soon(self._connection_lost, exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        self._protocol.connection_lost(exc)  # whichever protocol is current by then

    # -- the rest of the transport interface -----------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol  # type: ignore[assignment]

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol


class _Handshake:
    """A TLS handshake in progress on a freshly accepted socket. It waits for whichever
    direction OpenSSL asks for, never both, and ends after ``handshake_timeout``."""

    __slots__ = ("conn", "fd", "listener", "sock", "timer", "waiting_to_write")

    def __init__(self, listener: TLSListener, sock: ssl.SSLSocket,
                 conn: Conn | None = None) -> None:
        self.listener = listener
        self.sock = sock
        self.conn = conn
        self.fd = sock.fileno()
        self.waiting_to_write = False
        loop = listener.loop
        self.timer = loop.call_later(listener.handshake_timeout, self.fail, "timed out")
        loop.add_reader(self.fd, self.step)
        listener.handshakes.add(self)

    def step(self) -> None:
        try:
            self.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._wait(write=False)
            return
        except ssl.SSLWantWriteError:
            self._wait(write=True)
            return
        except (OSError, ssl.SSLError, ValueError) as exc:
            self.fail(exc)
            return
        self._done()
        loop = self.listener.loop
        try:
            protocol = self.listener.protocol_factory()
        except Exception:
            log.exception("could not make the connection's protocol")
            self.sock.close()
            if self.conn is not None:
                self.conn.closed()
            return
        transport = TLSTransport(loop, self.sock, protocol, self.listener.context, self.conn)
        try:
            transport.start()
        except Exception as exc:
            log.exception("could not start the connection's protocol")
            transport._fatal(exc)  # closes, and tells the protocol it is over

    def _wait(self, *, write: bool) -> None:
        if write != self.waiting_to_write:
            loop = self.listener.loop
            self.waiting_to_write = write
            if write:
                loop.remove_reader(self.fd)
                loop.add_writer(self.fd, self.step)
            else:
                loop.remove_writer(self.fd)
                loop.add_reader(self.fd, self.step)

    def _done(self) -> None:
        """Stop the timer and watch nothing more; the socket itself stays open."""
        self.timer.cancel()
        loop = self.listener.loop
        if self.waiting_to_write:
            loop.remove_writer(self.fd)
        else:
            loop.remove_reader(self.fd)
        self.listener.handshakes.discard(self)

    def fail(self, why: object) -> None:
        # Scanners, wrong fingerprints and dropped clients end up here: not news.
        if self not in self.listener.handshakes:
            return  # already over; its descriptor number may belong to another socket now
        log.debug("TLS handshake failed: %s", why)
        self._done()
        self.sock.close()
        if self.conn is not None:
            if why == "timed out":
                self.conn.gate.timed_out(self.conn, conn_limits.TLS_HANDSHAKE)
            self.conn.closed()


class GatedListener:
    """What both TLS engines' listeners share: accept up to :data:`ACCEPTS_PER_WAKE`
    connections a wake-up, pause accepting for a moment when descriptors or memory run
    out (the backlog keeps the waiting clients) instead of spinning, and reserve each
    connection's slot in ``gate`` (relay/net/conn_limits.py) *before* its TLS handshake, the
    slow step a stranger controls. :meth:`_started` takes it from there.

    Offers what uvicorn needs of an ``asyncio.Server``: ``sockets``, ``close`` and
    ``wait_closed``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 gate: Gate | None) -> None:
        self.loop = loop
        self.sockets = sockets
        self.gate = gate
        self._closed = False
        for sock in sockets:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, listening: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, peer = listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in _ACCEPT_RESOURCE_ERRORS:
                    log.error("accepting connections paused for %.0f s: %s",
                              ACCEPT_PAUSE_S, exc)
                    self.loop.remove_reader(listening.fileno())
                    self.loop.call_later(ACCEPT_PAUSE_S, self._resume_accept, listening)
                    return
                # A connection that failed between SYN and accept (ECONNABORTED,
                # EPROTO...): that one is gone, the listener is fine.
                log.debug("accept failed: %r", exc)
                continue
            slot: Conn | None = None
            if self.gate is not None:
                slot = self.gate.admit(str(peer[0]) if isinstance(peer, tuple) else "unknown")
                if slot is None:
                    sock.close()  # refused (counted and audited by the gate)
                    continue
            self._started(sock, slot)

    def _started(self, sock: socket.socket, slot: Conn | None) -> None:
        """Run the handshake of an accepted, admitted connection."""
        raise NotImplementedError

    def _resume_accept(self, listening: socket.socket) -> None:
        if not self._closed:
            self.loop.add_reader(listening.fileno(), self._accept, listening)

    def _stop_listening(self) -> bool:
        """Stop accepting; ``False`` when that was done already."""
        if self._closed:
            return False
        self._closed = True
        for sock in self.sockets:
            if sock.fileno() >= 0:
                self.loop.remove_reader(sock.fileno())
                sock.close()
        return True

    def close(self) -> None:
        self._stop_listening()

    async def wait_closed(self) -> None:
        return None


class TLSListener(GatedListener):
    """Listening sockets whose connections get TLS via :class:`TLSTransport`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sockets: list[socket.socket],
                 context: ssl.SSLContext, protocol_factory: Callable[[], asyncio.Protocol],
                 handshake_timeout: float = 15.0, gate: Gate | None = None) -> None:
        self.context = context
        self.protocol_factory = protocol_factory
        self.handshake_timeout = handshake_timeout
        self.handshakes: set[_Handshake] = set()
        super().__init__(loop, sockets, gate)

    def _started(self, sock: socket.socket, slot: Conn | None) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            tls = self.context.wrap_socket(sock, server_side=True,
                                           do_handshake_on_connect=False)
        except (OSError, ssl.SSLError) as exc:
            log.debug("dropped a connection before its handshake: %r", exc)
            sock.close()
            if slot is not None:
                slot.closed()
            return
        _Handshake(self, tls, slot)

    def close(self) -> None:
        if self._stop_listening():
            for handshake in list(self.handshakes):
                handshake.fail("relay shutting down")


def _safe(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except OSError:
        return None
