"""``GET /agent/fix-trust``: the relay's fix keys, signed by its audit key.

Agents enrolled after issue 12 got the fix keys in ``enrolled`` (``fix_keys``). Agents
enrolled before pin only the relay's audit key (``audit_public_key`` in ``enrolled``),
so the relay tells them the fix keys in a document signed by that key, the way it
tells them its TLS pins (common/pinset.py): the connection the agent reads it over is
not what makes it trustworthy (any pinned TLS key opens that), the signature is.

Payload (what is signed, bytes)::

    b"backline relay fix trust v1\\n" + compact sorted-key JSON of
    {"fix_keys": ["ssh-ed25519 AAAA... backline-relay-fix"], "relay": "<audit key
     fingerprint, as common.keys.fingerprint>", "serial": N}

Answer: ``{"payload_b64": base64url(payload), "signature_b64": base64url(Ed25519
signature by the audit key)}`` (base64url without padding, as common.protocol.b64e).
``serial`` is 1 while the relay has had one fix key; it is raised when the set changes,
and an agent adopts a document only with a serial above the one it holds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backline.common import keys, protocol

CONTEXT = b"backline relay fix trust v1\n"
MAX_SERIAL = 2**53 - 1


def payload(audit_public: bytes, serial: int, fix_keys: Sequence[str]) -> bytes:
    body = {"fix_keys": list(fix_keys), "relay": keys.fingerprint(audit_public),
            "serial": serial}
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def document(audit_key: keys.PrivateKey, serial: int, fix_keys: Sequence[str]
             ) -> dict[str, str]:
    data = payload(keys.public_raw(audit_key), serial, fix_keys)
    return {"payload_b64": protocol.b64e(data),
            "signature_b64": protocol.b64e(audit_key.sign(data))}


def verify(audit_public: bytes, answer: Any) -> tuple[int, list[str]] | None:
    """``(serial, fix_keys)`` of a document signed by ``audit_public``, or None. What an
    agent does with the answer (it also keeps the serial it adopted)."""
    if not isinstance(answer, dict):
        return None
    try:
        data = protocol.b64d(str(answer["payload_b64"]))
        sig = protocol.b64d(str(answer["signature_b64"]))
    except (KeyError, protocol.ProtocolError):
        return None
    if not data.startswith(CONTEXT) or not keys.verify(audit_public, sig, data):
        return None
    try:
        body = json.loads(data[len(CONTEXT):])
        serial, fix_keys = body["serial"], body["fix_keys"]
    except (ValueError, KeyError, TypeError):
        return None
    if (not isinstance(serial, int) or isinstance(serial, bool) or not 1 <= serial <= MAX_SERIAL
            or not isinstance(fix_keys, list) or not all(isinstance(k, str) for k in fix_keys)
            or body.get("relay") != keys.fingerprint(audit_public)):
        return None
    return serial, fix_keys


async def fix_trust_endpoint(request: Request) -> Response:
    """``GET /agent/fix-trust``: public information (public keys), signed."""
    relay = request.app.state.relay
    return JSONResponse(relay.fixes.trust_document(),
                        headers={"cache-control": "no-store"})
