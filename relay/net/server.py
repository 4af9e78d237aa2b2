"""uvicorn, bounded and tuned for many idle agent sockets: the transport half of serving.

The choices (measured in ``bench/idle_agents``; see docs/benchmarks.md):
- ``wsproto`` for WebSockets: the smallest per-connection state of uvicorn's options;
- no per-message deflate (it costs about 50 KiB a socket; control frames are tiny);
- no server-side WebSocket pings: agents heartbeat in the protocol instead;
- uvloop when available; on plain asyncio, the TLS read buffer shrinks from
  256 KiB (allocated and zeroed per connection) to 16 KiB, one TLS record;
- agents' control sockets are answered and framed by the connection itself
  (:mod:`backline.relay.net.control_socket`), every other WebSocket by uvicorn's wsproto
  protocol; behind a trusted proxy, agents' sockets skip Starlette's middleware
  (:class:`AgentSocketShortcut`);
- in both TLS engines (and without TLS behind a proxy) the relay accepts connections
  itself, so each takes its slot under the unauthenticated-connection caps before its
  handshake, and HTTP reads have deadlines (:mod:`backline.relay.net.conn_limits`,
  :mod:`backline.relay.net.conn_http`).

What knows the relay (its app, its audit trail, its certificate reloader) is in
:mod:`backline.relay.serve`, which hands this module only what the transport needs:
the limits, where refusals are reported, the metrics registry, and callbacks for
stopping and for reloading the certificate. So the engine imports nothing of the
relay's business (an import-linter contract in pyproject.toml).
"""

from __future__ import annotations

import asyncio.sslproto
import importlib.util
import logging
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.config import STARTUP_FAILURE

from backline.relay.net import conn_limits, listening, tls_policy
from backline.relay.net.conn_http import LoopListener
from backline.relay.net.tls_socket import TLSListener

log = logging.getLogger("backline.relay")

TLS_READ_BUFFER = 16 * 1024
WS_MAX_FRAME = 1024 * 1024


def choose_loop(setting: str) -> str:
    if setting == "auto":
        return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return setting


def shrink_asyncio_tls_buffer() -> None:
    # asyncio's SSLProtocol allocates max_size bytes per connection up front.
    asyncio.sslproto.SSLProtocol.max_size = TLS_READ_BUFFER  # type: ignore[attr-defined]


class AgentSocketShortcut:
    """Hand agents' control sockets straight to their ``endpoint``.

    A control socket lives for days and one relay holds ten thousand. Under the full
    Starlette stack (error and security middleware, the exception wrapper twice, the
    router and the route) each one keeps a dozen coroutine frames alive that do nothing
    for a WebSocket without an ``Origin`` header, which is what agents open. A socket
    that has an ``Origin`` (a browser) takes the full stack, so the cross-site check and
    its audit apply exactly as before; so does everything else.

    It is also the app's outermost layer, where a client gone in the middle of its
    request (``ClientDisconnect``, e.g. cut by its body deadline) ends quietly.
    """

    PATH = "/agent/connect"

    def __init__(self, app: ASGIApp,
                 endpoint: Callable[[WebSocket], Awaitable[None]]) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "websocket" and scope["path"] == self.PATH
                and not scope.get("root_path")
                and not any(name == b"origin" for name, _ in scope["headers"])):
            scope["app"] = self.app  # what Starlette sets; the endpoint finds the relay there
            await self.endpoint(WebSocket(scope, receive=receive, send=send))
            return
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            # The client left (or its body deadline ended it: relay/net/conn_http.py) while
            # its request was being read: nobody to answer, and not a server error to
            # log with a traceback, which a trickling attacker could repeat at will.
            return


def with_tls_policy(config: uvicorn.Config) -> uvicorn.Config:
    """Load ``config`` and put its TLS context under the relay's policy
    (:mod:`tls_policy`: Mozilla intermediate, no session tickets in TLS 1.2 or 1.3).
    Both TLS engines use this one context. uvicorn keeps a loaded config."""
    if not config.loaded:
        config.load()
    if config.ssl is not None:
        tls_policy.harden(config.ssl)
    return config


def listen(host: str, port: int) -> list[socket.socket]:
    """The relay's listening sockets: those bound before the relay was imported
    (:func:`listening.prebind`) if they are for this address, else new ones."""
    early = listening.take(host, port)
    return early if early is not None else listening.bind(host, port)


class Reloader(Protocol):
    """Something to start on the running loop once the server has started (the
    relay's certificate reloader: SIGHUP, changed files)."""

    def install(self, loop: asyncio.AbstractEventLoop) -> None: ...


class BoundedServer(uvicorn.Server):
    """uvicorn, with the relay's own listeners: every accepted connection takes a slot
    under the unauthenticated-connection caps (:class:`conn_limits.Gate`) before its
    TLS handshake. TLS is run by OpenSSL on each socket (:mod:`tls_socket`, engine
    "socket") or by the event loop (:class:`LoopListener`, engine "loop"; also plain
    HTTP behind a TLS-ending proxy). Everything above the transport is uvicorn's own:
    its HTTP and WebSocket protocols, lifespan, connection tracking and graceful
    shutdown.

    What it is told, rather than finding out from the relay: the ``limits``; the
    ``reporter`` of refused and timed-out connections and the metrics ``registry``
    (both for the gate); ``on_stopping``, called when shutdown begins (before the
    connections close, so that what they record says the shutdown ended them);
    ``before_lifespan_shutdown``, called before the app's own shutdown (to flush what
    the reporter holds); and the ``reloader`` to start once serving."""

    def __init__(self, config: uvicorn.Config, *, engine: str = "socket",
                 limits: conn_limits.Limits | None = None,
                 reporter: conn_limits.Reporter | None = None, registry: Any = None,
                 on_stopping: Callable[[], None] | None = None,
                 before_lifespan_shutdown: Callable[[], None] | None = None,
                 reloader: Reloader | None = None) -> None:
        super().__init__(config)
        self.engine = engine
        self.limits = limits
        self.reporter = reporter
        self.registry = registry
        self.on_stopping = on_stopping
        self.before_lifespan_shutdown = before_lifespan_shutdown
        self.reloader = reloader
        self.gate: conn_limits.Gate | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.on_stopping is not None:
            self.on_stopping()
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """As uvicorn's, on the listening ``sockets`` from :func:`listen`."""
        config = self.config
        limits = self.limits
        if sockets is None or limits is None:
            await super().startup(sockets=sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state)

        loop = asyncio.get_running_loop()
        self.gate = gate = conn_limits.Gate(limits, loop, self.reporter, self.registry)
        before, lifespan_shutdown = self.before_lifespan_shutdown, self.lifespan.shutdown

        async def shutdown() -> None:
            if before is not None:
                before()
            await lifespan_shutdown()

        self.lifespan.shutdown = shutdown  # type: ignore[method-assign]
        log.info(
            "connection limits: %d unauthenticated connections, %d per address "
            "(RLIMIT_NOFILE %d); request head %.1f s, TLS handshake %.1f s",
            limits.max_unauthenticated, limits.max_unauthenticated_per_address,
            conn_limits.nofile_limit(), limits.request_head_timeout_s,
            limits.tls_handshake_timeout_s)
        if config.ssl is not None and self.engine == "socket":
            self.servers = [TLSListener(  # type: ignore[list-item]
                loop, sockets, config.ssl, create_protocol,
                handshake_timeout=limits.tls_handshake_timeout_s, gate=gate)]
        else:
            self.servers = [LoopListener(  # type: ignore[list-item]
                loop, sockets, config.ssl, create_protocol, gate)]
        self.started = True
        if self.reloader is not None:
            self.reloader.install(loop)
