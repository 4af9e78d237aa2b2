"""The relay's listening sockets, bound as early as the process can.

Why early: after a relay restart every agent reconnects at once. An agent whose
connection is *refused* backs off (its wait doubles); one whose connection lands in
the kernel's backlog simply waits for the relay to accept it. Importing the relay
(SQLAlchemy, Starlette, asyncssh...) takes about a second, longer under the load of a
reconnecting fleet, so ``backline-relay serve`` binds here first, with nothing but the
configuration loaded (:func:`prebind`, called by :mod:`backline.relay.launch`), and
the server later takes those sockets (:func:`take`) if they match the address it was
configured with. Anything unexpected — an option this module does not know, a
configuration error, a taken port — and it does nothing: the normal start then binds,
or reports the error, as before.

Only this module's standard-library imports and :mod:`backline.relay.config` are
loaded by then.
"""

from __future__ import annotations

import socket
from pathlib import Path

# Connections the kernel holds for us while the relay is busy (Linux caps it at
# net.core.somaxconn, 4096 by default): a reconnecting fleet waits here, not refused.
BACKLOG = 4096

_prebound: tuple[str, int, list[socket.socket]] | None = None

# ``serve`` options that decide the address; any other option means "don't guess".
_ADDRESS_OPTIONS = {"--host": "listen_host", "--port": "listen_port",
                    "--config": "config", "--data-dir": "data_dir"}


def bind(host: str | None, port: int, backlog: int = BACKLOG) -> list[socket.socket]:
    """Bound, listening sockets for every address of ``host``, as asyncio would."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            try:
                sock = socket.socket(family, kind, proto)
            except OSError:
                continue  # e.g. IPv6 switched off in the kernel: as asyncio, skip it
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no usable address for {host or '*'}:{port}")
    return sockets


def _serve_options(args: list[str]) -> dict[str, str] | None:
    """``--host``/``--port``/``--config``/``--data-dir`` of a ``serve`` command line, or
    ``None`` when it holds anything else (help, a typo, an option added later)."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        name, eq, value = arg.partition("=")
        if name not in _ADDRESS_OPTIONS:
            return None
        if not eq:
            if i + 1 >= len(args):
                return None
            value = args[i + 1]
            i += 1
        found[_ADDRESS_OPTIONS[name]] = value
        i += 1
    return found


def prebind(args: list[str]) -> None:
    """Bind the listening sockets for ``serve ARGS`` now, if the address is certain."""
    global _prebound
    options = _serve_options(args)
    if options is None:
        return
    try:
        from backline.relay import config as config_mod

        overrides: dict[str, object] = {}
        if "data_dir" in options:
            overrides["data_dir"] = Path(options["data_dir"])
        if "listen_host" in options:
            overrides["listen_host"] = options["listen_host"]
        if "listen_port" in options:
            overrides["listen_port"] = int(options["listen_port"])
        config_file = Path(options["config"]) if "config" in options else None
        cfg = config_mod.load(config_file, overrides)
        _prebound = (cfg.listen_host, cfg.listen_port,
                     bind(cfg.listen_host, cfg.listen_port))
    except Exception:
        _prebound = None


def take(host: str, port: int) -> list[socket.socket] | None:
    """The sockets :func:`prebind` made, if they are for ``host:port``; else ``None``
    (and any that were made are closed)."""
    global _prebound
    prebound, _prebound = _prebound, None
    if prebound is None:
        return None
    if (prebound[0], prebound[1]) == (host, port):
        return prebound[2]
    for sock in prebound[2]:
        sock.close()
    return None
