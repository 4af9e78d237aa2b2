"""SSH signatures (SSHSIG) over a fix's canonical bytes, and the agent's trust rule.

Why SSHSIG: it is a published format (OpenSSH's PROTOCOL.sshsig) that ``ssh-keygen -Y
sign``/``-Y verify`` make and check, so an offline approver can sign with the key they
already hold, on a machine that never runs Backline, and anyone can re-check an approval
without our code. ``asyncssh.create_sshsig`` makes them here.

Why asyncssh is imported on first use: importing it took 184-237 ms and 27 MiB of
peak RSS here (a loaded 2-core machine); an agent that never runs a fix never pays that.

Why our own parser for checking: ``asyncssh.validate_sshsig`` verifies under whatever
namespace the signature itself names, reads a *file* when given a ``str``, and accepts
certificates. Here the namespace must be exactly ours (``backline-fix``: a signature
made for ``git`` or ``file`` over the same bytes never counts), the armor and blob are
parsed strictly and bounded, plain keys only, and the key must be one the caller pinned
(its OpenSSH public line). Key names are fingerprints as ``ssh-keygen -l`` prints them
(``SHA256:`` + unpadded base64).

The rule (:func:`check_signatures`): a fix may run iff at least one valid signature is by
a pinned relay key AND at least ``required_offline`` distinct offline keys signed it. A
relay whose database is compromised holds only its own key, so an agent whose local
policy asks for offline signatures cannot be reached by it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from backline.common.fixes.manifest import FixManifest, canonical_bytes

if TYPE_CHECKING:
    import asyncssh

NAMESPACE = "backline-fix"
MAGIC = b"SSHSIG"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
#: Measured with ssh-keygen -Y sign: 306 bytes armored for ed25519, 2951 for RSA-8192.
MAX_ARMOR = 8192
#: More signatures than this on one version is not an approval, it is noise.
MAX_SIGNATURES = 32
MIN_RSA_BITS = 2048
HASHES = {b"sha256": hashlib.sha256, b"sha512": hashlib.sha512}
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-ed448", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-rsa",
})
_KEY_LINE_RE = re.compile(r"([a-z0-9@.-]{3,64}) +([A-Za-z0-9+/]+={0,2})(?: +[^\x00-\x1f]*)?")

REASONS = ("unsigned", "unpinned_key", "bad_signature", "not_enough_signatures")


class SigningError(ValueError):
    """A key or signature that cannot be used; the message says which and why."""


def _asyncssh() -> Any:
    import asyncssh

    return asyncssh


class _Wire:
    """Reads SSH wire encoding (RFC 4251 uint32 and length-prefixed strings), bounded."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def uint32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def string(self) -> bytes:
        return self.take(self.uint32())

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ValueError("trailing bytes")


def _string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


# -- keys -----------------------------------------------------------------------------

@dataclass(frozen=True)
class PinnedKey:
    """One pinned public key: its SSH wire blob and ssh-keygen fingerprint."""

    blob: bytes
    fingerprint: str
    line: str


def _rsa_bits(blob: bytes) -> int:
    wire = _Wire(blob)
    wire.string()  # "ssh-rsa"
    wire.string()  # e
    return int.from_bytes(wire.string(), "big").bit_length()


def _check_key_type(key: asyncssh.SSHKey) -> None:
    alg = key.get_algorithm()
    if alg not in KEY_TYPES:
        raise SigningError(f"key type {alg} is not accepted for fix signatures")
    if alg == "ssh-rsa" and _rsa_bits(key.public_data) < MIN_RSA_BITS:
        raise SigningError(f"RSA keys must have at least {MIN_RSA_BITS} bits")


def pinned_key(line: str) -> PinnedKey:
    """Parse one OpenSSH public key line (``ssh-ed25519 AAAA... comment``)."""
    if not isinstance(line, str) or len(line) > 16384:
        raise SigningError("a pinned key must be one OpenSSH public key line")
    return _pinned_key(line)


@lru_cache(maxsize=256)
def _pinned_key(line: str) -> PinnedKey:
    text = line.strip()
    match = _KEY_LINE_RE.fullmatch(text)
    if not match or "-cert-" in match.group(1):
        raise SigningError(f"not an OpenSSH public key line: {text[:40]!a}")
    ssh = _asyncssh()
    try:
        key = ssh.import_public_key(f"{match.group(1)} {match.group(2)}")
    except (ssh.KeyImportError, ValueError, binascii.Error):
        raise SigningError(f"not a valid public key: {text[:40]!a}") from None
    _check_key_type(key)
    if key.get_algorithm() != match.group(1):
        raise SigningError(f"key type {match.group(1)} does not match the key")
    return PinnedKey(blob=key.public_data, fingerprint=key.get_fingerprint("sha256"),
                     line=text)


def fingerprint(public_key_line: str) -> str:
    """``SHA256:...`` of an OpenSSH public key line, as ``ssh-keygen -lf`` prints it."""
    return pinned_key(public_key_line).fingerprint


def public_line(private_key_openssh: bytes | str, passphrase: str | bytes | None = None,
                comment: str | None = None) -> str:
    """The OpenSSH public line of a private key (what agents and policies pin)."""
    if comment is not None and (not comment.isprintable() or len(comment) > 200):
        raise SigningError("a key comment must be one printable line of at most 200")
    key = _private(private_key_openssh, passphrase)
    line = key.export_public_key("openssh").decode("ascii").split()
    parts = line[:2] + ([comment] if comment else [])
    return " ".join(parts)


def _private(private_key_openssh: bytes | str,
             passphrase: str | bytes | None) -> asyncssh.SSHKey:
    ssh = _asyncssh()
    try:
        key = ssh.import_private_key(private_key_openssh, passphrase)
    except ssh.KeyEncryptionError as exc:
        raise SigningError(f"cannot decrypt the private key: {exc}") from None
    except (ssh.KeyImportError, ValueError, TypeError):
        raise SigningError("not a usable private key (OpenSSH format expected)") from None
    _check_key_type(key)
    return key


def generate_key(comment: str = "") -> tuple[bytes, str]:
    """A new ed25519 key: (OpenSSH private key bytes, public line)."""
    key = _asyncssh().generate_private_key("ssh-ed25519", comment=comment or None)
    return key.export_private_key("openssh"), public_line(
        key.export_private_key("openssh"), comment=comment or None)


# -- signatures -----------------------------------------------------------------------

def sign(canonical: bytes, private_key_openssh: bytes | str,
         passphrase: str | bytes | None = None, *, namespace: str = NAMESPACE) -> str:
    """An armored SSHSIG over ``canonical`` (what ``ssh-keygen -Y sign -n NS`` makes)."""
    if not isinstance(canonical, bytes):
        # asyncssh reads a *file* named by a str: never let text through by mistake.
        raise TypeError("canonical must be bytes")
    if not isinstance(namespace, str) or not namespace.startswith("backline-"):
        raise SigningError("a Backline signature's namespace starts with backline-")
    key = _private(private_key_openssh, passphrase)
    armored = _asyncssh().create_sshsig(key, canonical, namespace=namespace,
                                        hash_name="sha512")
    return armored.decode("ascii")


@dataclass(frozen=True)
class _Parsed:
    blob: bytes
    namespace: str
    hash_name: bytes
    signature: bytes


def _unarmor(armored: str | bytes) -> bytes | None:
    if isinstance(armored, bytes):
        try:
            armored = armored.decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(armored, str) or len(armored) > MAX_ARMOR:
        return None
    lines = [line.strip() for line in armored.strip().splitlines()]
    if len(lines) < 3 or lines[0] != BEGIN or lines[-1] != END:
        return None
    body = "".join(lines[1:-1])
    if not body.isascii():
        return None
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        return None


def _parse(armored: str | bytes) -> _Parsed | None:
    raw = _unarmor(armored)
    if raw is None:
        return None
    try:
        wire = _Wire(raw)
        if wire.take(6) != MAGIC or wire.uint32() != 1:
            return None
        blob = wire.string()
        namespace = wire.string()
        reserved = wire.string()
        hash_name = wire.string()
        signature = wire.string()
        wire.end()
    except ValueError:
        return None
    if reserved or hash_name not in HASHES:
        return None
    try:
        ns = namespace.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return _Parsed(blob=blob, namespace=ns, hash_name=hash_name, signature=signature)


def _signed_data(canonical: bytes, p: _Parsed) -> bytes:
    h = HASHES[p.hash_name](canonical).digest()
    return (MAGIC + _string(p.namespace.encode("utf-8")) + _string(b"")
            + _string(p.hash_name) + _string(h))


def _verify(canonical: bytes, armored: str | bytes, namespace: str
            ) -> tuple[str, bytes | None, str | None]:
    """("ok"|"bad", key blob, fingerprint): is this a valid signature by its own key?"""
    p = _parse(armored)
    if p is None or p.namespace != namespace:
        return "bad", None, None
    ssh = _asyncssh()
    try:
        alg_name = _Wire(p.blob).string().decode("ascii")
        if alg_name not in KEY_TYPES:  # certificates too: plain keys only
            return "bad", None, None
        key = ssh.import_public_key(
            f"{alg_name} {base64.b64encode(p.blob).decode('ascii')}")
        _check_key_type(key)
        if key.public_data != p.blob:
            return "bad", None, None
    except (ssh.KeyImportError, SigningError, ValueError, UnicodeDecodeError):
        return "bad", None, None
    if key.get_algorithm() == "ssh-rsa":
        try:
            alg = _Wire(p.signature).string()
        except ValueError:
            return "bad", None, None
        if alg not in (b"rsa-sha2-256", b"rsa-sha2-512"):
            return "bad", None, None
    if not key.verify(_signed_data(canonical, p), p.signature):
        return "bad", p.blob, None
    return "ok", p.blob, key.get_fingerprint("sha256")


def signer_of(canonical: bytes, armored: str | bytes, trusted: Sequence[str], *,
              namespace: str = NAMESPACE) -> str | None:
    """The fingerprint of the pinned key in ``trusted`` that validly signed, else None."""
    if not isinstance(canonical, bytes):
        raise TypeError("canonical must be bytes")
    if isinstance(trusted, str | bytes):
        raise SigningError("trusted must be a list of OpenSSH public key lines")
    pinned = {pinned_key(line).blob for line in trusted}
    status, blob, fp = _verify(canonical, armored, namespace)
    if status != "ok":
        return None
    return fp if blob in pinned else None


# -- the trust rule -------------------------------------------------------------------

@dataclass(frozen=True)
class FixTrust:
    """What an agent trusts: relay approval keys (from enrollment / the signed trust
    document) and offline approver keys + how many of them must sign (local policy only).
    """

    relay_keys: tuple[str, ...]
    offline_keys: tuple[str, ...] = ()
    required_offline: int = 0

    def __post_init__(self) -> None:
        for name in ("relay_keys", "offline_keys"):
            if isinstance(getattr(self, name), str | bytes):
                raise SigningError(f"{name} must be a list of OpenSSH public key lines")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for line in (*self.relay_keys, *self.offline_keys):
            pinned_key(line)  # raises SigningError naming the bad line
        if not isinstance(self.required_offline, int) or isinstance(self.required_offline,
                                                                     bool):
            raise SigningError("required_offline must be an integer")
        offline = self.offline_fingerprints()
        if not 0 <= self.required_offline <= len(offline):
            raise SigningError(f"required_offline must be 0 to {len(offline)} (the number "
                               f"of distinct offline keys not also relay keys), got "
                               f"{self.required_offline}")

    def relay_fingerprints(self) -> frozenset[str]:
        return frozenset(pinned_key(line).fingerprint for line in self.relay_keys)

    def offline_fingerprints(self) -> frozenset[str]:
        """Offline keys that count: a key also pinned as a relay key never does."""
        return frozenset(pinned_key(line).fingerprint for line in self.offline_keys
                         ) - self.relay_fingerprints()


@dataclass(frozen=True)
class TrustVerdict:
    """``ok`` or the reason (one of :data:`REASONS`), with the valid pinned signers."""

    ok: bool
    signers: tuple[str, ...]
    reason: str | None
    detail: str = ""
    relay_signers: tuple[str, ...] = ()
    offline_signers: tuple[str, ...] = ()


def check_signatures(m: FixManifest | bytes, sigs: Sequence[object],
                     trust: FixTrust) -> TrustVerdict:
    """Apply the rule to ``sigs`` over ``m``'s canonical bytes (or the bytes themselves).

    Signatures that do not verify, or are by keys not pinned, are ignored when the rule
    is met anyway; when it is not, the reason says what was wrong, most serious first:
    ``bad_signature`` (one does not verify for these bytes: tampered, another version's,
    malformed, wrong namespace), then ``unpinned_key``, then ``not_enough_signatures``.
    """
    canonical = m if isinstance(m, bytes) else canonical_bytes(m)
    if isinstance(sigs, str | bytes) or not isinstance(sigs, Sequence):
        return TrustVerdict(False, (), "bad_signature", "signatures must be a list")
    if not sigs:
        return TrustVerdict(False, (), "unsigned", "no signature")
    if len(sigs) > MAX_SIGNATURES:
        return TrustVerdict(False, (), "bad_signature",
                            f"{len(sigs)} signatures, more than {MAX_SIGNATURES}")
    relay_fps = trust.relay_fingerprints()
    offline_fps = trust.offline_fingerprints()
    relay: list[str] = []
    offline: list[str] = []
    bad = unpinned = 0
    for sig in sigs:
        if not isinstance(sig, str | bytes):
            bad += 1
            continue
        status, _blob, fp = _verify(canonical, sig, NAMESPACE)
        if status != "ok" or fp is None:
            bad += 1
        elif fp in relay_fps:
            if fp not in relay:
                relay.append(fp)
        elif fp in offline_fps:
            if fp not in offline:
                offline.append(fp)
        else:
            unpinned += 1
    signers = tuple(relay + offline)
    common = {"relay_signers": tuple(relay), "offline_signers": tuple(offline)}
    if relay and len(offline) >= trust.required_offline:
        return TrustVerdict(True, signers, None, "", **common)
    if bad:
        reason, detail = "bad_signature", f"{bad} signature(s) do not verify for these bytes"
    elif unpinned:
        reason, detail = "unpinned_key", f"{unpinned} signature(s) by keys not pinned"
    elif not relay:
        reason, detail = "not_enough_signatures", "no signature by a pinned relay key"
    else:
        reason, detail = "not_enough_signatures", (
            f"{len(offline)} of {trust.required_offline} required offline signatures")
    return TrustVerdict(False, signers, reason, detail, **common)
