"""Running the relay under uvicorn, tuned for many idle agent sockets.

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
"""

from __future__ import annotations

import asyncio.sslproto
import importlib.util
import logging
import signal
import socket
import sys

import uvicorn
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket
from uvicorn.config import STARTUP_FAILURE

from backline.relay import logfmt
from backline.relay.app import build_app
from backline.relay.audit_floods import FloodAggregator
from backline.relay.config import RelayConfig
from backline.relay.control import connect_endpoint
from backline.relay.net import conn_limits, listening, tls_policy
from backline.relay.net.conn_http import BoundedH11Protocol, LoopListener
from backline.relay.net.control_socket import protocol_class
from backline.relay.net.tls_socket import TLSListener
from backline.relay.state import Relay
from backline.relay.tls_identity import TlsReloader

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

    It is also the app's outermost layer, where a client gone in the middle of its
    request (``ClientDisconnect``, e.g. cut by its body deadline) ends quietly.
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
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            # The client left (or its body deadline ended it: relay/net/conn_http.py) while
            # its request was being read: nobody to answer, and not a server error to
            # log with a traceback, which a trickling attacker could repeat at will.
            return


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
        http=BoundedH11Protocol,
        timeout_keep_alive=cfg.keepalive_timeout_s,  # type: ignore[arg-type]
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


class BoundedServer(uvicorn.Server):
    """uvicorn, with the relay's own listeners: every accepted connection takes a slot
    under the unauthenticated-connection caps (:class:`conn_limits.Gate`) before its
    TLS handshake. TLS is run by OpenSSL on each socket (:mod:`tls_socket`, engine
    "socket") or by the event loop (:class:`LoopListener`, engine "loop"; also plain
    HTTP behind a TLS-ending proxy). Everything above the transport is uvicorn's own:
    its HTTP and WebSocket protocols, lifespan, connection tracking and graceful
    shutdown."""

    def __init__(self, config: uvicorn.Config, relay: Relay | None = None,
                 engine: str = "socket") -> None:
        super().__init__(config)
        self.relay = relay
        self.engine = engine
        self.gate: conn_limits.Gate | None = None
        self.floods: FloodAggregator | None = None
        #: Loads a rotated certificate on SIGHUP (or changed files) once started.
        self.reloader: TlsReloader | None = None

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """Tell the relay it is stopping first: the agents' sockets it then closes are
        recorded as ended by the shutdown, not as closed by the agent."""
        if self.relay is not None:
            self.relay.stopping = True
        await super().shutdown(sockets=sockets)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """As uvicorn's, on the listening ``sockets`` from :func:`listen`."""
        config = self.config
        relay = self.relay
        if sockets is None or relay is None:
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
        limits = conn_limits.Limits.from_config(relay.config)
        # Refusals and timeouts come by the thousand in an attack: aggregated as every
        # flood (the first 5 per address a minute, then one summary), and the rows that
        # are written go out with the others of their loop turn in one transaction
        # (``record_soon``), not one commit each on the accept path: a commit each
        # stalled the loop, and /healthz with it, for the first seconds of an attack.
        self.floods = floods = FloodAggregator(relay.record_soon)
        self.gate = gate = conn_limits.Gate(
            limits, loop, conn_limits.flood_reporter(floods.record), relay.metrics.registry)
        lifespan_shutdown = self.lifespan.shutdown

        async def shutdown() -> None:
            floods.flush_all()  # before the relay's own last events and its seal
            await lifespan_shutdown()

        self.lifespan.shutdown = shutdown  # type: ignore[method-assign]
        logging.getLogger("backline.relay").info(
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


SocketTLSServer = BoundedServer  # the name it had when only the socket engine used it


def serve(relay: Relay, sockets: list[socket.socket]) -> None:
    """Serve until stopped, on the listening ``sockets`` from :func:`listen`."""
    logfmt.configure(relay.config.log_level, relay.config.log_format)
    config = with_tls_policy(uvicorn_config(relay))
    server = BoundedServer(config, relay, relay.config.tls_engine)
    server.reloader = TlsReloader(relay, config.ssl)
    if hasattr(signal, "SIGHUP"):  # until the reloader takes it: not the default, an exit
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    server.run(sockets=sockets)
