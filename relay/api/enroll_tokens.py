"""Enrollment tokens: what a new agent presents once to join."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.common.enrollment import EnrollmentToken
from backline.relay import tokens, users
from backline.relay.api import models as m
from backline.relay.api.agents import visible_group_ids
from backline.relay.api.edge import (
    Ok,
    endpoint,
    reply,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
)


def enroll_command(token: str) -> str:
    return f"backline-agent enroll '{token}'"


@endpoint("enroll:read", answers={200: m.EnrollTokens})
async def list_enroll_tokens(request: Request, relay: Relay, who: Principal) -> Response:
    """Enrollment tokens (never their secrets) with their state."""
    rows = tokens.list_enroll_tokens(relay.engine)
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        names = {g["name"] for g in users.list_groups(relay.engine) if g["id"] in allowed}
        rows = [t for t in rows if t["group"] in names]
    return reply(m.EnrollTokens, {"tokens": rows})


@endpoint("enroll:write", body=m.EnrollTokenCreate, answers={201: m.EnrollTokenCreated},
          refuses=(404,))
async def create_enroll_token(request: Request, relay: Relay, who: Principal, *,
                              body: m.EnrollTokenCreate) -> Response:
    """Create an enrollment token for a group; the answer has the enroll command."""
    group = body.group
    uses = body.uses
    ttl = body.ttl
    gid = users.group_id(relay.engine, group)
    if gid is None:
        raise ApiError(404, "not_found", f"no group named {group!r}")
    allowed = visible_group_ids(relay, who)
    if allowed is not None and gid not in allowed:
        raise ApiError(403, "forbidden", "that group is not one you are granted",
                       action="enroll_token.refused", target=f"group:{group}",
                       reason="group_not_granted")
    try:
        token_id, secret = tokens.create_enroll_token(relay.engine, gid, uses,
                                                      tokens.parse_ttl(ttl), who.actor)
    except ValueError as err:
        raise ApiError(400, "bad_field", str(err)) from None
    token = EnrollmentToken(relay.origin, relay.token_pins, secret,
                            relay.token_serial).encode()
    relay.record(who.actor, "enroll_token.create", f"enroll_token:{token_id}", group=group,
                 uses=uses, ttl=ttl, address=who.address)
    return reply(m.EnrollTokenCreated,
                 {"id": token_id, "token": token, "command": enroll_command(token)},
                 status=201)


TOKEN = {"path": m.TokenPath, "noun": "token"}


@endpoint("enroll:write", **TOKEN)
async def revoke_enroll_token(request: Request, relay: Relay, who: Principal, *,
                              path: m.TokenPath) -> Response:
    """Revoke an enrollment token (of a group you are granted)."""
    token_id = path.token_id
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        gid = tokens.enroll_token_group_id(relay.engine, token_id)
        if gid is not None and gid not in allowed:
            raise ApiError(403, "forbidden", "that token's group is not one you are granted",
                           action="enroll_token.refused", target=f"enroll_token:{token_id}",
                           reason="group_not_granted")
    if not tokens.revoke_enroll_token(relay.engine, token_id):
        raise ApiError(404, "not_found", "no such active token")
    relay.record(who.actor, "enroll_token.revoke", f"enroll_token:{token_id}",
                 address=who.address)
    return reply(Ok, {})


ROUTES = [
    Route("/api/v1/enroll-tokens", list_enroll_tokens, methods=["GET"]),
    Route("/api/v1/enroll-tokens", create_enroll_token, methods=["POST"]),
    Route("/api/v1/enroll-tokens/{token_id}", revoke_enroll_token, methods=["DELETE"]),
]
