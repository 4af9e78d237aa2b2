"""Who is asking: browser sessions (cookie + CSRF) and API tokens (bearer).

Browser sessions live in the database, named by a random id that reaches the
browser only inside a signed ``__Host-`` cookie (HttpOnly, Secure,
SameSite=Strict). Every state-changing request made with that cookie must also
carry the session's CSRF token in ``X-CSRF-Token`` and, when the browser sends
one, a same-origin ``Origin``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from itsdangerous import BadSignature, URLSafeSerializer
from starlette.requests import HTTPConnection

from backline.relay import tokens, users
from backline.relay.db import writing
from backline.relay.net import conn_limits
from backline.relay.roles import ROLE_PERMISSIONS
from backline.relay.schema import web_sessions

if TYPE_CHECKING:
    from backline.relay.ports import Configured, Counters, Recorder, Stored

    class Relay(Recorder, Configured, Stored, Counters):
        """What sign-in and web sessions use of the relay."""

        cookie_secret: str

COOKIE = "__Host-backline"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# While a one-time password is unchanged, only these paths answer.
PASSWORD_CHANGE_PATHS = frozenset({"/api/v1/auth/me", "/api/v1/auth/password",
                                   "/api/v1/auth/logout"})


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a sentence for people.

    It also says how the refusal is audited, because it is audited in one place
    (:func:`audit_refusal`, called by the API's endpoint wrapper and by the sockets),
    exactly once: ``action`` (default ``request.refused``), ``target`` (default the
    path), ``actor`` (default the principal, else ``anonymous@address``), extra
    ``details`` and the ``metric`` label of ``backline_errors_total`` (default the code).
    """

    def __init__(self, status: int, code: str, detail: str,
                 headers: dict[str, str] | None = None, *, action: str = "request.refused",
                 target: str | None = None, actor: str | None = None, metric: str = "",
                 audited: bool = False, **details: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.action = action
        self.target = target
        self.actor = actor
        self.metric = metric
        self.details = details
        self.principal: Principal | None = None
        #: True when the raiser recorded it already (e.g. through its own flood key).
        self.audited = audited


@dataclass(frozen=True)
class Principal:
    user: users.User
    address: str
    session_hash: str | None = None
    csrf_token: str | None = None
    token: tokens.ApiToken | None = None

    @property
    def permissions(self) -> frozenset[str]:
        perms = ROLE_PERMISSIONS.get(self.user.role, frozenset())
        return perms & self.token.scopes if self.token else perms

    @property
    def actor(self) -> str:
        if self.token:
            return f"token:{self.token.id}({self.user.username})"
        return f"user:{self.user.username}"

    def can(self, permission: str) -> bool:
        return permission in self.permissions


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"


def _serializer(relay: Relay) -> URLSafeSerializer:
    return URLSafeSerializer(relay.cookie_secret, salt="backline-session")


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def create_session(relay: Relay, user: users.User, address: str) -> tuple[str, str]:
    """Start a browser session; return ``(cookie value, csrf token)``."""
    session_id = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    now = time.time()
    with writing(relay.engine) as conn:
        conn.execute(web_sessions.insert().values(
            id_hash=_hash(session_id), user_id=user.id, csrf_token=csrf, created_at=now,
            last_seen=now, expires_at=now + relay.config.web_session_hours * 3600,
            address=address[:64]))
        conn.execute(web_sessions.delete().where(web_sessions.c.expires_at < now))
    return _serializer(relay).dumps(session_id), csrf


def end_session(relay: Relay, session_hash: str) -> None:
    with writing(relay.engine) as conn:
        conn.execute(web_sessions.delete().where(web_sessions.c.id_hash == session_hash))


def end_user_sessions(relay: Relay, user_id: int, keep: str | None = None) -> int:
    """End a user's browser sessions, all of them or all but ``keep`` (a session hash)."""
    q = web_sessions.delete().where(web_sessions.c.user_id == user_id)
    if keep is not None:
        q = q.where(web_sessions.c.id_hash != keep)
    with writing(relay.engine) as conn:
        return int(conn.execute(q).rowcount or 0)


def cookie_header(value: str, max_age: int) -> str:
    return (f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; "
            "SameSite=Strict")


def same_origin(relay: Relay, origin: str | None) -> bool:
    return origin is not None and origin.rstrip("/") in allowed_origins(relay)


def allowed_origins(relay: Relay) -> set[str]:
    return {relay.origin, *(o.rstrip("/") for o in relay.config.extra_origins)}


def _session_principal(relay: Relay, conn: HTTPConnection, raw: str) -> Principal | None:
    try:
        session_id = _serializer(relay).loads(raw)
    except BadSignature:
        return None
    if not isinstance(session_id, str):
        return None
    h = _hash(session_id)
    now = time.time()
    idle = relay.config.web_session_idle_minutes * 60
    with relay.engine.connect() as db:
        row = db.execute(sa.select(web_sessions).where(web_sessions.c.id_hash == h)).first()
    if row is None or row.expires_at <= now or row.last_seen + idle <= now:
        if row is not None:
            end_session(relay, h)
        return None
    user = users.get_user(relay.engine, user_id=row.user_id)
    if user is None or user.disabled:
        return None
    if now - row.last_seen > 30:  # a write per request would be waste
        with writing(relay.engine) as db:
            db.execute(web_sessions.update().where(web_sessions.c.id_hash == h)
                       .values(last_seen=now))
    return Principal(user=user, address=client_address(conn), session_hash=h,
                     csrf_token=row.csrf_token)


def authenticate(relay: Relay, conn: HTTPConnection) -> Principal | None:
    """The principal behind a request, or ``None`` when nobody is signed in.

    Raises :class:`ApiError` for a bearer token that is refused (the caller audits it
    with :func:`audit_refusal`).
    """
    header = conn.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        address = client_address(conn)
        try:
            token = tokens.check_api_token(relay.engine, header[7:].strip(), address)
        except tokens.TokenRefused as refused:
            raise ApiError(401, f"token_{refused.reason}", refused.message,
                           action="api_token.refused", metric="api_token",
                           actor=f"token:{refused.token_id or 'unknown'}",
                           reason=refused.reason) from None
        user = users.get_user(relay.engine, user_id=token.user_id)
        if user is None or user.disabled:
            raise ApiError(401, "token_owner_disabled", "the API token's owner is disabled",
                           action="api_token.refused", metric="api_token",
                           actor=f"token:{token.id}", reason="owner_disabled")
        principal = Principal(user=user, address=address, token=token)
        conn_limits.authenticated()  # a valid API token: the connection is no stranger
        relay.record(principal.actor, "api_token.use", conn.url.path,
                     method=conn.scope.get("method", "WEBSOCKET"), address=address)
        return principal
    raw = conn.cookies.get(COOKIE)
    principal = _session_principal(relay, conn, raw) if raw else None
    if principal is not None:
        conn_limits.authenticated()  # a valid session cookie: likewise
    return principal


def check_csrf(relay: Relay, conn: HTTPConnection, principal: Principal) -> None:
    """Cookie-authenticated writes need the CSRF header and, if sent, our Origin."""
    if principal.token is not None:
        return
    origin = conn.headers.get("origin")
    if origin is not None and not same_origin(relay, origin):
        raise ApiError(403, "bad_origin", "cross-site request refused")
    # Compared as bytes: a header is decoded as Latin-1, and compare_digest raises on
    # non-ASCII str (a 500 where a refusal belongs).
    sent = conn.headers.get("x-csrf-token", "").encode("latin-1", "replace")
    if not principal.csrf_token or not hmac.compare_digest(sent,
                                                           principal.csrf_token.encode()):
        raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header")


def require(relay: Relay, conn: HTTPConnection, permission: str | None,
            method: str) -> Principal:
    """Authenticate, check CSRF for writes and the permission. A refusal is raised for
    the caller to answer and audit (:func:`audit_refusal`)."""
    principal: Principal | None = None
    try:
        principal = authenticate(relay, conn)
        if principal is None:
            raise ApiError(401, "unauthenticated", "sign in first")
        if method not in SAFE_METHODS:
            check_csrf(relay, conn, principal)
        if principal.user.must_change_password and conn.url.path not in PASSWORD_CHANGE_PATHS:
            raise ApiError(403, "password_change_required",
                           "set a new password first (POST /api/v1/auth/password)")
        if needs_totp_enrolment(relay, principal.user) and not (
                conn.url.path in PASSWORD_CHANGE_PATHS
                or conn.url.path.startswith("/api/v1/auth/totp/")):
            raise ApiError(403, "totp_enrolment_required",
                           "set up a second factor first (POST /api/v1/auth/totp/begin)")
        if permission and not principal.can(permission):
            why = ("the API token's scopes do not include"
                   if principal.token and permission in ROLE_PERMISSIONS[principal.user.role]
                   else f"role {principal.user.role} lacks")
            raise ApiError(403, "forbidden", f"{why} {permission}")
    except ApiError as err:
        if err.principal is None:
            err.principal = principal  # the wrapper audits it, naming who asked
        raise
    return principal


def needs_totp_enrolment(relay: Relay, user: users.User) -> bool:
    if user.totp_enabled:
        return False
    return user.totp_required or (user.role == "admin" and relay.config.require_totp_for_admins)


def audit_refusal(relay: Relay, conn: HTTPConnection, err: ApiError) -> None:
    """Record a refusal once: counted in ``backline_errors_total`` and written to the
    trail. Refusals of nobody in particular (no principal: a stranger, a bad token)
    can be repeated at will, so they go through :meth:`Relay.record_flood` by address.
    The console's anonymous ``GET /api/v1/auth/me`` ("am I signed in?") is no refusal
    worth a record."""
    if err.audited:
        return
    err.audited = True
    path = conn.url.path
    if (err.code == "unauthenticated" and path == "/api/v1/auth/me"
            and conn.scope.get("method") == "GET"):
        return
    address = client_address(conn)
    relay.metrics.errors.labels(err.metric or err.code).inc()
    details: dict[str, Any] = {"reason": err.code,
                               "method": conn.scope.get("method", "WEBSOCKET"),
                               "address": address, **err.details}
    actor = err.actor or (err.principal.actor if err.principal else f"anonymous@{address}")
    target = path if err.target is None else err.target
    if err.principal is None:
        relay.record_flood(address, actor, err.action, target, **details)
    else:
        relay.record(actor, err.action, target, **details)
