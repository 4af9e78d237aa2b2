"""``backline-relay serve``: the relay's app on the bounded uvicorn server.

The wiring that knows the relay lives here, out of the transport engine
(:mod:`backline.relay.net.server`): the app and the agents' control endpoint, the
TLS files from the data directory, the connection limits from the config, refusals
audited as floods, the metrics registry, the "stopping" flag, and the certificate
reloader. The engine is handed each of them.
"""

from __future__ import annotations

import signal
import socket

import uvicorn

from backline.relay import logfmt
from backline.relay.app import build_app
from backline.relay.audit_floods import FloodAggregator
from backline.relay.control import connect_endpoint
from backline.relay.net import conn_limits, listening
from backline.relay.net.conn_http import BoundedH11Protocol
from backline.relay.net.control_socket import protocol_class
from backline.relay.net.server import (
    WS_MAX_FRAME,
    AgentSocketShortcut,
    BoundedServer,
    choose_loop,
    shrink_asyncio_tls_buffer,
    with_tls_policy,
)
from backline.relay.state import Relay
from backline.relay.tls_identity import TlsReloader


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
        AgentSocketShortcut(app, connect_endpoint),
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


def server(relay: Relay) -> BoundedServer:
    """The relay's server, not yet started."""
    config = with_tls_policy(uvicorn_config(relay))
    # Refusals and timeouts come by the thousand in an attack: aggregated as every
    # flood (the first 5 per address a minute, then one summary), and the rows that
    # are written go out with the others of their loop turn in one transaction
    # (``record_soon``), not one commit each on the accept path: a commit each
    # stalled the loop, and /healthz with it, for the first seconds of an attack.
    floods = FloodAggregator(relay.record_soon)

    def stopping() -> None:
        # First: the agents' sockets the shutdown then closes are recorded as ended by
        # the shutdown, not as closed by the agent.
        relay.stopping = True

    return BoundedServer(
        config, engine=relay.config.tls_engine,
        limits=conn_limits.Limits.from_config(relay.config),
        reporter=conn_limits.flood_reporter(floods.record),
        registry=relay.metrics.registry,
        on_stopping=stopping,
        # before the relay's own last events and its seal
        before_lifespan_shutdown=floods.flush_all,
        reloader=TlsReloader(relay, config.ssl))


def serve(relay: Relay, sockets: list[socket.socket]) -> None:
    """Serve until stopped, on the listening ``sockets`` from
    :func:`backline.relay.net.server.listen`."""
    logfmt.configure(relay.config.log_level, relay.config.log_format)
    bounded = server(relay)
    if hasattr(signal, "SIGHUP"):  # until the reloader takes it: not the default, an exit
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    bounded.run(sockets=sockets)
