"""Ed25519 keys and signatures, and the files they live in.

Private keys are written with mode 0600 from the first byte (never chmod-ed after
the fact), so a key is never readable by others even for a moment.

cryptography is imported by the functions that use it, not with this module: the
wire protocol (common/protocol.py) imports this module, and the long-lived agent,
which reads and writes frames all day but signs only once per connection (in a
child process, agent/keychild.py), would otherwise hold cryptography's Rust
extension and its OpenSSL, about 9 MiB, for as long as it runs (docs/benchmarks.md,
"Idle agent").
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    PrivateKey = Ed25519PrivateKey


def __getattr__(name: str) -> Any:
    """``keys.PrivateKey``, cryptography's Ed25519 private key class, on first use."""
    if name == "PrivateKey":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return Ed25519PrivateKey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_openssh(key: Ed25519PrivateKey) -> str:
    """The public key as one ``ssh-ed25519 AAAA...`` line, as SSH tools expect it."""
    from cryptography.hazmat.primitives import serialization

    return key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()


def fingerprint(public: bytes) -> str:
    """A short, stable name for a raw public key (SHA-256, hex)."""
    return hashlib.sha256(public).hexdigest()


def verify(public: bytes, signature: bytes, payload: bytes) -> bool:
    if len(public) != 32 or len(signature) != 64:
        return False
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public).verify(signature, payload)
    except (InvalidSignature, ValueError):
        return False
    return True


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; atomic via rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def save_private(key: Ed25519PrivateKey, path: Path, openssh: bool = False) -> None:
    from cryptography.hazmat.primitives import serialization

    fmt = serialization.PrivateFormat.OpenSSH if openssh else serialization.PrivateFormat.PKCS8
    data = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    write_private_file(path, data)


def load_private(path: Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = path.read_bytes()
    if data.startswith(b"-----BEGIN OPENSSH"):
        key = serialization.load_ssh_private_key(data, password=None)
    else:
        key = serialization.load_pem_private_key(data, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key
