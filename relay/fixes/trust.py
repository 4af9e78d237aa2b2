"""``GET /agent/fix-trust``: the relay's fix keys, signed by its audit key.

Agents enrolled after issue 12 got the fix keys in ``enrolled`` (``fix_keys``). Agents
enrolled before pin only the relay's audit key (``audit_public_key`` in ``enrolled``),
so the relay tells them the fix keys in a document signed by that key, the way it tells
them its TLS pins (common/pinset.py): what makes it trustworthy is the signature, not the
connection it is read over. The format, and how an agent reads it, is the contract both
sides use: :mod:`backline.common.fixes.trustdoc` (``document`` here, ``read`` on the
agent). ``serial`` is 1 while the relay has had one fix key (there is no rotation
command yet); it is to be raised when the set changes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from backline.common.fixes import trustdoc

if TYPE_CHECKING:  # the service (and the CLI through it) needs no web framework
    from starlette.requests import Request
    from starlette.responses import Response

#: The serial of the fix-key set the relay announces.
SERIAL = 1

__all__ = ["SERIAL", "fix_trust_endpoint", "trustdoc"]


async def fix_trust_endpoint(request: Request) -> Response:
    """``GET /agent/fix-trust``: public information (public keys), signed."""
    from starlette.responses import JSONResponse

    relay = request.app.state.relay
    return JSONResponse(relay.fixes.trust_document(), headers={"cache-control": "no-store"})
