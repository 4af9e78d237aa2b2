"""A signed pin set: what the relay announces on ``GET /agent/pins``, and how an agent
knows the relay itself made it.

Why signed: the connection the agent reads the answer over is trusted by ANY of its
pins, and some of those keys sit elsewhere than the relay (a proxy's key, a backup key
in ``tls_pins``, an old key). Were the connection enough, whoever holds one of them
could replace the whole set: drop the relay's next key and add their own. So the
relay signs the set with its audit key (``audit_key.pem``), which the agent pinned at
enrollment (``audit_public_key`` in ``enrolled``) and which never sits on a TLS proxy.

The signed payload is canonical (compact JSON with sorted keys, after a context line
that no other Backline signature starts with), names the signing key (its
fingerprint: the relay's identity) and carries a serial the relay raises whenever the
set changes; agents adopt only a set with a serial greater than the last one they
adopted, so a replayed older set, however genuine, is ignored.

``bind: "leaf"`` (signed with the rest) tells agents that trust the relay by a CA
that the relay ends TLS itself and knows its own key: they then bind the control
handshake to the key of the certificate they were served (``PeerMatch.spki``), not
to the CA's pin, so a server with another certificate from that CA cannot relay the
handshake to the relay (common/tlspin.py, :attr:`PeerMatch.bound`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from backline.common import keys

CONTEXT = b"backline relay TLS pin set v1\n"
#: Serials are JSON integers every parser reads exactly.
MAX_SERIAL = 2**53 - 1


def payload(audit_public: bytes, serial: int, pins: Sequence[str],
            bind_leaf: bool = False) -> bytes:
    """The bytes the relay signs for ``pins`` (in order: the current key first)."""
    body: dict[str, object] = {"pins": list(pins), "relay": keys.fingerprint(audit_public),
                               "serial": serial}
    if bind_leaf:
        body["bind"] = "leaf"
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(key: keys.PrivateKey, serial: int, pins: Sequence[str],
         bind_leaf: bool = False) -> bytes:
    return key.sign(payload(keys.public_raw(key), serial, pins, bind_leaf))


def verify(audit_public: bytes, serial: int, pins: Sequence[str], signature: bytes,
           bind_leaf: bool = False) -> bool:
    if not 1 <= serial <= MAX_SERIAL:
        return False
    return keys.verify(audit_public, signature, payload(audit_public, serial, pins, bind_leaf))
