"""The relay's data directory: its keys, certificate and embedded database.

Created on first start, with every secret file mode 0600 and the folder 0700:
- ``tls.crt`` / ``tls.key``: a self-signed ECDSA certificate (agents pin its hash);
- ``ca_key``: the relay CA (OpenSSH Ed25519) that signs technicians' SSH certificates;
- ``audit_key.pem``: the Ed25519 key that signs audit checkpoints;
- ``cookie_secret``: signs browser session cookies.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backline.common import keys
from backline.common.tlspin import cert_fingerprint


@dataclass(frozen=True)
class DataDir:
    root: Path

    @property
    def tls_cert(self) -> Path:
        return self.root / "tls.crt"

    @property
    def tls_key(self) -> Path:
        return self.root / "tls.key"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca_key"

    @property
    def audit_key(self) -> Path:
        return self.root / "audit_key.pem"

    @property
    def cookie_secret(self) -> Path:
        return self.root / "cookie_secret"

    @property
    def initialised_marker(self) -> Path:
        return self.root / "initialised"

    def is_initialised(self) -> bool:
        return self.initialised_marker.exists()

    def ensure_keys(self, hostnames: list[str]) -> list[str]:
        """Create whatever key is missing; return the names of what was created."""
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        made = []
        if not self.tls_key.exists() or not self.tls_cert.exists():
            write_self_signed(self.tls_cert, self.tls_key, hostnames)
            made.append("TLS certificate")
        if not self.ca_key.exists():
            keys.save_private(keys.generate(), self.ca_key, openssh=True)
            made.append("relay CA")
        if not self.audit_key.exists():
            keys.save_private(keys.generate(), self.audit_key)
            made.append("audit signing key")
        if not self.cookie_secret.exists():
            keys.write_private_file(self.cookie_secret, secrets.token_urlsafe(48).encode())
            made.append("cookie secret")
        return made

    def read_cookie_secret(self) -> str:
        return self.cookie_secret.read_text().strip()


def write_self_signed(cert_path: Path, key_path: Path, hostnames: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    seen = set()
    for name in [*hostnames, "localhost", socket.gethostname(), "127.0.0.1", "::1"]:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Backline relay")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    keys.write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def pem_fingerprint(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert_fingerprint(cert.public_bytes(serialization.Encoding.DER))
