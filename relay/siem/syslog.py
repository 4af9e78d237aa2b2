"""Syslog over TCP and TLS: RFC 5424 messages, RFC 6587 / 5425 octet-counting frames.

Why octet counting: an audit event's JSON may hold a newline (in a detail), so the
non-transparent (LF-terminated) framing of RFC 6587 could split one event into two;
``LEN SP MSG`` cannot. Why a blocking socket in a thread: :meth:`SyslogSender.send`
must know that a message reached the kernel before the caller moves its cursor
(docs/siem-and-retention.md, "Exactly once across a kill"); asyncio's transports
buffer in user space and say only that the buffer drained below a mark.

The contract (shared with the checkpoint sink, BRIEF.md): :func:`rfc5424` builds one
message without framing; :class:`SyslogSender` frames and sends, raising ``OSError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

log = logging.getLogger("backline.relay.siem")

SCHEMES = ("syslog+tcp", "syslog+tls")
#: The largest message sent (RFC 5425 receivers must take 2048 octets and SHOULD take
#: 8192; audit details are at most 16 KiB of JSON, so the whole event fits in 64 KiB).
MAX_MESSAGE = 64 * 1024
_PRINTUSASCII = re.compile(r"[^\x21-\x7e]")


def _field(value: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, MSGID): printable US-ASCII without spaces,
    at most ``limit`` characters, ``-`` when empty (RFC 5424 section 6.2)."""
    text = _PRINTUSASCII.sub("_", value)[:limit]
    return text or "-"


def sd_escape(value: str) -> str:
    """A PARAM-VALUE with ``"``, ``\\`` and ``]`` escaped (RFC 5424 section 6.3.3)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def timestamp(at: float) -> str:
    """RFC 3339 in UTC with microseconds (RFC 5424 section 6.2.3)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def rfc5424(msg: str, *, msgid: str, sd: str = "-", severity: int = 6, facility: int = 13,
            at: float | None = None, hostname: str | None = None,
            app: str = "backline-relay") -> bytes:
    """One RFC 5424 message (no framing): ``<PRI>1 TIMESTAMP HOST APP PROCID MSGID SD``
    then a UTF-8 MSG with its BOM. Facility 13 is "log audit". ``sd`` is given whole
    (``[id param="value"]``, values escaped with :func:`sd_escape`)."""
    if not (0 <= severity <= 7 and 0 <= facility <= 23):
        raise ValueError("severity is 0-7 and facility 0-23")
    if sd != "-" and not (sd.startswith("[") and sd.endswith("]")):
        raise ValueError("structured data is '-' or [SD-ID params...]")
    host = hostname if hostname is not None else socket.gethostname()
    head = (f"<{facility * 8 + severity}>1 {timestamp(time.time() if at is None else at)} "
            f"{_field(host, 255)} {_field(app, 48)} {os.getpid()} {_field(msgid, 32)} {sd}")
    return head.encode("utf-8") + b" \xef\xbb\xbf" + msg.encode("utf-8")


def frame(message: bytes) -> bytes:
    """``MSG-LEN SP SYSLOG-MSG`` (RFC 5425 section 4.3, RFC 6587 section 3.4.1)."""
    return str(len(message)).encode() + b" " + message


def parse_url(url: str) -> tuple[str, str, int]:
    """``(scheme, host, port)`` of ``syslog+tcp://host:port`` or ``syslog+tls://...``;
    ``ValueError`` for anything else."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES or not parts.hostname or not parts.port:
        raise ValueError("a syslog URL is syslog+tcp://HOST:PORT or syslog+tls://HOST:PORT")
    if parts.username or parts.password or parts.path not in ("", "/") or parts.query:
        raise ValueError("a syslog URL has no credentials, path or query")
    return parts.scheme, parts.hostname, parts.port


# send(2) and pwrite(2) called through ctypes.PyDLL: the GIL is held across each call,
# so between a message's last byte reaching the kernel and its cursor record no other
# thread can run (socket.send releases the GIL and must take it back before returning:
# under load that wait is milliseconds, and a kill during it sent the message without
# its cursor: a duplicate after the restart, which the kill -9 test caught).
_LIBC = ctypes.PyDLL(None, use_errno=True)
_send = _LIBC.send
_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int]
_send.restype = ctypes.c_ssize_t
_pwrite = _LIBC.pwrite
_pwrite.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_longlong]
_pwrite.restype = ctypes.c_ssize_t
_FLAGS = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR)

#: ``(fd, bytes)``: a record written with ``pwrite`` at offset 0 of ``fd`` right after a
#: message's last byte was handed to the kernel.
Record = tuple[int, bytes]


def send_then_record(fd: int, data: bytes, record: Record | None, timeout: float) -> None:
    """Hand ``data`` to the kernel (waiting for room, at most ``timeout``), then write
    ``record`` with nothing in between that can wait for another thread."""
    off, total = 0, len(data)
    deadline = time.monotonic() + timeout
    while True:
        n = _send(fd, data[off:] if off else data, total - off, _FLAGS)
        if n >= 0:
            off += n
            if off == total:
                if record is not None and _pwrite(record[0], record[1], len(record[1]),
                                                  0) != len(record[1]):
                    err = ctypes.get_errno()
                    raise OSError(err, f"the cursor record was not written: "
                                       f"{os.strerror(err)}")
                return
            continue
        err = ctypes.get_errno()
        if err not in _AGAIN:
            raise OSError(err, os.strerror(err))
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the collector took nothing for the timeout")
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        poller.poll(left * 1000)


class _Connection:
    """One open connection to a collector, and the thread that reads it.

    Why read a connection we only write to: Linux resets (RST, not FIN) a connection
    closed with received bytes unread (RFC 2525 section 2.17), and a reset throws away
    what the relay's kernel had not sent yet and, on the collector's side, what its
    kernel had received but the collector had not read. A SIGKILL closes the socket, so
    a single unread byte turns "the kernel will still deliver it" into a silent loss
    of everything in both buffers, past the cursor. A TLS 1.3 server always sends
    session tickets after the handshake (OpenSSL: two, about 500 bytes; a client cannot
    refuse them, ``OP_NO_TICKET`` only covers TLS 1.2), and a collector may send more
    (a KeyUpdate, a close_notify, bytes a plain TCP collector should not send at all).
    So a thread per connection takes whatever arrives as soon as it arrives: TLS
    records go through the TLS object (their plaintext, if any, is counted and
    dropped), plain TCP bytes are counted and dropped. The end of the collector's side
    (EOF, reset, close_notify, a TLS error) is noted in ``ended``; the sender stops
    writing into such a connection (what it would write would be lost)."""

    def __init__(self, sock: socket.socket, tls: tuple[ssl.SSLObject, ssl.MemoryBIO,
                                                       ssl.MemoryBIO] | None,
                 name: str) -> None:
        self.sock = sock
        self.tls = tls  # (object, incoming, outgoing)
        #: Held around each use of the TLS object: the reader's and the sender's.
        self.tls_lock = threading.Lock()
        self.ended: str | None = None
        self.unexpected = 0  # application bytes the collector sent (none expected)
        self._name = name
        self._reader = threading.Thread(target=self._read, name=f"syslog-reader {name}",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """Until the end of the stream: even once the collector's side has ended (a
        close_notify, a TLS error), whatever still comes is read and dropped."""
        self._absorb(b"")  # anything that came with the handshake's last flight
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError as exc:
                self._end(f"the connection failed ({exc.strerror or type(exc).__name__})")
                return
            if not data:
                self._end("the collector closed the connection")
                return
            self._absorb(data)

    def _absorb(self, data: bytes) -> None:
        if self.tls is None or self.ended is not None:
            self._unexpected(len(data))
            return
        tls, incoming, _ = self.tls
        with self.tls_lock:
            if data:
                incoming.write(data)
            while True:
                try:
                    plain = tls.read(65536)
                except ssl.SSLWantReadError:
                    return
                except ssl.SSLZeroReturnError:
                    self._end("the collector closed the TLS session (close_notify)")
                    return
                except ssl.SSLError as exc:
                    self._end(f"TLS error from the collector ({exc.reason or exc})")
                    return
                if not plain:
                    return
                self._unexpected(len(plain))

    def _unexpected(self, count: int) -> None:
        if count and not self.unexpected:
            # The count only: the collector's bytes are not ours to log.
            log.warning("syslog %s: the collector sent %d bytes of data (a syslog "
                        "collector sends nothing); read and dropped", self._name, count)
        self.unexpected += count

    def _end(self, why: str) -> None:
        if self.ended is None:
            self.ended = why

    def close(self, *, linger: float = 0.0) -> None:
        """Close without leaving received bytes unread: end our side (FIN after what
        the kernel still has to send), let the reader take what comes for up to
        ``linger`` seconds (until the collector closes too), then close."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)
        if linger > 0:
            self._reader.join(linger)
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RD)  # wakes a reader blocked in recv
        self._reader.join(1.0)
        self._end("closed by the relay")
        with contextlib.suppress(OSError):
            self.sock.close()


class SyslogSender:
    """One connection to a collector, opened on first use and again after a failure.

    :meth:`send` writes each framed message in a worker thread; with ``records``, the
    ``i``-th record is written (``pwrite``) right after the ``i``-th message's last byte
    reached the kernel (:func:`send_then_record`), and ``on_sent(i)`` is called after
    that. TLS runs over memory BIOs (:meth:`ssl.SSLContext.wrap_bio`) so that the
    encrypted bytes go out through the same path. Whatever the collector sends is read
    at once by a thread of the connection (:class:`_Connection`: unread bytes would
    turn a kill of the relay into a reset that loses what was sent). A failure closes
    the connection and raises ``OSError``: the caller resends from its own cursor."""

    def __init__(self, url: str, *, ca_file: str | None = None, timeout: float = 10.0
                 ) -> None:
        self.scheme, self.host, self.port = parse_url(url)
        self.url = f"{self.scheme}://{self.host}:{self.port}"  # nothing secret in it
        self.ca_file = ca_file
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._lock = threading.Lock()
        self._context: ssl.SSLContext | None = None
        if self.scheme == "syslog+tls":
            ctx = ssl.create_default_context(cafile=ca_file or None)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            self._context = ctx

    def _connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        tls_state = None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._context is not None:
                incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
                tls = self._context.wrap_bio(incoming, outgoing, server_hostname=self.host)
                while True:
                    try:
                        tls.do_handshake()
                        break
                    except ssl.SSLWantReadError:
                        if outgoing.pending:
                            raw.sendall(outgoing.read())
                        data = raw.recv(65536)
                        if not data:
                            raise OSError("the collector closed the connection during "
                                          "the TLS handshake") from None
                        incoming.write(data)
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                tls_state = (tls, incoming, outgoing)
            # Blocking from here on, for the reader; the sender's own send(2) calls are
            # non-blocking whatever the socket's mode (MSG_DONTWAIT).
            raw.settimeout(None)
        except BaseException:
            raw.close()
            raise
        self._conn = _Connection(raw, tls_state, self.url)

    @property
    def _sock(self) -> socket.socket | None:
        """The open connection's socket (tests and diagnostics)."""
        return self._conn.sock if self._conn is not None else None

    @staticmethod
    def _wire(conn: _Connection, message: bytes) -> bytes:
        framed = frame(message)
        if conn.tls is None:
            return framed
        tls, _, outgoing = conn.tls
        with conn.tls_lock:
            tls.write(framed)
            return outgoing.read()

    def send_blocking(self, messages: list[bytes],
                      on_sent: Callable[[int], None] | None = None,
                      records: list[Record] | None = None) -> None:
        """:meth:`send` on the calling thread."""
        for message in messages:
            if len(message) > MAX_MESSAGE:
                raise ValueError(f"a syslog message is at most {MAX_MESSAGE} bytes")
        with self._lock:
            try:
                if self._conn is not None and self._conn.ended is not None:
                    # The collector closed it since the last batch: writing into it
                    # would be lost.
                    self._close_locked()
                if self._conn is None:
                    self._connect()
                conn = self._conn
                assert conn is not None
                fd = conn.sock.fileno()
                for i, message in enumerate(messages):
                    if conn.ended is not None:
                        raise OSError(conn.ended)
                    send_then_record(fd, self._wire(conn, message),
                                     records[i] if records else None, self.timeout)
                    if on_sent is not None:
                        on_sent(i)
            except (OSError, ssl.SSLError):
                self._close_locked()
                raise

    async def send(self, messages: list[bytes],
                   on_sent: Callable[[int], None] | None = None,
                   records: list[Record] | None = None) -> None:
        """Frame and send ``messages`` in order; ``OSError`` on failure."""
        await asyncio.to_thread(self.send_blocking, messages, on_sent, records)

    def _close_locked(self, linger: float = 0.0) -> None:
        if self._conn is not None:
            self._conn.close(linger=linger)
            self._conn = None

    async def close(self) -> None:
        """Close the connection (the relay stops): what the kernel accepted is still
        delivered after the close; the reader keeps reading for up to a second, until
        the collector closes its side too."""
        def close() -> None:
            with self._lock:
                self._close_locked(linger=1.0)

        await asyncio.to_thread(close)
