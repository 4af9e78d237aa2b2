"""API tokens for automation (scoped; never shown again after creation)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import tokens
from backline.relay.api import models as m
from backline.relay.api.edge import (
    Ok,
    endpoint,
    reply,
)
from backline.relay.api.enroll_tokens import TOKEN
from backline.relay.roles import TOKEN_SCOPES
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
)


@endpoint("apitokens:write", answers={200: m.ApiTokens})
async def list_api_tokens(request: Request, relay: Relay, who: Principal) -> Response:
    """Your API tokens (all of them, for admins)."""
    mine = None if who.user.role == "admin" else who.user.id
    return reply(m.ApiTokens, {"tokens": tokens.list_api_tokens(relay.engine, mine),
                               "scopes": sorted(TOKEN_SCOPES)})


@endpoint("apitokens:write", body=m.ApiTokenCreate, answers={201: m.ApiTokenCreated})
async def create_api_token(request: Request, relay: Relay, who: Principal, *,
                           body: m.ApiTokenCreate) -> Response:
    """Create an API token: scoped, expiring, optionally bound to addresses."""
    name = body.name
    scopes = list(body.scopes)
    ttl = body.ttl
    cidrs = list(body.allowed_cidrs)
    beyond = set(scopes) - who.permissions
    if beyond:
        raise ApiError(403, "forbidden", f"you do not hold {', '.join(sorted(beyond))}",
                       action="api_token.create.refused", target=who.actor,
                       scopes=sorted(beyond))
    try:
        token_id, token = tokens.create_api_token(relay.engine, who.user.id, name, scopes,
                                                  tokens.parse_ttl(ttl), cidrs)
    except ValueError as err:
        raise ApiError(400, "bad_field", str(err)) from None
    relay.record(who.actor, "api_token.create", f"api_token:{token_id}", name=name,
                 scopes=sorted(scopes), ttl=ttl, allowed_cidrs=cidrs, address=who.address)
    return reply(m.ApiTokenCreated, {"id": token_id, "token": token}, status=201)


@endpoint("apitokens:write", **TOKEN)
async def revoke_api_token(request: Request, relay: Relay, who: Principal, *,
                           path: m.TokenPath) -> Response:
    """Revoke an API token (your own; admins may revoke any)."""
    token_id = path.token_id
    owner = None if who.user.role == "admin" else who.user.id
    if not tokens.revoke_api_token(relay.engine, token_id, owner):
        raise ApiError(404, "not_found", "no such active token of yours")
    relay.record(who.actor, "api_token.revoke", f"api_token:{token_id}", address=who.address)
    return reply(Ok, {})


ROUTES = [
    Route("/api/v1/api-tokens", list_api_tokens, methods=["GET"]),
    Route("/api/v1/api-tokens", create_api_token, methods=["POST"]),
    Route("/api/v1/api-tokens/{token_id}", revoke_api_token, methods=["DELETE"]),
]
