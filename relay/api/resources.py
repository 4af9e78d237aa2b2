"""The REST API under ``/api/v1``: what the console and automation call.

Every handler states the permission it needs; :func:`endpoint` authenticates,
checks CSRF and permission, and turns :class:`ApiError` into a JSON answer, so a
refusal is always a clear ``{"error", "detail"}`` that was audited first.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import segno
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backline.common.enrollment import EnrollmentToken
from backline.relay import agents, tokens, users
from backline.relay.api import models as m
from backline.relay.api.edge import (
    Ok,
    endpoint,
    error_response,
    read_body,
    relay_of,
    reply,
    unwrapped,
)
from backline.relay.roles import TOKEN_SCOPES
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
    audit_refusal,
    client_address,
    cookie_header,
    create_session,
    end_session,
    end_user_sessions,
    needs_totp_enrolment,
    same_origin,
)

__all__ = ["ROUTES", "agent_by_id", "agent_for", "endpoint", "relay_of", "visible_group_ids"]


# --- auth --------------------------------------------------------------------------


@unwrapped(body=m.Login, answers={200: m.SignedIn}, refuses=(401, 403, 429, 503))
async def login(request: Request) -> Response:
    """Sign in with username, password and (when enrolled) a TOTP code."""
    relay = relay_of(request)
    address = client_address(request)
    try:
        data: m.Login = await read_body(request, m.Login)
        username = data.username.strip().lower()
        password = data.password
        code = data.totp.strip()
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(relay, origin):
            raise ApiError(403, "bad_origin", "cross-site request refused",
                           target=f"user:{username}", origin=origin[:200])
        # Reserved in the limits, evaluated, settled (429/503 raised there, audited).
        user, reason = await relay.auth.sign_in(request, username, password, code)
        if reason:
            failed = {"action": "auth.login.failed", "metric": "login_failed",
                      "target": f"user:{username}", "reason": reason}
            if reason == "totp_missing":
                raise ApiError(401, "totp_required", "enter the code from your authenticator",
                               **failed)
            raise ApiError(401, "bad_credentials", "wrong username, password or code",
                           **failed)
        assert user is not None
        cookie, csrf = create_session(relay, user, address)
        relay.record(f"user:{user.username}", "auth.login", f"user:{user.username}",
                     address=address, totp=user.totp_enabled)
    except ApiError as err:
        audit_refusal(relay, request, err)
        return error_response(err)
    response = reply(m.SignedIn, {"user": user.public(), "csrf_token": csrf})
    response.headers.append("set-cookie", cookie_header(
        cookie, int(relay.config.web_session_hours * 3600)))
    response.headers.append("set-cookie", relay.auth.device_cookie(request, user))
    return response


@endpoint(None)
async def logout(request: Request, relay: Relay, who: Principal) -> Response:
    """End this browser session."""
    if who.session_hash:
        end_session(relay, who.session_hash)
    relay.record(who.actor, "auth.logout", who.actor, address=who.address)
    response = reply(Ok, {})
    response.headers.append("set-cookie", cookie_header("", 0))
    return response


@endpoint(None, answers={200: m.Me})
async def me(request: Request, relay: Relay, who: Principal) -> Response:
    """The signed-in user, their permissions and this session's CSRF token."""
    return reply(m.Me, {"user": who.user.public(), "permissions": sorted(who.permissions),
                        "csrf_token": who.csrf_token,
                        "totp_enrolment_required": needs_totp_enrolment(relay, who.user)})


@endpoint(None, body=m.PasswordChange, answers={200: m.PasswordChanged},
          refuses=(429, 503))
async def change_password(request: Request, relay: Relay, who: Principal, *,
                          body: m.PasswordChange) -> Response:
    """Replace your password (required after a one-time password)."""
    if who.token:
        raise ApiError(403, "forbidden", "API tokens cannot change passwords")
    current = body.current
    new = body.new
    if not await relay.auth.reauth(who, "password_change", current):  # limited per user
        raise ApiError(403, "bad_credentials", "the current password is wrong",
                       action="auth.password.refused", target=who.actor,
                       reason="bad_password")
    try:
        await relay.auth.hash_work(users.set_password, relay.engine, who.user.id, new)
    except users.UserError as err:
        raise ApiError(400, "weak_password", str(err)) from None
    # Whoever else held a session of this account (the old password may have leaked)
    # is signed out; this browser stays signed in.
    ended = end_user_sessions(relay, who.user.id, keep=who.session_hash)
    relay.record(who.actor, "auth.password.changed", who.actor, address=who.address,
                 other_sessions_ended=ended)
    response = reply(m.PasswordChanged, {"other_sessions_ended": ended})
    # The change made every device cookie of the account void (its credential epoch
    # went up); this browser, which just proved the password, gets a new one.
    changed = users.get_user(relay.engine, user_id=who.user.id)
    if changed is not None:
        response.headers.append("set-cookie", relay.auth.device_cookie(request, changed))
    return response


@endpoint(None, body=m.TotpReplace, answers={200: m.TotpSecret}, refuses=(429, 503))
async def totp_begin(request: Request, relay: Relay, who: Principal, *,
                     body: m.TotpReplace) -> Response:
    """Start enrolling an authenticator: a secret, its otpauth URI and a QR code (SVG).
    Replacing an active one needs ``{"password", "code"}`` (a current code from it)."""
    if who.token:
        raise ApiError(403, "forbidden", "API tokens cannot enrol a second factor")
    if who.user.totp_enabled:  # replacing it: whoever holds this session must prove more
        password = body.password
        code = body.code.strip()
        if not (password and code and await relay.auth.reauth(who, "totp_replace", password,
                                                                code)):
            raise ApiError(403, "reauth_required", "replacing an active authenticator needs "
                           "your password and a current code from it",
                           action="auth.totp.refused", target=who.actor,
                           reason="reauth_missing" if not (password and code)
                           else "reauth_failed")
    secret = users.begin_totp(relay.engine, who.user)
    uri = users.totp_uri(secret, who.user.username)
    svg = segno.make(uri, error="m").svg_inline(scale=4)
    relay.record(who.actor, "auth.totp.begin", who.actor, address=who.address)
    return reply(m.TotpSecret, {"secret": secret, "uri": uri, "qr_svg": svg})


@endpoint(None, body=m.TotpConfirm, refuses=(429,))
async def totp_confirm(request: Request, relay: Relay, who: Principal, *,
                       body: m.TotpConfirm) -> Response:
    """Finish enrolling an authenticator by entering one code from it."""
    if who.token:
        raise ApiError(403, "forbidden", "API tokens cannot enrol a second factor")
    code = body.code
    if not relay.auth.confirm_totp(who, code):  # limited per user
        raise ApiError(400, "bad_totp", "that code does not match; check the device's clock",
                       action="auth.totp.refused", target=who.actor)
    relay.record(who.actor, "auth.totp.enabled", who.actor, address=who.address)
    return reply(Ok, {})


# --- agents ------------------------------------------------------------------------


def visible_group_ids(relay: Relay, who: Principal) -> set[int] | None:
    return users.granted_group_ids(relay.engine, who.user)


def agent_for(request: Request, relay: Relay, who: Principal, acting: bool) -> dict[str, Any]:
    """The agent named in the path (checked by the route's path model), if ``who`` may
    see (and act on) it."""
    return agent_by_id(relay, who, request.path_params["agent_id"], acting)


def agent_by_id(relay: Relay, who: Principal, agent_id: str, acting: bool) -> dict[str, Any]:
    """The agent ``agent_id``, if ``who`` may see (and act on) it; refusals audited."""
    agent = agents.get_agent(relay.engine, relay.presence, agent_id[:64])
    if agent is None:
        raise ApiError(404, "not_found", "no such agent")
    allowed = visible_group_ids(relay, who)
    if who.user.role == "auditor" and acting:
        allowed = set()
    if allowed is not None and agent["group_id"] not in allowed:
        raise ApiError(403, "forbidden", "that agent is not in a group you are granted",
                       action="agent.access.refused", target=f"agent:{agent['id']}",
                       metric="group_forbidden", reason="group_not_granted",
                       group=agent["group"])
    return agent


AGENT = {"path": m.AgentPath, "noun": "agent"}


@endpoint("agents:read", query=m.AgentQuery, answers={200: m.Agents})
async def list_agents(request: Request, relay: Relay, who: Principal, *,
                      query: m.AgentQuery) -> Response:
    """Agents you may see; filter with ?group=, ?status=online|offline and ?q=text."""
    rows = agents.list_agents(relay.engine, relay.presence, visible_group_ids(relay, who))
    group = query.group
    status = query.status
    text = query.q.lower()
    if group:
        rows = [a for a in rows if a["group"] == group]
    if status in ("online", "offline"):
        rows = [a for a in rows if a["online"] == (status == "online")]
    if text:
        rows = [a for a in rows if any(text in str(a[k]).lower() for k in
                                       ("id", "hostname", "os", "label", "group"))]
    return reply(m.Agents, {"agents": rows})


@endpoint("agents:read", **AGENT, answers={200: m.Agent})
async def get_agent(request: Request, relay: Relay, who: Principal, *,
                    path: m.AgentPath) -> Response:
    """One agent with everything it reported."""
    return reply(m.Agent, agent_by_id(relay, who, path.agent_id, acting=False))


@endpoint("agents:write", **AGENT, body=m.AgentPatch, answers={200: m.Agent})
async def patch_agent(request: Request, relay: Relay, who: Principal, *, path: m.AgentPath,
                      body: m.AgentPatch) -> Response:
    """Set an agent's label (a name technicians give it)."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    label = body.label
    agents.update_agent(relay.engine, agent["id"], label=label)
    relay.record(who.actor, "agent.label", f"agent:{agent['id']}", label=label,
                 address=who.address)
    relay.bus.publish({"type": "agent", "agent_id": agent["id"], "group_id": agent["group_id"],
                       "changed": {"label": label}})
    return reply(m.Agent, agents.get_agent(relay.engine, relay.presence, agent["id"]))


@endpoint("agents:write", **AGENT, answers={200: m.Ping}, refuses=(409, 504))
async def ping_agent(request: Request, relay: Relay, who: Principal, *,
                     path: m.AgentPath) -> Response:
    """Round trip over the agent's control socket, in milliseconds."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    conn = relay.presence.get(agent["id"])
    if conn is None:
        raise ApiError(409, "offline", "the agent is offline")
    from backline.relay.control import ping

    rtt = await ping(relay, conn)
    relay.record(who.actor, "agent.ping", f"agent:{agent['id']}", rtt_ms=rtt,
                 address=who.address)
    if rtt is None:
        raise ApiError(504, "timeout", "the agent did not answer within 10 s")
    return reply(m.Ping, {"rtt_ms": rtt})


@endpoint("groups:write", **AGENT)
async def revoke_agent(request: Request, relay: Relay, who: Principal, *,
                       path: m.AgentPath) -> Response:
    """Revoke an agent: it can no longer connect, and is disconnected now."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    agents.update_agent(relay.engine, agent["id"], revoked_at=time.time())
    conn = relay.presence.get(agent["id"])
    if conn is not None:
        await conn.close(4003, "revoked")
    relay.record(who.actor, "agent.revoke", f"agent:{agent['id']}", address=who.address)
    await relay.sessions.close_matching("agent_revoked", who.actor, agent_id=agent["id"])
    return reply(Ok, {})


# --- groups and users --------------------------------------------------------------


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


# --- enrollment tokens -------------------------------------------------------------


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


# --- API tokens --------------------------------------------------------------------


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


# --- audit -------------------------------------------------------------------------


@endpoint("audit:read", query=m.AuditQuery, answers={200: m.AuditPage})
async def list_audit(request: Request, relay: Relay, who: Principal, *,
                     query: m.AuditQuery) -> Response:
    """Audit events, newest first; filter by actor, action (prefix), target, since, until;
    page with ``before`` = the smallest ``seq`` of the previous page."""
    q = query
    limit = q.limit
    events = relay.audit.query(
        actor=q.actor or None, action=q.action or None, target=q.target or None,
        since=q.since, until=q.until, before_seq=q.before, limit=limit)
    next_before = events[-1]["seq"] if len(events) == limit else None
    return reply(m.AuditPage, {"events": events, "next_before": next_before})


@endpoint("audit:read", answers={200: m.AuditVerify})
async def verify_audit(request: Request, relay: Relay, who: Principal) -> Response:
    """Walk the whole trail and report the first broken record, if any."""
    result = await asyncio.to_thread(relay.audit.verify)
    return reply(m.AuditVerify, {**result.as_dict(), "summary": result.describe()})


@endpoint("audit:read", query=m.ExportQuery, answers={200: "application/x-ndjson"})
async def export_audit(request: Request, relay: Relay, who: Principal, *,
                       query: m.ExportQuery) -> Response:
    """The trail as JSON lines, oldest first, with each record's hashes."""
    since = query.since
    relay.record(who.actor, "audit.export", "audit", since=since, address=who.address)

    def lines() -> Any:
        for event in relay.audit.export(since):
            yield json.dumps(event, ensure_ascii=False) + "\n"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "content-disposition": f'attachment; filename="backline-audit-{stamp}.jsonl"'})


ROUTES = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/me", me, methods=["GET"]),
    Route("/api/v1/auth/password", change_password, methods=["POST"]),
    Route("/api/v1/auth/totp/begin", totp_begin, methods=["POST"]),
    Route("/api/v1/auth/totp/confirm", totp_confirm, methods=["POST"]),
    Route("/api/v1/agents", list_agents, methods=["GET"]),
    Route("/api/v1/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/api/v1/agents/{agent_id}", patch_agent, methods=["PATCH"]),
    Route("/api/v1/agents/{agent_id}", revoke_agent, methods=["DELETE"]),
    Route("/api/v1/agents/{agent_id}/ping", ping_agent, methods=["POST"]),
    Route("/api/v1/groups", list_groups, methods=["GET"]),
    Route("/api/v1/groups", create_group, methods=["POST"]),
    Route("/api/v1/groups/{group_id}/grants/{username}", grant_group, methods=["PUT"]),
    Route("/api/v1/groups/{group_id}/grants/{username}", ungrant_group,
          methods=["DELETE"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user_id}", patch_user, methods=["PATCH"]),
    Route("/api/v1/enroll-tokens", list_enroll_tokens, methods=["GET"]),
    Route("/api/v1/enroll-tokens", create_enroll_token, methods=["POST"]),
    Route("/api/v1/enroll-tokens/{token_id}", revoke_enroll_token, methods=["DELETE"]),
    Route("/api/v1/api-tokens", list_api_tokens, methods=["GET"]),
    Route("/api/v1/api-tokens", create_api_token, methods=["POST"]),
    Route("/api/v1/api-tokens/{token_id}", revoke_api_token, methods=["DELETE"]),
    Route("/api/v1/audit", list_audit, methods=["GET"]),
    Route("/api/v1/audit/verify", verify_audit, methods=["GET"]),
    Route("/api/v1/audit/export", export_audit, methods=["GET"]),
]

