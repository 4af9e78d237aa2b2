"""Running the relay under uvicorn, tuned for many idle agent sockets.

The choices (measured in ``bench/idle_agents``; see docs/benchmarks.md):
- ``wsproto`` for WebSockets: the smallest per-connection state of uvicorn's options;
- no per-message deflate (it costs about 50 KiB a socket; control frames are tiny);
- no server-side WebSocket pings: agents heartbeat in the protocol instead;
- uvloop when available; on plain asyncio, the TLS read buffer shrinks from
  256 KiB (allocated and zeroed per connection) to 16 KiB, one TLS record;
- agents' control sockets are answered and framed by the connection itself
  (:mod:`backline.relay.control_socket`), every other WebSocket by uvicorn's wsproto
  protocol; behind a trusted proxy, agents' sockets skip Starlette's middleware
  (:class:`AgentSocketShortcut`).
"""

from __future__ import annotations

import asyncio.sslproto
import importlib.util
import signal
import socket
import sys

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.config import STARTUP_FAILURE

from backline.relay import listening, logfmt, tls_policy
from backline.relay.app import build_app
from backline.relay.config import RelayConfig
from backline.relay.control import connect_endpoint
from backline.relay.control_socket import protocol_class
from backline.relay.state import Relay
from backline.relay.tls_identity import TlsReloader
from backline.relay.tls_socket import TLSListener

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
    """Hand agents' control sockets straight to :func:`connect_endpoint`.

    A control socket lives for days and one relay holds ten thousand. Under the full
    Starlette stack (error and security middleware, the exception wrapper twice, the
    router and the route) each one keeps a dozen coroutine frames alive that do nothing
    for a WebSocket without an ``Origin`` header, which is what agents open. A socket
    that has an ``Origin`` (a browser) takes the full stack, so the cross-site check and
    its audit apply exactly as before; so does everything else.
    """

    PATH = "/agent/connect"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "websocket" and scope["path"] == self.PATH
                and not scope.get("root_path")
                and not any(name == b"origin" for name, _ in scope["headers"])):
            scope["app"] = self.app  # what Starlette sets; the endpoint finds the relay there
            await connect_endpoint(WebSocket(scope, receive=receive, send=send))
            return
        await self.app(scope, receive, send)


def uvicorn_config(relay: Relay) -> uvicorn.Config:
    cfg = relay.config
    loop = choose_loop(cfg.event_loop)
    if loop == "asyncio":
        shrink_asyncio_tls_buffer()
    tls: dict[str, str] = {}
    if cfg.tls == "self-signed":
        tls = {"ssl_certfile": str(relay.datadir.tls_cert),
               "ssl_keyfile": str(relay.datadir.tls_key)}
    elif cfg.tls == "files":
        tls = {"ssl_certfile": cfg.tls_cert_file, "ssl_keyfile": cfg.tls_key_file}
    app = build_app(relay)
    return uvicorn.Config(
        AgentSocketShortcut(app),
        host=cfg.listen_host,
        port=cfg.listen_port,
        loop=loop,
        http="h11",
        ws=protocol_class(app, connect_endpoint),
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        ws_max_size=WS_MAX_FRAME,
        backlog=listening.BACKLOG,
        proxy_headers=bool(cfg.trusted_proxies),
        forwarded_allow_ips=cfg.trusted_proxies or None,
        log_level=cfg.log_level,
        log_config=logfmt.uvicorn_log_config(),
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        **tls,  # type: ignore[arg-type]
    )


def with_tls_policy(config: uvicorn.Config) -> uvicorn.Config:
    """Load ``config`` and put its TLS context under the relay's policy
    (:mod:`tls_policy`: Mozilla intermediate, no session tickets in TLS 1.2 or 1.3).
    Both TLS engines use this one context. uvicorn keeps a loaded config."""
    if not config.loaded:
        config.load()
    if config.ssl is not None:
        tls_policy.harden(config.ssl)
    return config


def listen(cfg: RelayConfig) -> list[socket.socket]:
    """The relay's listening sockets: those bound before the relay was imported
    (:func:`listening.prebind`) if they are for this address, else new ones."""
    early = listening.take(cfg.listen_host, cfg.listen_port)
    return early if early is not None else listening.bind(cfg.listen_host, cfg.listen_port)


class RelayServer(uvicorn.Server):
    """uvicorn's server, telling the relay when it starts to stop: the agents' sockets
    it then closes are recorded as ended by the shutdown, not as closed by the agent."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.relay.stopping = True
        await super().shutdown(sockets=sockets)


class SocketTLSServer(RelayServer):
    """uvicorn, with TLS run by OpenSSL on each socket (:mod:`tls_socket`) instead of
    by the event loop. Everything above the transport is uvicorn's own: its HTTP and
    WebSocket protocols, lifespan, connection tracking and graceful shutdown."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """As uvicorn's, on the listening ``sockets`` from :func:`listen`."""
        config = self.config
        if config.ssl is None or sockets is None:
            await super().startup(sockets=sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state,
                app_state=self.lifespan.state)

        self.servers = [TLSListener(  # type: ignore[list-item]
            asyncio.get_running_loop(), sockets, config.ssl, create_protocol)]
        self.started = True


class _ReloadsTLS:
    """After start-up: SIGHUP (or changed files) loads a rotated certificate, and its
    expiry is checked (:class:`tls_identity.TlsReloader`)."""

    reloader: TlsReloader | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)  # type: ignore[misc]
        if self.reloader is not None:
            self.reloader.install(asyncio.get_running_loop())


class LoopTLSRelayServer(_ReloadsTLS, RelayServer):
    """uvicorn as it is (the event loop's TLS), reloading certificates."""


class SocketTLSRelayServer(_ReloadsTLS, SocketTLSServer):
    """:class:`SocketTLSServer`, reloading certificates."""


def serve(relay: Relay, sockets: list[socket.socket]) -> None:
    """Serve until stopped, on the listening ``sockets`` from :func:`listen`."""
    logfmt.configure(relay.config.log_level, relay.config.log_format)
    config = with_tls_policy(uvicorn_config(relay))
    server_class: type[LoopTLSRelayServer | SocketTLSRelayServer] = (
        SocketTLSRelayServer if relay.config.tls_engine == "socket" else LoopTLSRelayServer)
    server = server_class(config, relay)
    server.reloader = TlsReloader(relay, config.ssl)
    if hasattr(signal, "SIGHUP"):  # until the reloader takes it: not the default, an exit
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.run(sockets=sockets)
