"""The relay CA: short-lived SSH user certificates for technicians, one per session.

asyncssh's ``generate_user_certificate`` permits every extension (X11, agent and
port forwarding, pty, user rc) unless told otherwise. Here each one is named and
set: all off, except a pty when the session includes the ``shell`` capability. The
key id names the technician, the only principal is the agent (or the attended
session's name), and the validity is the session's window.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logging.getLogger("asyncssh").setLevel(logging.WARNING)

CLOCK_SKEW_S = 60  # an agent whose clock is a little behind still accepts the certificate


@dataclass(frozen=True)
class ClientCredentials:
    key: asyncssh.SSHKey
    certificate: asyncssh.SSHCertificate
    serial: int
    valid_after: int
    valid_before: int


class RelayCA:
    def __init__(self, ca_key_path: Path) -> None:
        self._key = asyncssh.read_private_key(str(ca_key_path))

    @property
    def public_line(self) -> str:
        return self._key.export_public_key().decode().strip()

    def issue(self, technician: str, principal: str, valid_from: float, valid_until: float,
              pty: bool = False) -> ClientCredentials:
        """A fresh key pair and its certificate; the private key never leaves memory."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        serial = secrets.randbits(63)
        after, before = int(valid_from) - CLOCK_SKEW_S, int(valid_until)
        cert = self._key.generate_user_certificate(
            key, key_id=technician, serial=serial, principals=[principal],
            valid_after=after, valid_before=before,
            permit_x11_forwarding=False, permit_agent_forwarding=False,
            permit_port_forwarding=False, permit_pty=pty, permit_user_rc=False,
            touch_required=False)
        return ClientCredentials(key, cert, serial, after, before)


def host_key_from_raw(raw: bytes) -> asyncssh.SSHKey:
    """An agent's enrollment key (raw Ed25519, as stored) as an SSH host key."""
    line = Ed25519PublicKey.from_public_bytes(raw).public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return asyncssh.import_public_key(line)
