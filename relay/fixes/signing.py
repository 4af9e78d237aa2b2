"""The relay's online fix-approval key: what an approval signs with.

An approval is an SSH signature (namespace ``backline-fix``) over a version's canonical
bytes, made with ``fix_key`` (OpenSSH Ed25519, mode 0600, in the data directory; made
by :meth:`backline.relay.datadir.DataDir.ensure_keys` at init and on the first start of
an older data directory). Agents pin its public half: in ``enrolled`` (``fix_keys``) and,
for agents enrolled before, in the document of :mod:`.trust`. A relay holding only this
key can approve, but cannot reach an agent whose local policy also asks for offline
signatures (keys the relay never holds).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncssh

from backline.common.fixes import revocation as fix_revocation
from backline.common.fixes import signing as fix_signing


@dataclass(frozen=True)
class FixKey:
    """The loaded key: its private text (never logged), public line and fingerprint."""

    private_openssh: bytes
    public_line: str
    fingerprint: str

    def sign(self, canonical: bytes) -> str:
        """An armored SSH signature over a manifest's canonical bytes."""
        return fix_signing.sign(canonical, self.private_openssh)

    def sign_revocations(self, listed: fix_revocation.RevocationList) -> str:
        """An armored SSH signature over a revocation list (its own namespace)."""
        return fix_revocation.sign(listed, self.private_openssh)


def public_line(key: asyncssh.SSHKey, comment: str = "backline-relay-fix") -> str:
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{kind} {blob} {comment}"


def load(path: Path) -> FixKey:
    data = path.read_bytes()
    key = asyncssh.import_private_key(data)
    return FixKey(data, public_line(key), key.get_fingerprint("sha256"))


def fingerprint_of(line: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, as ssh-keygen prints it."""
    return str(asyncssh.import_public_key(line.strip()).get_fingerprint("sha256"))
