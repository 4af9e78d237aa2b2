"""The private APIs relay/net relies on (its package docstring lists them) are still
there on the installed versions; and no other file of the package touches a private
attribute of ssl, asyncio or uvicorn.

Each listed API has one check here, which does what the engine does with it where it
can (a real TLS object, uvicorn's protocols driven with a request) and otherwise reads
the installed source. A check that fails names the API, the package and its installed
version: an upgrade removed or changed something the engine needs, and relay/net must
follow before that version is pinned.
"""

from __future__ import annotations

import ast
import asyncio
import asyncio.sslproto
import dataclasses
import importlib.metadata
import inspect
import logging
import re
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import backline.relay.net

ROOT = Path(__file__).resolve().parents[2]
LISTED = re.compile(r"^- ``(?P<api>[^`]+)`` \((?P<package>[a-z0-9_-]+)\):", re.MULTILINE)


def listed() -> dict[str, str]:
    """``api -> package`` from relay/net/__init__.py's docstring."""
    doc = backline.relay.net.__doc__ or ""
    return {m["api"]: m["package"] for m in LISTED.finditer(doc)}


def installed(package: str) -> str:
    if package == "python":
        return f"Python {sys.version.split()[0]}"
    return f"{package} {importlib.metadata.version(package)}"


CHECKS: dict[str, Callable[[], None]] = {}


def check(api: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        CHECKS[api] = fn
        return fn
    return register


def has(obj: Any, *names: str) -> None:
    missing = [n for n in names if not hasattr(obj, n)]
    assert not missing, f"{getattr(obj, '__qualname__', obj)!r} has no {', '.join(missing)}"


def in_source(obj: Any, *fragments: str) -> None:
    source = inspect.getsource(obj)
    missing = [f for f in fragments if f not in source]
    assert not missing, f"{obj.__qualname__} no longer does: {missing}"


class FakeTransport(asyncio.Transport):
    """Just enough of a transport for uvicorn's protocols to start on: the true
    boundary here is uvicorn itself."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.protocol: Any = None
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8443), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def write(self, data: Any) -> None:
        self.written += data

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    return None


def loaded_config(**kw: Any) -> Any:
    import uvicorn

    config = uvicorn.Config(_no_app, log_config=None, lifespan="off", **kw)
    config.load()
    return config


# -- the checks, one per listed API ---------------------------------------------------


@check("ssl.SSLSocket._sslobj")
def _sslobj() -> None:
    a, b = socket.socketpair()
    try:
        tls = ssl.create_default_context().wrap_socket(
            a, server_hostname="relay.test", do_handshake_on_connect=False)
        inner = getattr(tls, "_sslobj", None)
        assert inner is not None, "a connected SSLSocket has no _sslobj"
        has(inner, "read", "write", "pending")
        assert inner.pending() == 0
        tls.close()
    finally:
        a.close()
        b.close()


@check("ssl._ssl.PySSLContext layout")
def _pysslcontext() -> None:
    from backline.relay.net import tls_policy

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if hasattr(ctx, "set_groups"):
        return  # Python 3.15+: the public way is used, the layout no longer matters
    assert getattr(ssl, "_ssl", None) is not None and ssl._ssl.__file__  # type: ignore[attr-defined]
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("backline.relay.tls")
    logger.addHandler(handler)
    try:
        tls_policy.set_groups(ctx, tls_policy.GROUPS)
    finally:
        logger.removeHandler(handler)
    assert not records, f"the ctypes path fell back: {records[0].getMessage()}"


@check("asyncio.sslproto.SSLProtocol.max_size")
def _max_size() -> None:
    has(asyncio.sslproto.SSLProtocol, "max_size")
    in_source(asyncio.sslproto.SSLProtocol, "self.max_size")


@check("uvicorn.config.STARTUP_FAILURE")
def _startup_failure() -> None:
    import uvicorn.config

    assert isinstance(getattr(uvicorn.config, "STARTUP_FAILURE", None), int)


@check("uvicorn.Server.startup internals")
def _server_startup() -> None:
    import uvicorn

    assert "sockets" in inspect.signature(uvicorn.Server.startup).parameters
    assert "sockets" in inspect.signature(uvicorn.Server.shutdown).parameters
    in_source(uvicorn.Server.startup, "await self.lifespan.startup()",
              "self.lifespan.should_exit", "config.http_protocol_class",
              "server_state=self.server_state", "app_state=self.lifespan.state",
              "self.servers", "self.started = True")
    in_source(uvicorn.Server.shutdown, "self.servers", "self.lifespan.shutdown()")
    config = loaded_config()
    server = uvicorn.Server(config)
    has(server, "server_state", "started")
    has(config, "http_protocol_class", "loaded", "load", "ssl")
    lifespan = config.lifespan_class(config)
    has(lifespan, "startup", "shutdown", "should_exit", "state")


def _h11(loop: asyncio.AbstractEventLoop, **kw: Any) -> tuple[Any, FakeTransport]:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.server import ServerState

    proto = H11Protocol(config=loaded_config(**kw), server_state=ServerState(),
                        app_state={}, _loop=loop)
    transport = FakeTransport()
    proto.connection_made(transport)
    return proto, transport


@check("uvicorn.protocols.http.h11_impl.H11Protocol")
def _h11protocol() -> None:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    for name in ("connection_made", "data_received", "on_response_complete",
                 "pause_writing", "resume_writing", "handle_websocket_upgrade"):
        assert name in H11Protocol.__dict__, f"H11Protocol.{name} is no longer its own"
    loop = asyncio.new_event_loop()
    try:
        proto, _ = _h11(loop)
        assert isinstance(proto.conn, h11.Connection)
        assert proto.conn.their_state is h11.IDLE
    finally:
        loop.close()


@check("uvicorn H11Protocol WebSocket hand-off")
def _handoff() -> None:
    made: list[dict[str, Any]] = []

    class Recorder(asyncio.Protocol):
        def __init__(self, **kw: Any) -> None:
            made.append(kw)
            self.data = b""
            self.transport: Any = None

        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.data += data

    loop = asyncio.new_event_loop()
    try:
        proto, transport = _h11(loop, ws=Recorder)
        proto.data_received(b"GET /agent/connect HTTP/1.1\r\nHost: relay\r\n"
                            b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            b"Sec-WebSocket-Version: 13\r\n\r\n")
    finally:
        loop.close()
    assert len(made) == 1, "the upgrade did not make the ws class"
    assert set(made[0]) == {"config", "server_state", "app_state"}, made[0]
    has(made[0]["server_state"], "connections", "tasks")
    has(made[0]["config"], "proxy_headers", "forwarded_allow_ips")
    ws = transport.protocol
    assert isinstance(ws, Recorder), "set_protocol was not called with the ws protocol"
    assert ws.transport is transport
    assert ws.data.startswith(b"GET /agent/connect HTTP/1.1\r\n"), ws.data[:80]


@check("uvicorn.protocols.websockets.wsproto_impl.WSProtocol")
def _wsprotocol() -> None:
    import wsproto
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol
    from uvicorn.server import ServerState

    for name in ("handle_connect", "handle_close"):
        assert name in WSProtocol.__dict__, f"WSProtocol.{name} is no longer its own"
    in_source(WSProtocol.handle_connect, "self.scope")
    loop = asyncio.new_event_loop()
    try:
        proto = WSProtocol(config=loaded_config(ws="wsproto"), server_state=ServerState(),
                           app_state={}, _loop=loop)
        assert isinstance(proto.conn, wsproto.WSConnection)
        has(proto.buffer, "max_length")
        has(proto, "close_sent", "queue", "config")
        has(proto.config, "ws_max_size")
        proto.connection_made(FakeTransport())
        has(proto, "transport", "client")
    finally:
        loop.close()


@check("wsproto extension frame hook")
def _wsproto_hook() -> None:
    from wsproto import WSConnection
    from wsproto.connection import ConnectionState
    from wsproto.events import AcceptConnection
    from wsproto.extensions import Extension
    from wsproto.frame_protocol import CloseReason, FrameDecoder, Opcode, RsvBits

    params = list(inspect.signature(Extension.frame_inbound_header).parameters)
    assert params == ["self", "proto", "opcode", "rsv", "payload_length"], params
    in_source(FrameDecoder, "extension.frame_inbound_header(self, opcode, rsv, payload_len)")
    has(CloseReason, "MESSAGE_TOO_BIG")
    has(Opcode, "TEXT", "BINARY", "CONTINUATION")
    assert RsvBits(False, False, False) is not None
    has(ConnectionState, "OPEN")
    has(WSConnection, "send", "state")
    assert "extensions" in {f.name for f in dataclasses.fields(AcceptConnection)}


@check("websockets.utils.accept_key and apply_mask")
def _websockets_helpers() -> None:
    from websockets.utils import accept_key, apply_mask

    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455
    assert apply_mask(b"\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02"
    try:
        from websockets.speedups import apply_mask as fast
    except ImportError:
        return  # wsframes falls back to the pure-Python one, as checked above
    assert fast(b"\x00\x00", b"\x01\x02\x03\x04") == b"\x01\x02"


def test_the_list_and_the_checks_agree() -> None:
    apis = listed()
    assert len(apis) >= 8, "relay/net/__init__.py lists no private APIs (format changed?)"
    assert set(apis) == set(CHECKS), (
        f"listed without a check: {sorted(set(apis) - set(CHECKS))}; "
        f"checked but not listed: {sorted(set(CHECKS) - set(apis))}")


@pytest.mark.parametrize("api", sorted(CHECKS))
def test_a_private_api_the_engine_relies_on_is_still_there(api: str) -> None:
    package = listed().get(api, "?")
    try:
        CHECKS[api]()
        return
    except (AssertionError, AttributeError, ImportError, TypeError, OSError) as exc:
        why = f"{type(exc).__name__}: {exc}"
    pytest.fail(f"relay/net relies on {api}, which {installed(package)} no longer offers "
                f"as it did: {why}. See relay/net/__init__.py for where it is used; fix "
                "that code before pinning this version.", pytrace=False)


# -- nobody else touches them -----------------------------------------------------------

#: The package's own files outside the engine (bench/ and tests/ are not the product).
SCANNED = [p for top in ("common", "agent", "relay") for p in sorted((ROOT / top).rglob("*.py"))
           if not p.is_relative_to(ROOT / "relay" / "net") and "__pycache__" not in p.parts]
LIBRARIES = ("ssl", "asyncio", "uvicorn")
#: asyncio's modules that are not its documented API (everything it documents is on
#: ``asyncio`` itself, or in ``asyncio.subprocess``).
ASYNCIO_INTERNAL = {"sslproto", "base_events", "selector_events", "proactor_events",
                    "unix_events", "windows_events", "windows_utils", "base_subprocess",
                    "base_futures", "base_tasks", "format_helpers", "coroutines", "trsock",
                    "constants", "staggered", "mixins", "transports", "events", "futures",
                    "tasks", "streams", "protocols", "locks", "queues", "runners",
                    "timeouts", "taskgroups", "threads", "exceptions", "log"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library_sources() -> list[Path]:
    import uvicorn

    asyncio_dir = Path(asyncio.__file__).parent
    return [Path(ssl.__file__), *asyncio_dir.glob("*.py"),
            *Path(uvicorn.__file__).parent.rglob("*.py")]


def _private_names_defined(paths: list[Path]) -> set[str]:
    """Every private name these files define or use as an attribute: the libraries'
    private vocabulary (or ours, for our files)."""
    names: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute | ast.FunctionDef | ast.AsyncFunctionDef
                          | ast.ClassDef):
                name = node.attr if isinstance(node, ast.Attribute) else node.name
            elif isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.arg):
                name = node.arg
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value  # __slots__ entries, getattr names
            else:
                continue
            if _private(name):
                names.add(name)
    return names


def _ours_defined() -> set[str]:
    """Private names our own code defines: assigned, declared or def'd (not merely
    read), anywhere in the package, relay/net included."""
    names: set[str] = set()
    for top in ("common", "agent", "relay"):
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    names.add(node.name)
                elif isinstance(node, ast.arg):
                    names.add(node.arg)
                elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                    names.add(node.attr)
                elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                    names.add(node.id)
                elif (isinstance(node, ast.Assign) and any(
                        isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)):
                    names |= {c.value for c in ast.walk(node.value)
                              if isinstance(c, ast.Constant) and isinstance(c.value, str)}
    return {n for n in names if _private(n)}


def _dotted(node: ast.expr) -> list[str] | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _library_name_private(full: str) -> bool:
    """Whether a dotted name inside ssl, asyncio or uvicorn is private to it."""
    parts = full.split(".")
    if any(_private(p) for p in parts[1:]):
        return True
    if parts[0] == "uvicorn" and len(parts) > 1:
        return parts[1] not in {"Config", "Server", "run", "main"}  # uvicorn.__all__
    if parts[0] == "asyncio" and len(parts) > 1:
        return parts[1] in ASYNCIO_INTERNAL
    return False


def private_touches(where: str, source: str, library_private: set[str],
                    ours: set[str]) -> list[str]:
    """``file:line: what`` for each private attribute of ssl, asyncio or uvicorn that
    ``source`` touches: a private name imported or reached from those modules, or a
    private attribute of theirs (not a name our own code defines) read or written on
    anything but ``self``/``cls``."""
    tree = ast.parse(source, where)
    aliases: dict[str, str] = {}  # local name -> dotted name in a library
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LIBRARIES:
                    if _library_name_private(alias.name):
                        found.append(f"{where}:{node.lineno}: import {alias.name}")
                    local = alias.asname or alias.name.split(".")[0]
                    aliases[local] = alias.name if alias.asname else local
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] in LIBRARIES:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    if _library_name_private(full):
                        found.append(f"{where}:{node.lineno}: from {node.module} "
                                     f"import {alias.name}")
                    aliases[alias.asname or alias.name] = full
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = _dotted(node)
            if parts and parts[0] in aliases:
                full = ".".join([aliases[parts[0]], *parts[1:]])
                if _library_name_private(full):
                    found.append(f"{where}:{node.lineno}: {full}")
                    continue
            if (_private(node.attr) and node.attr in library_private
                    and node.attr not in ours
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("self", "cls"))
                    # os._exit, sys._getframe: documented functions of other modules
                    # that happen to share a private name with asyncio or uvicorn.
                    and not (isinstance(node.value, ast.Name)
                             and node.value.id in ("os", "sys")
                             and node.value.id not in aliases)):
                found.append(f"{where}:{node.lineno}: .{node.attr} ({ast.unparse(node)})")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
              and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
              and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
              and isinstance(node.args[1].value, str)):
            name = node.args[1].value
            if _private(name) and name in library_private and name not in ours:
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(found))


def test_the_scan_sees_private_touches_and_not_our_own_attributes() -> None:
    library_private = _private_names_defined(_library_sources())
    assert {"_sslobj", "_fatal_error", "_selector"} <= library_private
    code = (
        "import ssl\nimport asyncio.sslproto\n"                # 2: an internal module
        "from uvicorn.config import STARTUP_FAILURE\n"          # 3: not uvicorn's API
        "from uvicorn.protocols.http.h11_impl import H11Protocol\n"  # 4: nor that
        "def f(sock, transport, loop, thing):\n"
        "    a = sock._sslobj\n"                       # 6: ssl's, on a socket
        "    transport._fatal_error(None)\n"           # 7: asyncio's
        "    asyncio.sslproto.SSLProtocol.max_size = 1\n"  # 8: an internal module
        "    b = getattr(loop, '_selector')\n"         # 9: by name
        "    c = ssl._ssl\n"                           # 10: a private module
        "    d = thing._mine + self_like._mine\n"      # 11: ours: not flagged
        "class C:\n"
        "    def g(self):\n"
        "        return self._sslobj, self._mine\n"    # 14: self's: not flagged
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "import os\n"
        "os._exit(0)\n")                              # 18: os's documented: not flagged
    hits = private_touches("sample.py", code, library_private, {"_mine"})
    lines = sorted({int(h.split(":")[1]) for h in hits})
    assert lines == [2, 3, 4, 6, 7, 8, 9, 10], hits


def test_no_file_outside_relay_net_touches_a_private_attribute_of_ssl_asyncio_uvicorn(
) -> None:
    assert len(SCANNED) > 50
    library_private = _private_names_defined(_library_sources())
    ours = _ours_defined()
    found = [hit for path in SCANNED
             for hit in private_touches(str(path.relative_to(ROOT)), path.read_text(),
                                        library_private, ours)]
    assert not found, ("private attributes of ssl, asyncio or uvicorn touched outside "
                       "relay/net/ (move that code into the engine and list the API in "
                       "relay/net/__init__.py):\n" + "\n".join(found))
