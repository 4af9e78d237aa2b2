"""The relay's data directory: its keys, certificate and embedded database.

Created on first start, with every secret file mode 0600 and the folder 0700:
- ``tls.crt`` / ``tls.key``: a self-signed ECDSA certificate; agents pin the hash of
  its public key (SPKI), so ``backline-relay cert rotate`` renews the certificate under
  the same key without touching them;
- ``ca_key``: the relay CA (OpenSSH Ed25519) that signs technicians' SSH certificates;
- ``audit_key.pem``: the Ed25519 key that signs audit checkpoints;
- ``cookie_secret``: signs browser session cookies;
- ``fix_key``: the online fix-approval key (OpenSSH Ed25519): an approval signs a fix
  version's canonical bytes with it, agents pin its public half (relay/fixes/signing.py).
  Made at init, and on the first start of a data directory made before it existed;
- ``tls_pinset.json``: the pin set last announced to agents and its serial, raised at
  each change (relay/pinset_serial.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backline.common import keys
from backline.common.tlspin import SPKI_PREFIX, cert_fingerprint, spki_pin_of


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
    def tls_next_key(self) -> Path:
        """The key the next ``cert rotate --new-key`` promotes; announced in advance."""
        return self.root / "tls_next.key"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca_key"

    @property
    def audit_key(self) -> Path:
        return self.root / "audit_key.pem"

    @property
    def tls_pinset(self) -> Path:
        return self.root / "tls_pinset.json"

    @property
    def fix_key(self) -> Path:
        return self.root / "fix_key"

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
        if not self.tls_next_key.exists():
            write_key(self.tls_next_key, ec.generate_private_key(ec.SECP256R1()))
            made.append("next TLS key")
        if not self.ca_key.exists():
            keys.save_private(keys.generate(), self.ca_key, openssh=True)
            made.append("relay CA")
        if not self.audit_key.exists():
            keys.save_private(keys.generate(), self.audit_key)
            made.append("audit signing key")
        if not self.fix_key.exists():
            keys.save_private(keys.generate(), self.fix_key, openssh=True)
            made.append("fix-approval key")
        if not self.cookie_secret.exists():
            keys.write_private_file(self.cookie_secret, secrets.token_urlsafe(48).encode())
            made.append("cookie secret")
        return made

    def read_cookie_secret(self) -> str:
        return self.cookie_secret.read_text().strip()


#: How long a self-signed certificate lives: within the 366 days Mozilla's profiles
#: allow (sslyze checks it). Not 90: agents pin the key, not the certificate, so a
#: renewal costs them nothing, but every browser that was told to trust the
#: self-signed certificate asks again after each one; a year is the longest allowed.
CERT_LIFETIME_DAYS = 365
#: ``backline-relay serve`` warns (log, /readyz, metrics) from this many days before.
CERT_WARN_DAYS = 30


def write_self_signed(cert_path: Path, key_path: Path, hostnames: list[str],
                      key: ec.EllipticCurvePrivateKey | None = None,
                      days: int = CERT_LIFETIME_DAYS) -> None:
    """Write a new self-signed certificate for ``hostnames`` and its key.

    With ``key`` (the current one, on a rotation) only the certificate changes: a new
    serial and validity, and the same public key, so agents' SPKI pins still hold. The
    key file is written first and both atomically, so a crash leaves the old pair or
    the new one, never a certificate for a key that is not on disk."""
    fresh = key is None
    key = key or ec.generate_private_key(ec.SECP256R1())
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
        # The five minutes before count too: the whole span stays within ``days``.
        .not_valid_after(now + dt.timedelta(days=days) - dt.timedelta(minutes=10))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        # Self-signed, so the issuer's key is its own; X.509 validators (browsers'
        # and sslyze's) want the extension on every certificate that is not a root.
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    if fresh or not key_path.exists():
        write_key(key_path, key)
    keys.write_private_file(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def write_key(key_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    keys.write_private_file(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def key_pin(key: ec.EllipticCurvePrivateKey) -> str:
    """The SPKI pin of ``key``'s public half."""
    spki = key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return SPKI_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def load_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an ECDSA key")
    return key


def load_cert(cert_path: Path) -> x509.Certificate:
    """The first (leaf) certificate of a PEM file."""
    return x509.load_pem_x509_certificate(cert_path.read_bytes())


def cert_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and addresses in a certificate's SAN (kept on a rotation)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*san.get_values_for_type(x509.DNSName),
            *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]


def pem_fingerprint(cert_path: Path) -> str:
    """The SHA-256 of the leaf certificate (what agents pinned before SPKI pins)."""
    return cert_fingerprint(load_cert(cert_path).public_bytes(serialization.Encoding.DER))


def pem_spki_pin(cert_path: Path) -> str:
    """The SPKI pin (``sha256//...``) of the leaf certificate's public key."""
    return spki_pin_of(load_cert(cert_path))
