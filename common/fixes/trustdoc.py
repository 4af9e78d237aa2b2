"""The signed fix-trust document: how an agent enrolled before fix keys existed (or after a
relay rotated its fix key) learns the relay's fix-approval key(s) — ``GET
/agent/fix-trust`` -> ``{"payload_b64", "signature_b64"}`` (unpadded base64url, the
protocol's convention; standard base64 is read too).

Why signed by the audit key, like the TLS pin set (common/pinset.py): the agent pinned
that key at enrollment and it never sits on a TLS proxy, so whoever can answer on the
agent's connection cannot swap in a fix key of their own. Why a serial: an agent adopts
a document only with a serial greater than the last one it adopted, so a replayed older
document (naming a retired, perhaps leaked, key) is ignored.

The payload is canonical (context line + compact sorted-key JSON) and is what travels,
base64: the agent verifies the signature over the bytes it received, then reads them.
Offline approver keys are never in it: they live only in the agent's local policy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backline.common import keys, protocol
from backline.common.fixes.revocation import RevocationError, b64decode
from backline.common.fixes.signing import SigningError, pinned_key

CONTEXT = b"backline fix trust v1\n"
MAX_SERIAL = 2**53 - 1
#: The current key and a few being rotated in or out.
MAX_KEYS = 8
MAX_PAYLOAD = 16 * 1024


class TrustDocError(ValueError):
    """A fix-trust document that is not adopted; the message says why."""


@dataclass(frozen=True)
class FixTrustDoc:
    serial: int
    fix_keys: tuple[str, ...]


def payload(audit_public: bytes, serial: int, fix_keys: Sequence[str]) -> bytes:
    """The bytes the relay signs: its audit key's fingerprint, the serial, the key lines."""
    if not isinstance(serial, int) or isinstance(serial, bool) or not (
            1 <= serial <= MAX_SERIAL):
        raise TrustDocError("fix trust: serial must be 1 to 2**53-1")
    if isinstance(fix_keys, str) or not 1 <= len(fix_keys) <= MAX_KEYS:
        raise TrustDocError(f"fix trust: 1 to {MAX_KEYS} fix keys")
    lines = []
    for line in fix_keys:
        try:
            lines.append(pinned_key(line).line)
        except SigningError as exc:
            raise TrustDocError(f"fix trust: {exc}") from None
    if len({pinned_key(line).blob for line in lines}) != len(lines):
        raise TrustDocError("fix trust: duplicate fix keys")
    body = {"fix_keys": lines, "relay": keys.fingerprint(audit_public), "serial": serial}
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                ensure_ascii=True).encode("ascii")


def document(audit_key: keys.PrivateKey, serial: int, fix_keys: Sequence[str]
             ) -> dict[str, str]:
    """What the relay serves on ``GET /agent/fix-trust``."""
    data = payload(keys.public_raw(audit_key), serial, fix_keys)
    return {"payload_b64": protocol.b64e(data), "signature_b64": protocol.b64e(
        audit_key.sign(data))}


def read(doc: Mapping[str, Any], audit_public: bytes, kept_serial: int = 0) -> FixTrustDoc:
    """Check and read a served document: signed by ``audit_public``, for that relay,
    well-formed, and newer than ``kept_serial``. Raises :class:`TrustDocError`."""
    if not isinstance(doc, Mapping):
        raise TrustDocError("fix trust: not an object")
    p64, s64 = doc.get("payload_b64"), doc.get("signature_b64")
    if not isinstance(p64, str) or not isinstance(s64, str) or len(p64) > MAX_PAYLOAD * 2 \
            or len(s64) > 128:
        raise TrustDocError("fix trust: payload_b64 and signature_b64 must be short text")
    try:
        data, signature = b64decode(p64), b64decode(s64)
    except RevocationError:
        raise TrustDocError("fix trust: not base64") from None
    if not keys.verify(audit_public, signature, data):
        raise TrustDocError("fix trust: not signed by the relay's audit key")
    if not data.startswith(CONTEXT):
        raise TrustDocError("fix trust: not a fix trust document")
    try:
        body = json.loads(data[len(CONTEXT):].decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise TrustDocError("fix trust: not JSON") from None
    if not isinstance(body, dict) or set(body) != {"fix_keys", "relay", "serial"} or \
            not isinstance(body["fix_keys"], list):
        raise TrustDocError("fix trust: must be {fix_keys, relay, serial}")
    if body["relay"] != keys.fingerprint(audit_public):
        raise TrustDocError("fix trust: made for another relay")
    if payload(audit_public, body["serial"], body["fix_keys"]) != data:
        raise TrustDocError("fix trust: not in canonical form")
    if body["serial"] <= kept_serial:
        raise TrustDocError(f"fix trust: serial {body['serial']} is not above the kept "
                            f"{kept_serial} (a replay, or nothing new)")
    return FixTrustDoc(body["serial"], tuple(body["fix_keys"]))
