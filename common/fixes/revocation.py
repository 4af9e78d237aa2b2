"""The signed list of revoked fix versions, and how an agent merges a new one into its own.

Why signed: the list reaches agents over the control socket and from the agent's state
dir; only the relay's fix key (pinned like the approval key) may add to it, under its own
namespace ``backline-fix-revocation`` so an approval signature can never pass as a list.

Why a serial and a union: an agent adopts a list only when it is validly signed AND its
serial is greater than the one it kept, so a replayed older list is ignored; and the
entries are UNIONED with what it kept, so no list, however genuine or however new, ever
lifts a revocation. (The merged list is the agent's own record; it is not re-signed.)

A version is revoked by (id, version) or by its digest (:func:`is_revoked`).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backline.common.fixes import signing
from backline.common.fixes.manifest import ID_RE, MAX_VERSION, FixManifest
from backline.common.fixes.manifest import digest as manifest_digest

CONTEXT = b"backline fix revocations v1\n"
NAMESPACE = "backline-fix-revocation"
MAX_SERIAL = 2**53 - 1
MAX_ENTRIES = 10000
MAX_REASON = 500
#: The list travels in ONE control frame (common/protocol.py: 64 KiB of JSON, where the
#: relay's schema bounds ``list_b64`` to 56 KiB of base64 = 43008 bytes): an agent
#: refuses canonical bytes over this; a relay checks :func:`fits_one_frame` and must not
#: send a longer list (it would need another way to carry it, e.g. an HTTP fetch).
MAX_LIST_BYTES = 43008
#: A list too long for one frame is ANNOUNCED instead: the same message with an empty
#: ``list_b64`` and ``signature`` (:func:`is_announcement`), and the agent fetches the
#: list, signed the same way, from ``GET`` :data:`FETCH_PATH` (the body is exactly
#: :func:`encode_message`; 404 while nothing is revoked). Bounds of that answer:
FETCH_PATH = "/agent/fix-revocations"
MAX_FETCHED_LIST_BYTES = 6 * 1024 * 1024
MAX_FETCH_ANSWER = 9 * 1024 * 1024
MAX_AT = 2.0**34  # seconds since the epoch: far beyond any real date
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_B64_RE = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
MESSAGE_TYPE = "fix_revocations"


class RevocationError(ValueError):
    """A revocation list (or entry) that cannot be read; the message says why."""


@dataclass(frozen=True)
class Revoked:
    """One revoked version: ``at`` is seconds since the epoch (the relay's clock)."""

    id: str
    version: int
    digest: str
    reason: str = ""
    at: float = 0.0

    def key(self) -> tuple[str, int, str]:
        return (self.id, self.version, self.digest)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "digest": self.digest,
                "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class RevocationList:
    """A serial and its entries. Build with :func:`make` to get checked, sorted entries."""

    serial: int = 0
    entries: tuple[Revoked, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"serial": self.serial, "entries": [e.as_dict() for e in _normal(self.entries)]}


EMPTY = RevocationList(0, ())


def _normal(entries: Sequence[Revoked]) -> tuple[Revoked, ...]:
    """Sorted by (id, version, digest), one entry per key (the first one seen wins)."""
    seen: dict[tuple[str, int, str], Revoked] = {}
    for e in entries:
        seen.setdefault(e.key(), e)
    return tuple(seen[k] for k in sorted(seen))


def entry(id: str, version: int, digest: str, reason: str = "", at: float = 0.0) -> Revoked:
    """A checked :class:`Revoked` (raises :class:`RevocationError` naming the field)."""
    if not isinstance(id, str) or not ID_RE.fullmatch(id):
        raise RevocationError("revocation id: not a fix id")
    if not isinstance(version, int) or isinstance(version, bool) or not (
            1 <= version <= MAX_VERSION):
        raise RevocationError("revocation version: must be an integer >= 1")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise RevocationError("revocation digest: must be sha256:<64 hex>")
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise RevocationError(f"revocation reason: must be text of at most {MAX_REASON}")
    try:
        reason.encode("utf-8")
    except UnicodeEncodeError:
        raise RevocationError("revocation reason: not valid UTF-8") from None
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or (
            not 0 <= at <= MAX_AT):
        raise RevocationError("revocation at: must be seconds since the epoch")
    return Revoked(id=id, version=version, digest=digest, reason=reason, at=float(at))


def make(serial: int, entries: Sequence[Revoked]) -> RevocationList:
    """A checked list: serial 0..2**53-1, at most 10000 entries, normalised."""
    if not isinstance(serial, int) or isinstance(serial, bool) or not (
            0 <= serial <= MAX_SERIAL):
        raise RevocationError("revocation serial: must be an integer 0 to 2**53-1")
    if len(entries) > MAX_ENTRIES * 2:
        raise RevocationError(f"revocation list: more than {MAX_ENTRIES} entries")
    checked = _normal([entry(e.id, e.version, e.digest, e.reason, e.at) for e in entries])
    if len(checked) > MAX_ENTRIES:
        raise RevocationError(f"revocation list: more than {MAX_ENTRIES} entries")
    return RevocationList(serial, checked)


def fits_one_frame(rl: RevocationList) -> bool:
    """Whether agents accept ``rl`` in one control message (canonical bytes at most
    :data:`MAX_LIST_BYTES`)."""
    return len(canonical_bytes(rl)) <= MAX_LIST_BYTES


def list_from_dict(d: Mapping[str, Any]) -> RevocationList:
    """Read :meth:`RevocationList.as_dict` back (e.g. the agent's state file)."""
    if not isinstance(d, Mapping) or set(d) != {"serial", "entries"}:
        raise RevocationError("revocation list: must be {serial, entries}")
    raw = d["entries"]
    if not isinstance(raw, list) or len(raw) > MAX_ENTRIES:
        raise RevocationError(f"revocation list: entries must be a list of at most "
                              f"{MAX_ENTRIES}")
    entries = []
    for item in raw:
        if not isinstance(item, Mapping) or set(item) != {"id", "version", "digest",
                                                          "reason", "at"}:
            raise RevocationError("revocation entry: must be {id, version, digest, reason, at}")
        entries.append(entry(item["id"], item["version"], item["digest"], item["reason"],
                             item["at"]))
    return make(d["serial"], entries)


def canonical_bytes(rl: RevocationList) -> bytes:
    """What the relay signs: context line + compact sorted-key ASCII JSON."""
    body = json.dumps(rl.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False)
    return CONTEXT + body.encode("ascii")


def from_canonical(data: bytes, max_bytes: int = MAX_LIST_BYTES) -> RevocationList:
    """Parse canonical bytes strictly: they must be exactly what :func:`canonical_bytes`
    makes, at most ``max_bytes`` (one frame's worth unless fetched)."""
    if not isinstance(data, bytes) or len(data) > max_bytes:
        raise RevocationError(f"revocation list: must be at most {max_bytes} bytes")
    if not data.startswith(CONTEXT):
        raise RevocationError("revocation list: not a Backline revocation list")
    try:
        body = json.loads(data[len(CONTEXT):].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RevocationError("revocation list: not JSON") from None
    rl = list_from_dict(body)
    if canonical_bytes(rl) != data:
        raise RevocationError("revocation list: not in canonical form")
    return rl


def sign(rl: RevocationList, private_key_openssh: bytes | str,
         passphrase: str | bytes | None = None) -> str:
    """The relay's armored SSHSIG over the list (namespace ``backline-fix-revocation``)."""
    return signing.sign(canonical_bytes(rl), private_key_openssh, passphrase,
                        namespace=NAMESPACE)


def verify(rl: RevocationList, signature: str | bytes, relay_keys: Sequence[str]
           ) -> str | None:
    """The fingerprint of the pinned relay key that signed ``rl``, else None."""
    return signing.signer_of(canonical_bytes(rl), signature, relay_keys, namespace=NAMESPACE)


def check_update(kept: RevocationList | None, new: RevocationList, signature: str | bytes,
                 relay_keys: Sequence[str]) -> str | None:
    """Why ``new`` is not adopted (``bad_signature`` or ``stale_serial``), or None."""
    if verify(new, signature, relay_keys) is None:
        return "bad_signature"
    if new.serial <= (kept.serial if kept is not None else 0):
        return "stale_serial"
    return None


def merge(kept: RevocationList | None, new: RevocationList, signature: str | bytes,
          relay_keys: Sequence[str]) -> RevocationList:
    """``kept`` with ``new`` adopted if signed and newer: its serial, the entries' union.

    A refused update returns ``kept`` unchanged (call :func:`check_update` to know why,
    to log and audit it).
    """
    base = kept if kept is not None else EMPTY
    if check_update(base, new, signature, relay_keys) is not None:
        return base
    union = _normal((*base.entries, *new.entries))
    return RevocationList(new.serial, union)


def is_revoked(rl: RevocationList | None, m: FixManifest | tuple[str, int, str]
               ) -> Revoked | None:
    """The entry that revokes ``m`` (by (id, version) or by digest), else None."""
    if rl is None:
        return None
    if isinstance(m, FixManifest):
        ident, version, dig = m.id, m.version, manifest_digest(m)
    else:
        ident, version, dig = m
    for e in rl.entries:
        if (e.id == ident and e.version == version) or e.digest == dig:
            return e
    return None


def add(rl: RevocationList, new: Revoked) -> RevocationList:
    """The relay's next list: ``new`` added (if not there already), serial + 1."""
    return make(rl.serial + 1, (*rl.entries, new))


def encode_message(rl: RevocationList, signature: str) -> dict[str, str]:
    """The control message relay -> agent: ``{"type", "list_b64", "signature"}``
    (``list_b64``: standard, padded base64 — what the first API made and the relay's
    and agent's code read; :func:`b64decode` reads base64url too)."""
    return {"type": MESSAGE_TYPE,
            "list_b64": base64.b64encode(canonical_bytes(rl)).decode("ascii"),
            "signature": signature}


def announcement() -> dict[str, str]:
    """The control message that says "a new list is out; fetch it" (:data:`FETCH_PATH`)."""
    return {"type": MESSAGE_TYPE, "list_b64": "", "signature": ""}


def is_announcement(msg: Mapping[str, Any]) -> bool:
    """Whether a ``fix_revocations`` message only announces a list to fetch."""
    return msg.get("list_b64") == "" and msg.get("signature") == ""


def decode_message(msg: Mapping[str, Any], max_bytes: int = MAX_LIST_BYTES
                   ) -> tuple[RevocationList, str]:
    """(list, signature) from the control message, or from the fetched answer with
    ``max_bytes=MAX_FETCHED_LIST_BYTES``; the signature is NOT checked here."""
    if not isinstance(msg, Mapping) or msg.get("type") != MESSAGE_TYPE:
        raise RevocationError("revocation message: wrong type")
    b64, sig = msg.get("list_b64"), msg.get("signature")
    if not isinstance(b64, str) or not isinstance(sig, str):
        raise RevocationError("revocation message: list_b64 and signature must be text")
    if len(b64) > (max_bytes + 2) // 3 * 4 or len(sig) > signing.MAX_ARMOR:
        raise RevocationError("revocation message: too large")
    return from_canonical(b64decode(b64), max_bytes), sig


def b64decode(text: str) -> bytes:
    """Base64url (padded or not: the protocol's way) or standard base64, strictly."""
    urlsafe, standard = "-" in text or "_" in text, "+" in text or "/" in text
    if not _B64_RE.fullmatch(text) or (urlsafe and standard):
        raise RevocationError("not base64")
    bare = text.rstrip("=").replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RevocationError("not base64") from None
