"""How the relay bridges one capability's SSH channel: the spec every room fills in.

A capability on the relay is a :class:`ChannelSpec`: its name, how its request is
built from what the technician asked for and checked (:meth:`ChannelSpec.request`), its
transport, and what is kept when it ends. The one channel runner
(:mod:`backline.relay.capabilities.runner`) reads the spec and does the rest (the
channel's bookkeeping, bounds, audit, recording), so a new capability is one module
that declares a spec, and one line in the registry (:mod:`backline.relay.capabilities`).

Transports:

- ``ONESHOT``: the request is written, the input closed, the output collected (bounded,
  hashed) and answered in one piece (``POST .../channels/{capability}``), or streamed
  to a browser line by line as JSON text frames (``/stream/{capability}``); either way
  it ends in the same audit event;
- ``LINES``: the same, for output that is JSON lines meant to be shown as they come;
- ``DUPLEX``: a pty: bytes both ways over a binary WebSocket with flow control, and a
  recording (:mod:`backline.relay.capabilities.shell`). Only the stream serves it.
- ``JSON_DUPLEX``: JSON lines both ways, one room with viewers (``cobrowse``): the
  agent's lines fanned out to every console and recorded as they are, the consoles'
  lines validated before they reach the agent. Only the stream serves it, through the
  room's ``stream`` (:mod:`backline.relay.capabilities.cobrowse`).

A room whose channel is a conversation rather than one request (``fix``: the request,
then maybe a cancel, with a run record and audit events of its own along the way)
declares ``answer`` and ``stream``: the runner and the stream socket then hand it the
channel's life, and it still opens and ends its channel through the runner
(:meth:`~backline.relay.capabilities.runner.ChannelRunner.channel`, ``finished``). A
room that needs more than ``agents:write`` names the ``permission``.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any


class Transport(enum.Enum):
    ONESHOT = "oneshot"
    LINES = "lines"
    DUPLEX = "duplex"
    JSON_DUPLEX = "json_duplex"

    @property
    def stream_only(self) -> bool:
        """Served only on the console's socket (a room with viewers), never by REST."""
        return self in (Transport.DUPLEX, Transport.JSON_DUPLEX)


class RecordingFailed(Exception):
    """A channel's recording could not be written (a full disk, a failing device)."""


class RecordingNotFiled(Exception):
    """The recording's blob is written (``sha256``) but its row could not be saved."""

    def __init__(self, sha256: str, size: int, detail: str) -> None:
        super().__init__(detail)
        self.sha256, self.size, self.detail = sha256, size, detail


class RequestRefused(ValueError):
    """What the technician asked of a capability cannot be asked: a 400 with a code."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


#: The terminal types a pty channel may ask for (the console picks one with ``?term=``).
TERM_TYPES = ("xterm-256color", "xterm", "vt100", "linux", "screen-256color")


@dataclass(frozen=True)
class Pty:
    """A pty request: terminal type and size (columns x rows)."""

    term: str
    cols: int
    rows: int


@dataclass(frozen=True)
class KeptContext:
    """What a keeper knows of the channel whose output it keeps."""

    session_id: str
    mode: str  # managed | attended
    principal: str
    technician: str
    actor: str


#: Keeps a finished channel's output (a diagnostics report): the kept thing's id, or None.
Keeper = Callable[[Any, KeptContext, bytes], "str | None"]
#: Builds a channel's request from what was asked (``sections`` ...): bytes written
#: to the channel before its input is closed, or None (nothing written, input open).
RequestBuilder = Callable[[Mapping[str, Any]], "bytes | None"]


#: Runs a conversational room's channel for REST: (runner, live session, actor,
#: principal, what was asked) -> the answer (``ChannelResult``'s fields, and more).
Answerer = Callable[[Any, Any, str, Any, Mapping[str, Any]], Awaitable[dict[str, Any]]]
#: Serves a conversational room on an accepted browser socket: (runner, socket, live
#: session, actor, principal); it reads the client's first frame itself.
Streamer = Callable[[Any, Any, Any, str, Any], Awaitable[None]]


def no_request(capability: str) -> RequestBuilder:
    def build(asked: Mapping[str, Any]) -> bytes | None:
        if any(v is not None for v in asked.values()):
            raise RequestRefused("bad_field", f"{capability} takes no request body")
        return None

    return build


@dataclass(frozen=True)
class ChannelSpec:
    """One capability's channel, as the relay bridges it."""

    name: str
    #: What REST and ``/stream`` do with it (DUPLEX: only the stream, as a terminal).
    transport: Transport
    build_request: RequestBuilder
    #: Called with (the keeper's services, context, whole output) when the channel
    #: ended with status 0 and was not cut; its id goes into the answer as ``report``.
    keep: Keeper | None = None
    #: Whether the channel is recorded while it runs (a pty: asciicast; JSON lines:
    #: the lines as they came, see :mod:`.recording`).
    recorded: bool = False
    summary: str = ""
    #: A conversational room's own REST run and stream (see the module's docstring).
    answer: Answerer | None = None
    stream: Streamer | None = None
    #: The permission needed beyond ``agents:write`` (``fixes:run``), or None.
    permission: str | None = None

    def request(self, asked: Mapping[str, Any]) -> bytes | None:
        """The channel's request from what the technician asked; ``RequestRefused``
        when it cannot be asked."""
        return self.build_request(asked)


def plain(name: str, summary: str = "") -> ChannelSpec:
    """A capability with no room of its own on the relay: no request, its output
    answered as it came (JSON, JSON lines or text), nothing kept."""
    return ChannelSpec(name, Transport.ONESHOT, no_request(name), summary=summary)


async def reported(events: asyncio.Queue[tuple[Any, BaseException | None]], key: Any,
                   work: Awaitable[Any]) -> None:
    """Run ``work`` and put ``(key, its exception or None)`` on ``events``: how a duplex
    room (the terminal, co-browse) hears that one of its tasks (a console's listener,
    the agent's pump) ended, and why, in the one loop that decides what happens next."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        events.put_nowait((key, exc))
    else:
        events.put_nowait((key, None))
