"""What every capability room on the agent shares: the session context and the registry.

A capability is a name (``info``, ``diagnostics``, ``fix``, ...) and an async handler
that gets the asyncssh server process of its channel (text, UTF-8: ``process.stdout
.write(str)``, ``await process.stdout.drain()``, ``process.stdin`` for input) and a
:class:`SessionContext`. The handler returns the exit status (``None`` means 0) or
calls ``process.exit()`` itself. It runs only after the local policy said yes
(:mod:`backline.agent.sshserver` makes sure of that), so handlers never check policy.

Each capability is one module of this package (``info.py``, ``diagnostics.py``, ...).
The registry knows them by name and imports a module only when a session first opens
its channel, so an idle agent holds none of their machinery (the diagnostics
collectors, later a browser driver). Tests and extensions add handlers of their own
with :meth:`Registry.register`.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backline.agent.activity import ActivityLog
from backline.agent.policy import Policy
from backline.common.capabilities import CAPABILITY_RE, ChannelExit


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


@dataclass
class Capability:
    """A name and its handler; ``target`` (``module:function``) is imported on first use."""

    name: str
    handler: Handler | None = None
    summary: str = ""
    target: str = ""
    #: A terminal: its channel carries bytes (no encoding) and must come with a pty
    #: request; every other capability is text and refuses a pty.
    terminal: bool = False
    #: The room asks the customer itself, after its own checks and with what it
    #: learnt from them (``fix``: the fix's title, risk and parameters): under ``ask``
    #: the SSH server then does not ask first, and hands the room the asker as
    #: ``ctx.extra["asker"]``. Nothing is skipped: the room must ask.
    asks_itself: bool = False

    def load(self) -> Handler:
        if self.handler is None:
            module, _, attr = self.target.partition(":")
            self.handler = getattr(importlib.import_module(module), attr)
        return self.handler


class Registry:
    def __init__(self) -> None:
        self._by_name: dict[str, Capability] = {}

    def register(self, name: str, handler: Handler, summary: str = "",
                 replace: bool = False, terminal: bool = False) -> None:
        if not CAPABILITY_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a capability name (short, lowercase)")
        if name in self._by_name and not replace:
            raise ValueError(f"capability {name!r} is already registered")
        self._by_name[name] = Capability(name, handler, summary, terminal=terminal)

    def register_lazy(self, name: str, target: str, summary: str = "",
                      terminal: bool = False, asks_itself: bool = False) -> None:
        """Register ``module:function``, imported the first time a channel needs it."""
        if not CAPABILITY_RE.fullmatch(name):
            raise ValueError(f"{name!r} is not a capability name (short, lowercase)")
        self._by_name[name] = Capability(name, None, summary, target, terminal, asks_itself)

    def get(self, name: str) -> Capability | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


EXIT_BAD_REQUEST = ChannelExit.BAD_REQUEST
#: How long the agent waits for the request (the relay sends it at once).
REQUEST_WAIT_S = 10.0


async def read_request(process: Any, limit: int | None = None) -> str:
    """Everything the client sends before closing its side, bounded in size and time.

    Raises ``RequestError`` when the request is too large, does not arrive in time,
    or is not text."""
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
