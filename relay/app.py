"""The relay's ASGI application: API, agent and console sockets, health and metrics."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backline.common.fixes import revocation
from backline.relay import console_assets, tls_identity
from backline.relay.api import openapi
from backline.relay.api import sessions as api_sessions
from backline.relay.api.live_socket import live_endpoint
from backline.relay.api.routes import ROUTES as API_ROUTES
from backline.relay.control import connect_endpoint, enroll_endpoint
from backline.relay.datadir import CERT_WARN_DAYS
from backline.relay.fixes.push import revocations_endpoint
from backline.relay.fixes.trust import fix_trust_endpoint
from backline.relay.logfmt import frames_only
from backline.relay.reports import clock
from backline.relay.sessions.sockets import join_endpoint, tunnel_endpoint
from backline.relay.state import Relay
from backline.relay.webauth import allowed_origins

log = logging.getLogger("backline.relay.http")

# 'wasm-unsafe-eval' lets the console compile WebAssembly (asciinema-player's terminal
# emulator, bundled in app.js); it allows no string-to-code eval of JavaScript.
CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; "
       "img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"strict-transport-security", b"max-age=31536000"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityMiddleware:
    """Security headers on every answer; WebSockets from a foreign ``Origin`` refused
    before the application sees them (cross-site WebSocket hijacking: the one place
    it is checked for every socket, so the sockets themselves need not); and the relay's
    error handler. It sits inside Starlette's own error middleware, so an unhandled
    exception is caught *here*: logged with its traceback (its frames and type, never its
    message: it may quote the request), audited (``request.error``,
    by address, aggregated in floods) and answered with the one error envelope and the
    security headers, the same generic 500 whatever the request carried (no oracle)."""

    def __init__(self, app: ASGIApp, relay: Relay) -> None:
        self.app = app
        self.relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is not None and origin.rstrip("/") not in allowed_origins(self.relay):
                address = scope["client"][0] if scope.get("client") else "unknown"
                self.relay.metrics.errors.labels("bad_origin").inc()
                # anyone can repeat it at will: aggregated per address (IPv6 /64)
                self.relay.record_flood(address, f"anonymous@{address}", "websocket.refused",
                                        scope["path"][:256], reason="bad_origin",
                                        origin=origin[:200], address=address)
                await send({"type": "websocket.close", "code": 4403})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(SECURITY_HEADERS)
                if is_api:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
                self.relay.metrics.http.labels(str(message["status"])).inc()
            await send(message)

        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send_with_headers(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            method, path = scope.get("method", ""), scope["path"]
            address = scope["client"][0] if scope.get("client") else "unknown"
            # the frames, not the message: it may quote the request (a password)
            log.error("unhandled error answering %s %r: %s", method, path[:200],
                      frames_only(exc))
            try:
                self.relay.metrics.errors.labels("internal").inc()
                self.relay.record_flood(address, f"anonymous@{address}", "request.error",
                                        path[:256], method=method, error=type(exc).__name__,
                                        address=address, started=started)
            except Exception:  # the answer matters more; the log has both
                log.exception("could not audit the error on %s %r", method, path[:200])
            if started:  # too late for an answer: the connection is closed
                return
            body = json.dumps(INTERNAL_ERROR).encode()
            await send_with_headers({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


#: The one answer to every unhandled exception: it says nothing about the request.
INTERNAL_ERROR = {"error": "internal",
                  "detail": "the relay could not answer this request; the error is logged"}


async def _http_refusal(request: Request, exc: Exception) -> Response:
    """The router's own refusals (unknown path, wrong method) in the error envelope,
    counted and audited by address like any anonymous refusal."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = {404: "not_found", 405: "method_not_allowed"}.get(status, "refused")
    detail = {404: "no such path", 405: f"{request.method[:16]} is not allowed here"}.get(
        status, "refused")
    relay: Relay = request.app.state.relay
    address = request.client.host if request.client else "unknown"
    relay.metrics.errors.labels(code).inc()
    relay.record_flood(address, f"anonymous@{address}", "request.refused",
                       request.url.path[:256], reason=code, method=request.method[:16],
                       address=address)
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else {}
    return JSONResponse({"error": code, "detail": detail}, status_code=status,
                        headers=headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def healthz(request: Request) -> Response:
    return JSONResponse({"ok": True})


async def readyz(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    try:
        with relay.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except Exception as exc:
        return JSONResponse({"ready": False, "database": type(exc).__name__}, status_code=503)
    days = relay.tls_identity.expires_in_days() if relay.tls_identity else None
    return JSONResponse({"ready": True, "agents_connected": len(relay.presence),
                         "tls_certificate_expires_in_days":
                             None if days is None else round(days, 1),
                         "tls_certificate_expiring":
                             days is not None and days <= CERT_WARN_DAYS})


async def metrics(request: Request) -> Response:
    relay: Relay = request.app.state.relay
    return Response(relay.metrics.render(), media_type="text/plain; version=0.0.4")


def console_index(dist: Path | None) -> Callable[[Request], Awaitable[Response]]:
    """``/``: the console's page, or the page that says its assets are missing (503:
    the relay is up, the console is not there)."""
    async def index(request: Request) -> Response:
        if dist is None:
            return HTMLResponse(console_assets.MISSING_PAGE, status_code=503)
        return FileResponse(dist / "index.html")

    return index


#: Every WebSocket a browser can reach; each is admitted by
#: :func:`backline.relay.api.browser_socket.admit` (tests/unit/test_browser_socket_gate.py).
BROWSER_SOCKETS: list[WebSocketRoute] = [
    WebSocketRoute("/api/v1/live", live_endpoint),
    *api_sessions.SOCKETS,
]


def build_app(relay: Relay) -> Starlette:
    dist = console_assets.find()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await relay.start_background()
        relay.record("system", "relay.start", "relay", url=relay.origin,
                     fingerprint=relay.fingerprint, **clock.start_details())
        try:
            yield {}
        finally:
            await relay.stop_background()
            relay.record("system", "relay.stop", "relay")
            relay.seal()

    routes: list[Any] = [
        Route("/healthz", healthz), Route("/readyz", readyz), Route("/metrics", metrics),
        Route("/api/v1/openapi.json", openapi.endpoint),
        Route("/agent/pins", tls_identity.pins_endpoint),
        Route("/agent/fix-trust", fix_trust_endpoint),
        Route(revocation.FETCH_PATH, revocations_endpoint),
        *API_ROUTES,
        *BROWSER_SOCKETS,
        WebSocketRoute("/agent/enroll", enroll_endpoint),
        WebSocketRoute("/agent/connect", connect_endpoint),
        WebSocketRoute("/agent/tunnel/{session_id}", tunnel_endpoint),
        WebSocketRoute("/agent/join", join_endpoint),
        Route("/", console_index(dist)),
    ]
    if dist is not None and (dist / "assets").is_dir():
        routes.append(Mount("/assets", StaticFiles(directory=dist / "assets")))
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_refusal})
    # No trailing-slash redirects: Starlette builds them from the request's Host header
    # (an open redirect to wherever a proxy or client says); "/path/" is a plain 404.
    app.router.redirect_slashes = False
    app.state.relay = relay
    app.add_middleware(SecurityMiddleware, relay=relay)
    return app
