"""Signing in and out, the signed-in user, password change and TOTP enrolment."""

from __future__ import annotations

import segno
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import users
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


ROUTES = [
    Route("/api/v1/auth/login", login, methods=["POST"]),
    Route("/api/v1/auth/logout", logout, methods=["POST"]),
    Route("/api/v1/auth/me", me, methods=["GET"]),
    Route("/api/v1/auth/password", change_password, methods=["POST"]),
    Route("/api/v1/auth/totp/begin", totp_begin, methods=["POST"]),
    Route("/api/v1/auth/totp/confirm", totp_confirm, methods=["POST"]),
]
