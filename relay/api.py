"""The REST API under ``/api/v1``: what the console and automation call.

Every handler states the permission it needs; :func:`endpoint` authenticates,
checks CSRF and permission, and turns :class:`ApiError` into a JSON answer, so a
refusal is always a clear ``{"error", "detail"}`` that was audited first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import segno
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from backline.common.enrollment import EnrollmentToken
from backline.relay import agents, tokens, users
from backline.relay.roles import ROLES, TOKEN_SCOPES
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
    client_address,
    cookie_header,
    create_session,
    end_session,
    end_user_sessions,
    needs_totp_enrolment,
    require,
    same_origin,
)

MAX_BODY = 64 * 1024
Handler = Callable[[Request, Relay, Principal], Awaitable[Response]]


def relay_of(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status,
                        headers=err.headers)


Endpoint = Callable[[Request], Awaitable[Response]]


def endpoint(permission: str | None) -> Callable[[Handler], Endpoint]:
    """Wrap a handler with authentication, CSRF, permission and error answers."""

    def wrap(handler: Handler) -> Endpoint:
        async def run(request: Request) -> Response:
            relay = relay_of(request)
            try:
                principal = require(relay, request, permission, request.method)
                return await handler(request, relay, principal)
            except ApiError as err:
                return error_response(err)

        run.__doc__ = handler.__doc__
        run.__name__ = handler.__name__
        run.permission = permission  # type: ignore[attr-defined]
        return run

    return wrap


async def body(request: Request) -> dict[str, Any]:
    """The JSON object in the request body, bounded in size."""
    declared = request.headers.get("content-length")
    if declared and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise ApiError(413, "too_large", f"request bodies are at most {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise ApiError(413, "too_large", f"request bodies are at most {MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        raise ApiError(400, "bad_json", "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the request body must be a JSON object")
    return data


def field(data: dict[str, Any], name: str, kind: type, default: Any = ...,
          max_len: int = 256) -> Any:
    if name not in data:
        if default is ...:
            raise ApiError(400, "missing_field", f"{name} is required")
        return default
    value = data[name]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise ApiError(400, "bad_field", f"{name} must be a {kind.__name__}")
    if isinstance(value, str | list) and len(value) > max_len:
        raise ApiError(400, "bad_field", f"{name} is too long")
    return value


# --- auth --------------------------------------------------------------------------


async def login(request: Request) -> Response:
    """Sign in with username, password and (when enrolled) a TOTP code."""
    relay = relay_of(request)
    address = client_address(request)
    try:
        data = await body(request)
        username = field(data, "username", str, max_len=64).strip().lower()
        password = field(data, "password", str, max_len=1024)
        code = field(data, "totp", str, "", max_len=16).strip()
        origin = request.headers.get("origin")
        if origin is not None and not same_origin(relay, origin):
            raise ApiError(403, "bad_origin", "cross-site request refused")
        # Reserved in the limits, evaluated, settled (429/503 raised there, audited).
        user, reason = await relay.auth.sign_in(request, username, password, code)
        if reason:
            relay.metrics.errors.labels("login_failed").inc()
            relay.record_flood(address, f"anonymous@{address}", "auth.login.failed",
                               f"user:{username}", reason=reason, address=address)
            if reason == "totp_missing":
                raise ApiError(401, "totp_required", "enter the code from your authenticator")
            raise ApiError(401, "bad_credentials", "wrong username, password or code")
        assert user is not None
        cookie, csrf = create_session(relay, user, address)
        relay.record(f"user:{user.username}", "auth.login", f"user:{user.username}",
                     address=address, totp=user.totp_enabled)
    except ApiError as err:
        return error_response(err)
    response = JSONResponse({"user": user.public(), "csrf_token": csrf})
    response.headers.append("set-cookie", cookie_header(
        cookie, int(relay.config.web_session_hours * 3600)))
    response.headers.append("set-cookie", relay.auth.device_cookie(request, user.username))
    return response


@endpoint(None)
async def logout(request: Request, relay: Relay, who: Principal) -> Response:
    """End this browser session."""
    if who.session_hash:
        end_session(relay, who.session_hash)
    relay.record(who.actor, "auth.logout", who.actor, address=who.address)
    response = JSONResponse({"ok": True})
    response.headers.append("set-cookie", cookie_header("", 0))
    return response


@endpoint(None)
async def me(request: Request, relay: Relay, who: Principal) -> Response:
    """The signed-in user, their permissions and this session's CSRF token."""
    return JSONResponse({"user": who.user.public(), "permissions": sorted(who.permissions),
                         "csrf_token": who.csrf_token,
                         "totp_enrolment_required": needs_totp_enrolment(relay, who.user)})


@endpoint(None)
async def change_password(request: Request, relay: Relay, who: Principal) -> Response:
    """Replace your password (required after a one-time password)."""
    if who.token:
        raise ApiError(403, "forbidden", "API tokens cannot change passwords")
    data = await body(request)
    current = field(data, "current", str, max_len=1024)
    new = field(data, "new", str, max_len=1024)
    if not await relay.auth.reauth(who, "password_change", current):  # limited per user
        relay.record(who.actor, "auth.password.refused", who.actor, reason="bad_password",
                     address=who.address)
        raise ApiError(403, "bad_credentials", "the current password is wrong")
    try:
        await relay.auth.hash_work(users.set_password, relay.engine, who.user.id, new)
    except users.UserError as err:
        raise ApiError(400, "weak_password", str(err)) from None
    # Whoever else held a session of this account (the old password may have leaked)
    # is signed out; this browser stays signed in.
    ended = end_user_sessions(relay, who.user.id, keep=who.session_hash)
    relay.record(who.actor, "auth.password.changed", who.actor, address=who.address,
                 other_sessions_ended=ended)
    return JSONResponse({"ok": True, "other_sessions_ended": ended})


@endpoint(None)
async def totp_begin(request: Request, relay: Relay, who: Principal) -> Response:
    """Start enrolling an authenticator: a secret, its otpauth URI and a QR code (SVG).
    Replacing an active one needs ``{"password", "code"}`` (a current code from it)."""
    if who.token:
        raise ApiError(403, "forbidden", "API tokens cannot enrol a second factor")
    if who.user.totp_enabled:  # replacing it: whoever holds this session must prove more
        data = await body(request)
        password = field(data, "password", str, "", max_len=1024)
        code = field(data, "code", str, "", max_len=16).strip()
        if not (password and code and await relay.auth.reauth(who, "totp_replace", password,
                                                                code)):
            relay.record(who.actor, "auth.totp.refused", who.actor, address=who.address,
                         reason="reauth_missing" if not (password and code) else "reauth_failed")
            raise ApiError(403, "reauth_required", "replacing an active authenticator needs "
                           "your password and a current code from it")
    secret = users.begin_totp(relay.engine, who.user)
    uri = users.totp_uri(secret, who.user.username)
    svg = segno.make(uri, error="m").svg_inline(scale=4)
    relay.record(who.actor, "auth.totp.begin", who.actor, address=who.address)
    return JSONResponse({"secret": secret, "uri": uri, "qr_svg": svg})


@endpoint(None)
async def totp_confirm(request: Request, relay: Relay, who: Principal) -> Response:
    """Finish enrolling an authenticator by entering one code from it."""
    data = await body(request)
    code = field(data, "code", str, max_len=16).strip()
    if not relay.auth.confirm_totp(who, code):  # limited per user
        relay.record(who.actor, "auth.totp.refused", who.actor, address=who.address)
        raise ApiError(400, "bad_totp", "that code does not match; check the device's clock")
    relay.record(who.actor, "auth.totp.enabled", who.actor, address=who.address)
    return JSONResponse({"ok": True})


# --- agents ------------------------------------------------------------------------


def visible_group_ids(relay: Relay, who: Principal) -> set[int] | None:
    return users.granted_group_ids(relay.engine, who.user)


def agent_for(request: Request, relay: Relay, who: Principal, acting: bool) -> dict[str, Any]:
    """The agent named in the path, if ``who`` may see (and act on) it."""
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
        relay.metrics.errors.labels("group_forbidden").inc()
        relay.record(who.actor, "agent.access.refused", f"agent:{agent['id']}",
                     reason="group_not_granted", group=agent["group"], address=who.address)
        raise ApiError(403, "forbidden", "that agent is not in a group you are granted")
    return agent


@endpoint("agents:read")
async def list_agents(request: Request, relay: Relay, who: Principal) -> Response:
    """Agents you may see; filter with ?group=, ?status=online|offline and ?q=text."""
    rows = agents.list_agents(relay.engine, relay.presence, visible_group_ids(relay, who))
    group = request.query_params.get("group")
    status = request.query_params.get("status")
    text = request.query_params.get("q", "").lower()[:128]
    if group:
        rows = [a for a in rows if a["group"] == group]
    if status in ("online", "offline"):
        rows = [a for a in rows if a["online"] == (status == "online")]
    if text:
        rows = [a for a in rows if any(text in str(a[k]).lower() for k in
                                       ("id", "hostname", "os", "label", "group"))]
    return JSONResponse({"agents": rows})


@endpoint("agents:read")
async def get_agent(request: Request, relay: Relay, who: Principal) -> Response:
    """One agent with everything it reported."""
    return JSONResponse(agent_for(request, relay, who, acting=False))


@endpoint("agents:write")
async def patch_agent(request: Request, relay: Relay, who: Principal) -> Response:
    """Set an agent's label (a name technicians give it)."""
    agent = agent_for(request, relay, who, acting=True)
    data = await body(request)
    label = field(data, "label", str, max_len=256)
    agents.update_agent(relay.engine, agent["id"], label=label)
    relay.record(who.actor, "agent.label", f"agent:{agent['id']}", label=label,
                 address=who.address)
    relay.bus.publish({"type": "agent", "agent_id": agent["id"], "group_id": agent["group_id"],
                       "changed": {"label": label}})
    return JSONResponse(agents.get_agent(relay.engine, relay.presence, agent["id"]))


@endpoint("agents:write")
async def ping_agent(request: Request, relay: Relay, who: Principal) -> Response:
    """Round trip over the agent's control socket, in milliseconds."""
    agent = agent_for(request, relay, who, acting=True)
    conn = relay.presence.get(agent["id"])
    if conn is None:
        raise ApiError(409, "offline", "the agent is offline")
    from backline.relay.control import ping

    rtt = await ping(relay, conn)
    relay.record(who.actor, "agent.ping", f"agent:{agent['id']}", rtt_ms=rtt,
                 address=who.address)
    if rtt is None:
        raise ApiError(504, "timeout", "the agent did not answer within 10 s")
    return JSONResponse({"rtt_ms": rtt})


@endpoint("groups:write")
async def revoke_agent(request: Request, relay: Relay, who: Principal) -> Response:
    """Revoke an agent: it can no longer connect, and is disconnected now."""
    agent = agent_for(request, relay, who, acting=True)
    agents.update_agent(relay.engine, agent["id"], revoked_at=time.time())
    conn = relay.presence.get(agent["id"])
    if conn is not None:
        await conn.close(4003, "revoked")
    relay.record(who.actor, "agent.revoke", f"agent:{agent['id']}", address=who.address)
    await relay.sessions.close_matching("agent_revoked", who.actor, agent_id=agent["id"])
    return JSONResponse({"ok": True})


# --- groups and users --------------------------------------------------------------


@endpoint("groups:read")
async def list_groups(request: Request, relay: Relay, who: Principal) -> Response:
    """Agent groups and who is granted each."""
    rows = users.list_groups(relay.engine)
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        rows = [g for g in rows if g["id"] in allowed]
    return JSONResponse({"groups": rows})


@endpoint("groups:write")
async def create_group(request: Request, relay: Relay, who: Principal) -> Response:
    """Create an agent group."""
    data = await body(request)
    name = field(data, "name", str, max_len=128).strip()
    description = field(data, "description", str, "", max_len=512)
    try:
        gid = users.create_group(relay.engine, name, description)
    except users.UserError as err:
        raise ApiError(400, "bad_group", str(err)) from None
    relay.record(who.actor, "group.create", f"group:{name}", address=who.address)
    return JSONResponse({"id": gid, "name": name}, status_code=201)


def _user_and_group(request: Request, relay: Relay) -> tuple[users.User, int]:
    gid = request.path_params["group_id"]
    user = users.get_user(relay.engine, username=request.path_params["username"][:64])
    if user is None:
        raise ApiError(404, "not_found", "no such user")
    if not any(g["id"] == gid for g in users.list_groups(relay.engine)):
        raise ApiError(404, "not_found", "no such group")
    return user, gid


@endpoint("groups:write")
async def grant_group(request: Request, relay: Relay, who: Principal) -> Response:
    """Let a user act on the agents of a group."""
    user, gid = _user_and_group(request, relay)
    users.grant(relay.engine, user.id, gid, allow=True)
    relay.record(who.actor, "group.grant", f"group:{gid}", user=user.username,
                 address=who.address)
    return JSONResponse({"ok": True})


@endpoint("groups:write")
async def ungrant_group(request: Request, relay: Relay, who: Principal) -> Response:
    """Withdraw a user's grant on a group."""
    user, gid = _user_and_group(request, relay)
    users.grant(relay.engine, user.id, gid, allow=False)
    relay.record(who.actor, "group.ungrant", f"group:{gid}", user=user.username,
                 address=who.address)
    await relay.sessions.close_matching("grant_withdrawn", who.actor,
                                        technician=user.username, group_id=gid)
    return JSONResponse({"ok": True})


@endpoint("users:read")
async def list_users(request: Request, relay: Relay, who: Principal) -> Response:
    """Users and their roles."""
    return JSONResponse({"users": [u.public() for u in users.list_users(relay.engine)]})


@endpoint("users:write")
async def create_user(request: Request, relay: Relay, who: Principal) -> Response:
    """Create a user; the answer carries a one-time password to hand over."""
    data = await body(request)
    username = field(data, "username", str, max_len=64).strip().lower()
    role = field(data, "role", str, max_len=16)
    password = users.generate_password()
    try:
        user = await relay.auth.hash_work(users.create_user, relay.engine, username, role,
                                           password, True)
    except users.UserError as err:
        raise ApiError(400, "bad_user", str(err)) from None
    relay.record(who.actor, "user.create", f"user:{username}", role=role, address=who.address)
    return JSONResponse({"user": user.public(), "one_time_password": password},
                        status_code=201)


@endpoint("users:write")
async def patch_user(request: Request, relay: Relay, who: Principal) -> Response:
    """Change a user's role, disable them, or require TOTP."""
    data = await body(request)
    changes: dict[str, Any] = {}
    if "role" in data:
        changes["role"] = field(data, "role", str, max_len=16)
        if changes["role"] not in ROLES:
            raise ApiError(400, "bad_field", f"role must be one of {', '.join(ROLES)}")
    for flag in ("disabled", "totp_required"):
        if flag in data:
            changes[flag] = field(data, flag, bool)
    if not changes:
        raise ApiError(400, "missing_field", "nothing to change")
    user_id = request.path_params["user_id"]
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
    return JSONResponse({"user": user.public()})


# --- enrollment tokens -------------------------------------------------------------


def enroll_command(token: str) -> str:
    return f"backline-agent enroll '{token}'"


@endpoint("enroll:read")
async def list_enroll_tokens(request: Request, relay: Relay, who: Principal) -> Response:
    """Enrollment tokens (never their secrets) with their state."""
    rows = tokens.list_enroll_tokens(relay.engine)
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        names = {g["name"] for g in users.list_groups(relay.engine) if g["id"] in allowed}
        rows = [t for t in rows if t["group"] in names]
    return JSONResponse({"tokens": rows})


@endpoint("enroll:write")
async def create_enroll_token(request: Request, relay: Relay, who: Principal) -> Response:
    """Create an enrollment token for a group; the answer has the enroll command."""
    data = await body(request)
    group = field(data, "group", str, max_len=128)
    uses = field(data, "uses", int, 1)
    ttl = field(data, "ttl", str, "1h", max_len=16)
    gid = users.group_id(relay.engine, group)
    if gid is None:
        raise ApiError(404, "not_found", f"no group named {group!r}")
    allowed = visible_group_ids(relay, who)
    if allowed is not None and gid not in allowed:
        relay.record(who.actor, "enroll_token.refused", f"group:{group}",
                     reason="group_not_granted", address=who.address)
        raise ApiError(403, "forbidden", "that group is not one you are granted")
    try:
        token_id, secret = tokens.create_enroll_token(relay.engine, gid, uses,
                                                      tokens.parse_ttl(ttl), who.actor)
    except ValueError as err:
        raise ApiError(400, "bad_field", str(err)) from None
    token = EnrollmentToken(relay.origin, relay.token_pins, secret).encode()
    relay.record(who.actor, "enroll_token.create", f"enroll_token:{token_id}", group=group,
                 uses=uses, ttl=ttl, address=who.address)
    return JSONResponse({"id": token_id, "token": token, "command": enroll_command(token)},
                        status_code=201)


@endpoint("enroll:write")
async def revoke_enroll_token(request: Request, relay: Relay, who: Principal) -> Response:
    """Revoke an enrollment token (of a group you are granted)."""
    token_id = request.path_params["token_id"][:64]
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        gid = tokens.enroll_token_group_id(relay.engine, token_id)
        if gid is not None and gid not in allowed:
            relay.record(who.actor, "enroll_token.refused", f"enroll_token:{token_id}",
                         reason="group_not_granted", address=who.address)
            raise ApiError(403, "forbidden", "that token's group is not one you are granted")
    if not tokens.revoke_enroll_token(relay.engine, token_id):
        raise ApiError(404, "not_found", "no such active token")
    relay.record(who.actor, "enroll_token.revoke", f"enroll_token:{token_id}",
                 address=who.address)
    return JSONResponse({"ok": True})


# --- API tokens --------------------------------------------------------------------


@endpoint("apitokens:write")
async def list_api_tokens(request: Request, relay: Relay, who: Principal) -> Response:
    """Your API tokens (all of them, for admins)."""
    mine = None if who.user.role == "admin" else who.user.id
    return JSONResponse({"tokens": tokens.list_api_tokens(relay.engine, mine),
                         "scopes": sorted(TOKEN_SCOPES)})


@endpoint("apitokens:write")
async def create_api_token(request: Request, relay: Relay, who: Principal) -> Response:
    """Create an API token: scoped, expiring, optionally bound to addresses."""
    data = await body(request)
    name = field(data, "name", str, max_len=128)
    scopes = field(data, "scopes", list, max_len=16)
    ttl = field(data, "ttl", str, "30d", max_len=16)
    cidrs = field(data, "allowed_cidrs", list, [], max_len=32)
    if not all(isinstance(s, str) for s in scopes + cidrs):
        raise ApiError(400, "bad_field", "scopes and allowed_cidrs are lists of strings")
    beyond = set(scopes) - who.permissions
    if beyond:
        raise ApiError(403, "forbidden", f"you do not hold {', '.join(sorted(beyond))}")
    try:
        token_id, token = tokens.create_api_token(relay.engine, who.user.id, name, scopes,
                                                  tokens.parse_ttl(ttl), cidrs)
    except ValueError as err:
        raise ApiError(400, "bad_field", str(err)) from None
    relay.record(who.actor, "api_token.create", f"api_token:{token_id}", name=name,
                 scopes=sorted(scopes), ttl=ttl, allowed_cidrs=cidrs, address=who.address)
    return JSONResponse({"id": token_id, "token": token}, status_code=201)


@endpoint("apitokens:write")
async def revoke_api_token(request: Request, relay: Relay, who: Principal) -> Response:
    """Revoke an API token (your own; admins may revoke any)."""
    token_id = request.path_params["token_id"][:64]
    owner = None if who.user.role == "admin" else who.user.id
    if not tokens.revoke_api_token(relay.engine, token_id, owner):
        raise ApiError(404, "not_found", "no such active token of yours")
    relay.record(who.actor, "api_token.revoke", f"api_token:{token_id}", address=who.address)
    return JSONResponse({"ok": True})


# --- audit -------------------------------------------------------------------------


def _float_param(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise ApiError(400, "bad_field", f"{name} must be a Unix time in seconds") from None


def _int_param(request: Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError(400, "bad_field", f"{name} must be a whole number from {lo} to {hi}")
    return int(raw)


@endpoint("audit:read")
async def list_audit(request: Request, relay: Relay, who: Principal) -> Response:
    """Audit events, newest first; filter by actor, action (prefix), target, since, until;
    page with ``before`` = the smallest ``seq`` of the previous page."""
    q = request.query_params
    limit = _int_param(request, "limit", 50, 1, 500) or 50
    events = relay.audit.query(
        actor=q.get("actor") or None, action=q.get("action") or None,
        target=q.get("target") or None, since=_float_param(request, "since"),
        until=_float_param(request, "until"),
        before_seq=_int_param(request, "before", None, 1, 2**62), limit=limit)
    next_before = events[-1]["seq"] if len(events) == limit else None
    return JSONResponse({"events": events, "next_before": next_before})


@endpoint("audit:read")
async def verify_audit(request: Request, relay: Relay, who: Principal) -> Response:
    """Walk the whole trail and report the first broken record, if any."""
    result = await asyncio.to_thread(relay.audit.verify)
    return JSONResponse({**result.as_dict(), "summary": result.describe()})


@endpoint("audit:read")
async def export_audit(request: Request, relay: Relay, who: Principal) -> Response:
    """The trail as JSON lines, oldest first, with each record's hashes."""
    if request.query_params.get("format", "jsonl") != "jsonl":
        raise ApiError(400, "bad_field", "the only export format is jsonl")
    since = _float_param(request, "since")
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
    Route("/api/v1/groups/{group_id:int}/grants/{username}", grant_group, methods=["PUT"]),
    Route("/api/v1/groups/{group_id:int}/grants/{username}", ungrant_group,
          methods=["DELETE"]),
    Route("/api/v1/users", list_users, methods=["GET"]),
    Route("/api/v1/users", create_user, methods=["POST"]),
    Route("/api/v1/users/{user_id:int}", patch_user, methods=["PATCH"]),
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

