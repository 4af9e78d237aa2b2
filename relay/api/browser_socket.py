"""The one gate every browser WebSocket goes through: Origin, sign-in, TOTP, permission.

A WebSocket is not covered by the browser's same-origin rules or by CSRF tokens: any
page the technician visits may open one to the relay with their cookie attached
(cross-site WebSocket hijacking). So every socket a browser can reach (``/api/v1/live``,
the capability streams, the terminal) is admitted here, in one order, before it is
accepted:

1. ``Origin``, when the client sends one, is the relay's own (or a configured extra
   origin). :class:`backline.relay.app.SecurityMiddleware` already refuses a foreign
   one for every socket; it is checked again here so that no socket depends on the
   middleware being mounted in front of it.
2. Someone is signed in (session cookie or bearer token) and does not have to change
   their password first.
3. Someone who must enrol TOTP has done so.
4. They hold the permission the socket needs.

Each refusal closes the socket with a 44xx code and is audited under the socket's own
``<name>.refused`` action; refusals of nobody in particular go through the flood
aggregator by address, so a flood of them is one row, not thousands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.websockets import WebSocket

from backline.relay.webauth import (
    ApiError,
    Principal,
    audit_refusal,
    authenticate,
    client_address,
    needs_totp_enrolment,
    same_origin,
)

if TYPE_CHECKING:
    from backline.relay.state import Relay

__all__ = ["CLOSE_FORBIDDEN", "CLOSE_UNAUTHENTICATED", "admit"]

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


async def admit(ws: WebSocket, *, refused_action: str,
                permission: str | None = None) -> Principal | None:
    """The principal behind a browser socket, or ``None`` after an audited refusal
    (the socket is then closed, and the caller just returns)."""
    relay: Relay = ws.app.state.relay
    address = client_address(ws)
    target = ws.url.path[:256]
    origin = ws.headers.get("origin")
    if origin is not None and not same_origin(relay, origin):
        relay.record_flood(address, f"anonymous@{address}", refused_action, target,
                           reason="bad_origin", origin=origin[:200], address=address)
        await ws.close(CLOSE_FORBIDDEN)
        return None
    try:
        who = authenticate(relay, ws)
    except ApiError as err:  # a bearer token that is refused
        audit_refusal(relay, ws, err)
        await ws.close(CLOSE_UNAUTHENTICATED)
        return None
    if who is None or who.user.must_change_password:
        relay.record_flood(address, f"anonymous@{address}", refused_action, target,
                           reason="unauthenticated", address=address)
        await ws.close(CLOSE_UNAUTHENTICATED)
        return None
    if needs_totp_enrolment(relay, who.user):
        relay.record(who.actor, refused_action, target, reason="totp_enrolment_required",
                     address=address)
        await ws.close(CLOSE_FORBIDDEN)
        return None
    if permission is not None and not who.can(permission):
        err = ApiError(403, "forbidden", f"{permission} is needed", action=refused_action)
        err.principal = who
        audit_refusal(relay, ws, err)
        await ws.close(CLOSE_FORBIDDEN)
        return None
    return who
