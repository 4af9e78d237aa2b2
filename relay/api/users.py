"""Groups, users and who is granted which group."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import users
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
    end_user_sessions,
)


@endpoint("groups:read", answers={200: m.Groups})
async def list_groups(request: Request, relay: Relay, who: Principal) -> Response:
    """Agent groups and who is granted each."""
    rows = users.list_groups(relay.engine)
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        rows = [g for g in rows if g["id"] in allowed]
    return reply(m.Groups, {"groups": rows})


@endpoint("groups:write", body=m.GroupCreate, answers={201: m.GroupCreated})
async def create_group(request: Request, relay: Relay, who: Principal, *,
                       body: m.GroupCreate) -> Response:
    """Create an agent group."""
    name = body.name.strip()
    description = body.description
    try:
        gid = users.create_group(relay.engine, name, description)
    except users.UserError as err:
        raise ApiError(400, "bad_group", str(err)) from None
    relay.record(who.actor, "group.create", f"group:{name}", address=who.address)
    return reply(m.GroupCreated, {"id": gid, "name": name}, status=201)


def _user_and_group(relay: Relay, path: m.GrantPath) -> tuple[users.User, int]:
    gid = path.group_id
    user = users.get_user(relay.engine, username=path.username)
    if user is None:
        raise ApiError(404, "not_found", "no such user")
    if not any(g["id"] == gid for g in users.list_groups(relay.engine)):
        raise ApiError(404, "not_found", "no such group")
    return user, gid


GRANT = {"path": m.GrantPath, "noun": "grant"}


@endpoint("groups:write", **GRANT)
async def grant_group(request: Request, relay: Relay, who: Principal, *,
                      path: m.GrantPath) -> Response:
    """Let a user act on the agents of a group."""
    user, gid = _user_and_group(relay, path)
    users.grant(relay.engine, user.id, gid, allow=True)
    relay.record(who.actor, "group.grant", f"group:{gid}", user=user.username,
                 address=who.address)
    return reply(Ok, {})


@endpoint("groups:write", **GRANT)
async def ungrant_group(request: Request, relay: Relay, who: Principal, *,
                        path: m.GrantPath) -> Response:
    """Withdraw a user's grant on a group."""
    user, gid = _user_and_group(relay, path)
    users.grant(relay.engine, user.id, gid, allow=False)
    relay.record(who.actor, "group.ungrant", f"group:{gid}", user=user.username,
                 address=who.address)
    await relay.sessions.close_matching("grant_withdrawn", who.actor,
                                        technician=user.username, group_id=gid)
    return reply(Ok, {})


@endpoint("users:read", answers={200: m.Users})
async def list_users(request: Request, relay: Relay, who: Principal) -> Response:
    """Users and their roles."""
    return reply(m.Users, {"users": [u.public() for u in users.list_users(relay.engine)]})


@endpoint("users:write", body=m.UserCreate, answers={201: m.UserCreated}, refuses=(503,))
async def create_user(request: Request, relay: Relay, who: Principal, *,
                      body: m.UserCreate) -> Response:
    """Create a user; the answer carries a one-time password to hand over."""
    username = body.username
    role = body.role
    password = users.generate_password()
    try:
        user = await relay.auth.hash_work(users.create_user, relay.engine, username, role,
                                           password, True)
    except users.UserError as err:
        raise ApiError(400, "bad_user", str(err)) from None
    relay.record(who.actor, "user.create", f"user:{username}", role=role, address=who.address)
    return reply(m.UserCreated, {"user": user.public(), "one_time_password": password},
                 status=201)


@endpoint("users:write", path=m.UserPath, noun="user", body=m.UserPatch,
          answers={200: m.UserOne})
async def patch_user(request: Request, relay: Relay, who: Principal, *, path: m.UserPath,
                     body: m.UserPatch) -> Response:
    """Change a user's role, disable them, or require TOTP."""
    changes: dict[str, Any] = body.model_dump(exclude_none=True)
    if not changes:
        raise ApiError(400, "missing_field", "nothing to change")
    user_id = path.user_id
    if user_id == who.user.id and (changes.get("disabled") or changes.get("role", "admin")
                                   != "admin"):
        raise ApiError(400, "self_lockout", "you cannot demote or disable yourself")
    try:
        user = users.update_user(relay.engine, user_id, **changes)
    except users.UserError as err:
        raise ApiError(404, "not_found", str(err)) from None
    if changes.get("disabled"):
        end_user_sessions(relay, user.id)
    relay.record(who.actor, "user.update", f"user:{user.username}", **changes,
                 address=who.address)
    if changes.get("disabled"):
        await relay.sessions.close_matching("technician_disabled", who.actor,
                                            technician=user.username)
    return reply(m.UserOne, {"user": user.public()})


ROUTES = [
    Route("/api/v1/groups", list_groups, methods=["GET"]),
    Route("/api/v1/groups", create_group, methods=["POST"]),
    Route("/api/v1/groups/{group_id}/grants/{username}", grant_group, methods=["PUT"]),
    Route("/api/v1/groups/{group_id}/grants/{username}", ungrant_group,
          methods=["DELETE"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}", patch_user, methods=["PATCH"]),
]
