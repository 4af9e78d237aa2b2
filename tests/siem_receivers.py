"""Collectors run by the SIEM tests: a syslog receiver (TCP or TLS, RFC 5425 octet
counting) and an HTTPS JSON-lines receiver, each on loopback in a thread, plus a test
CA that issues their certificates."""

from __future__ import annotations

import datetime
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SD = re.compile(rb'^<\d+>1 \S+ \S+ \S+ \S+ (\S+) \[backline@32473 seq="(\d+)" '
                rb'hash="([0-9a-f]{64})"\] \xef\xbb\xbf(.*)$', re.S)


def make_ca(root: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 it issued: (ca, cert, key) files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    root.mkdir(parents=True, exist_ok=True)
    ca_file, cert_file, key_file = (root / f"{name}-ca.pem", root / f"{name}.pem",
                                    root / f"{name}.key")
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


class SyslogReceiver:
    """Accepts any number of connections; keeps every whole frame, in arrival order.
    A frame cut short by the connection's end (the relay killed while writing it) is
    counted in ``partial`` and not kept: the sender sends it again.

    ``slow``: a collector that reads slowly (a small receive buffer, 512 bytes every
    20 ms, some 25 KB/s) until :meth:`hurry` is called, so that the kernels on both
    ends hold what the relay sent and the collector has not read yet (what a kill of
    the relay must not lose: docs/siem-and-retention.md, "Exactly once across a
    kill")."""

    SLOW_READ = 512
    SLOW_PAUSE_S = 0.02

    def __init__(self, tls: ssl.SSLContext | None = None, *, slow: bool = False) -> None:
        self.tls = tls
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if slow:  # before listen(): the accepted sockets inherit it, window scale too
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        self.slow = threading.Event()
        if slow:
            self.slow.set()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.messages: list[dict[str, Any]] = []
        self.partial = 0
        self.bad: list[bytes] = []
        self.connections = 0
        self.ended = 0  # connections that have ended (EOF, reset, error)
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"syslog+{'tls' if self.tls else 'tcp'}://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            conn.settimeout(60)
            while True:
                slow = self.slow.is_set()
                try:
                    chunk = conn.recv(self.SLOW_READ if slow else 65536)
                except (ssl.SSLEOFError, ConnectionResetError):
                    chunk = b""
                if slow:
                    time.sleep(self.SLOW_PAUSE_S)
                if not chunk:
                    break
                buf += chunk
                while True:
                    head, sep, rest = buf.partition(b" ")
                    if not sep or not head.isdigit():
                        break
                    size = int(head)
                    if len(rest) < size:
                        break
                    self._keep(rest[:size])
                    buf = rest[size:]
        except (OSError, ssl.SSLError):
            pass
        finally:
            if buf:
                self.partial += 1
            conn.close()
            with self._lock:
                self.ended += 1

    def _keep(self, message: bytes) -> None:
        m = SD.match(message)
        if not m:
            self.bad.append(message[:200])
            return
        event = json.loads(m.group(4))
        with self._lock:
            self.messages.append({"msgid": m.group(1).decode(), "seq": int(m.group(2)),
                                  "hash": m.group(3).decode(), "event": event})

    def hurry(self) -> None:
        """Read at full speed from now on."""
        self.slow.clear()

    def seqs(self) -> list[int]:
        with self._lock:
            return [m["seq"] for m in self.messages]

    def close(self) -> None:
        self._stop = True
        self.sock.close()


class HttpsReceiver:
    """Answers each POST with the next planned status (then ``default``); keeps the
    bodies of those it answered 2xx."""

    def __init__(self, cert: Path, key: Path, statuses: list[int], default: int = 200
                 ) -> None:
        self.statuses = list(statuses)
        self.default = default
        self.requests: list[dict[str, Any]] = []
        self.accepted: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                record = {"headers": dict(self.headers), "body": body, "status": status}
                receiver.requests.append(record)
                if 200 <= status < 300:
                    receiver.accepted.append(record)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = server_context(cert, key).wrap_socket(self.server.socket,
                                                                   server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/siem/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for r in self.accepted
                for line in r["body"].decode().splitlines()]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
