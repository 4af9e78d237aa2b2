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


class FixKeyMissing(RuntimeError):
    """The data directory has no ``fix_key``: only ``backline-relay init`` (or the relay's
    start, :meth:`~backline.relay.datadir.DataDir.ensure_keys`) makes one. A key made
    silently elsewhere would sign approvals no agent pins (every run refused
    ``unpinned_key``), so its absence is an error that says what to do."""


#: The comment of the public line agents pin.
COMMENT = "backline-relay-fix"


def load(path: Path) -> FixKey:
    """The key at ``path`` (checked by common/fixes/signing.py: an Ed25519 or other
    accepted type, OpenSSH format); :class:`FixKeyMissing` if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FixKeyMissing(f"the relay's fix-approval key {path} is missing: restore it "
                            "from a backup (agents pin it), or run `backline-relay init` on "
                            "a new data directory; no new key is made silently") from None
    line = fix_signing.public_line(data, comment=COMMENT)
    return FixKey(data, line, fix_signing.fingerprint(line))
