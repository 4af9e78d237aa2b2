"""Capabilities: what a technician can do on this machine, one SSH subsystem each.

A capability is a name (``info``, ``diagnostics``, ``fix``, ...) and an async handler
that gets the asyncssh server process of its channel (text, UTF-8: ``process.stdout
.write(str)``, ``await process.stdout.drain()``, ``process.stdin`` for input) and a
:class:`SessionContext`. The handler returns the exit status (``None`` means 0) or
calls ``process.exit()`` itself. It runs only after the local policy said yes
(:mod:`backline.agent.sshserver` makes sure of that), so handlers never check policy.

Other parts of the agent add theirs with :meth:`Registry.register`; the built-in
``info`` keeps the session machinery testable on its own.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backline.agent.activity import ActivityLog
from backline.agent.facts import gather
from backline.agent.policy import Policy
from backline.common import __version__
from backline.common.protocol import CAPABILITY_RE


@dataclass(frozen=True)
class SessionContext:
    """What a capability handler may know about the session it serves."""

    session_id: str
    principal: str  # the enrolled agent id, or the attended session's at_... name
    technician: str
    mode: str  # managed | attended
    policy: Policy
    log: ActivityLog
    state_root: Path | None = None
    reason: str = ""
    ticket: str = ""
    capabilities: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Any, SessionContext], Awaitable[int | None]]


@dataclass(frozen=True)
class Capability:
    name: str
    handler: Handler
    summary: str = ""


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, Capability] = {}

    def register(self, name: str, handler: Handler, summary: str = "",
                 replace: bool = False) -> None:
        if not CAPABILITY_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a capability name (short, lowercase)")
        if name in self._by_name and not replace:
            raise ValueError(f"capability {name!r} is already registered")
        self._by_name[name] = Capability(name, handler, summary)

    def get(self, name: str) -> Capability | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


# --- built-ins ---------------------------------------------------------------------


async def info(process: Any, ctx: SessionContext) -> int:
    """One JSON object about this agent and session; reads nothing private."""
    body = {
        "agent": {**gather(), "version": __version__, "python": platform.python_version(),
                  "platform": sys.platform},
        "session": {"id": ctx.session_id, "principal": ctx.principal, "mode": ctx.mode,
                    "technician": ctx.technician, "capabilities": list(ctx.capabilities)},
        "policy": {"source": ctx.policy.source, "capabilities": ctx.policy.summary()},
        "time": round(time.time(), 3),
    }
    process.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
    await process.stdout.drain()
    return 0


async def diagnostics(process: Any, ctx: SessionContext) -> int | None:
    """The diagnostics report as JSON lines (``agent/diagnostics``), streamed.

    The relay first sends a small request (which sections) and closes its side; a
    request this agent cannot honour gets one ``error`` line and exit status 2."""
    from backline.agent.diagnostics import netcheck
    from backline.agent.diagnostics.config import ConfigError, DiagnosticsConfig, load_config
    from backline.agent.diagnostics.engine import serve_subsystem
    from backline.common.diagnostics.request import RequestError, parse_request

    try:
        request = parse_request(await read_request(process))
    except RequestError as exc:
        ctx.log.record("diagnostics.bad_request", session_id=ctx.session_id,
                       detail=str(exc)[:300])
        process.stdout.write(json.dumps({"type": "error", "error": "bad_request",
                                         "detail": str(exc)}) + "\n")
        await process.stdout.drain()
        return EXIT_BAD_REQUEST
    try:
        config = load_config(ctx.state_root)
    except ConfigError as exc:
        ctx.log.record("diagnostics.config_error", session_id=ctx.session_id,
                       detail=str(exc)[:300])
        config = DiagnosticsConfig()
    await serve_subsystem(process, config, clock=netcheck.relay_clock(),
                          only=request.sections)
    return None


EXIT_BAD_REQUEST = 2
#: How long the agent waits for the request (the relay sends it at once).
REQUEST_WAIT_S = 10.0


async def read_request(process: Any, limit: int | None = None) -> str:
    """Everything the client sends before closing its side, bounded in size and time.

    Raises ``RequestError`` when the request is too large, does not arrive in time,
    or is not text."""
    import asyncio

    from backline.common.diagnostics.request import MAX_REQUEST_BYTES, RequestError

    most = MAX_REQUEST_BYTES if limit is None else limit
    parts: list[str] = []
    size = 0
    try:
        async with asyncio.timeout(REQUEST_WAIT_S):
            while size <= most:
                chunk = await process.stdin.read(most + 1 - size)
                if not chunk:
                    return "".join(parts)
                parts.append(chunk)
                size += len(chunk.encode("utf-8", "surrogateescape"))
    except TimeoutError:
        raise RequestError(f"no request arrived within {REQUEST_WAIT_S:g} s (send the "
                           "request, then close the channel's input)") from None
    except UnicodeDecodeError:
        raise RequestError("the request is not UTF-8 text") from None
    raise RequestError(f"the request is larger than {most} bytes")


def builtin_registry() -> Registry:
    registry = Registry()
    registry.register("info", info, "who this agent is and what its policy allows")
    try:
        from backline.agent.diagnostics import engine  # noqa: F401 - present?
    except ImportError:
        pass
    else:
        registry.register("diagnostics", diagnostics,
                          "what is wrong with this machine (JSON lines, streamed)")
    return registry
