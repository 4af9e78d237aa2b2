"""``cobrowse``: the customer's browser, seen live by every console of the session and
guided, only when the customer grants it, by the technician who opened the session.

One SSH channel carries JSON lines both ways (the contract: docs/cobrowse.md,
``Transport.JSON_DUPLEX``). Why the relay is more than a pipe:

- **Fan-out without back-pressure on the agent.** The agent's lines are read as they
  come, whatever the consoles do: each console has its own queue, bounded by bytes
  (:data:`MAX_QUEUED`); a console that does not keep up is hung up (``too_slow``,
  audited), never waited for, so a slow supervisor cannot slow the customer's page or
  the technician's view.
- **The consoles' word is checked before it reaches the customer's machine.** Each
  console frame is one typed message of the contract (pydantic, ``extra="forbid"``,
  sizes and coordinates bounded), rate-limited; input goes on only from the controlling
  technician and only while the agent says control is granted; a watcher
  (``?watch=1``) never sends anything. What is refused is said to that console and
  audited (``cobrowse.message.refused``, at most :data:`MAX_REFUSALS_AUDITED` a
  console, then it is hung up). The agent re-checks everything: this is the first
  gate, not the only one.
- **The agent's word is bounded too.** A line is at most 1 MiB of JSON object with a
  known ``type``; anything else is dropped (counted, audited once) and neither shown
  nor recorded.
- **Recorded through the runner's one hook.** Every accepted agent line is written to
  the recording before any console sees it (:class:`~.recording.LinesRecorder`); its
  SHA-256 goes into ``recording.stored`` and ``session.channel``. Consent, control
  granted and revoked, URLs proposed and navigations are audit events of their own.
- **A late watcher sees the page.** The lines since the last full rrweb snapshot are
  kept (bounded by :data:`MAX_CATCH_UP`) and replayed to a console that joins; until a
  new snapshot is whole, the previous one is kept too.
- **A snapshot larger than a line comes in parts** (``rrweb_part``, checked by
  :mod:`.cobrowse_parts`: bounded, in order, one at a time); the parts of a full
  snapshot count as the snapshot for the catch-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import asyncssh
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from backline.common.capabilities import ChannelExit
from backline.relay.capabilities import cobrowse_parts as parts
from backline.relay.capabilities.base import (
    ChannelSpec,
    RecordingFailed,
    RecordingNotFiled,
    Transport,
    no_request,
    reported,
)
from backline.relay.capabilities.lines import LineReader, LineTooLong
from backline.relay.net import conn_limits
from backline.relay.sessions.session import LiveSession, SessionError

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from backline.relay.capabilities.recording import LinesRecorder
    from backline.relay.capabilities.runner import Channel, ChannelRunner

log = logging.getLogger("backline.relay.capabilities.cobrowse")

#: The longest line either way (the contract), and the longest console text frame.
MAX_LINE = 1024 * 1024
MAX_FRAME = 4096
READ_CHUNK = 256 * 1024
#: rrweb events in one agent line (the contract batches at most 200).
MAX_EVENTS = 200
#: What may wait in one console's queue: a few of the largest lines.
MAX_QUEUED = 4 * MAX_LINE
#: ...and, for the parts of one snapshot (sent back to back by the agent, faster than a
#: socket may take them), one snapshot's more. The frames are the same strings in every
#: console's queue, so this is one snapshot held, not one per console.
MAX_QUEUED_PARTS = MAX_QUEUED + 2 * parts.MAX_ASSEMBLY_CHARS
_PART_FRAME = '{"type":"agent","msg":{"type":"rrweb_part",'
#: The lines kept since the last full snapshot, for a console that joins later.
MAX_CATCH_UP = 16 * MAX_LINE
MAX_VIEWERS = 8
#: Console lines the agent has not taken yet, past which input is dropped.
MAX_PENDING = 256 * 1024
#: Input (mouse, keys, wheel, pointer): a burst, then so many a second.
INPUT_BURST, INPUTS_PER_S = 200, 120.0
#: Everything else (control, URLs, screencast): a burst, then so many a second.
COMMAND_BURST, COMMANDS_PER_S = 10, 1.0
MAX_REFUSALS_AUDITED = 10
END_WAIT_S = 5.0

AGENT_TYPES = frozenset({"consent", "rrweb", "rrweb_part", "control", "nav", "frame",
                         "hidden", "error", "ended"})
CONTROL_STATES = frozenset({"granted", "revoked", "paused", "resumed", "refused"})
#: Control states in which the technician's input goes on to the agent.
IN_CONTROL = frozenset({"granted", "resumed"})

# --- what a console may send (the contract's relay -> agent lines) ---------------------

Coord = Annotated[float, Field(ge=0, le=100_000, allow_inf_nan=False)]
Delta = Annotated[float, Field(ge=-100_000, le=100_000, allow_inf_nan=False)]
Url = Annotated[str, Field(min_length=1, max_length=2048,
                           pattern=r"^https?://[!-~]+$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Start(_Message):
    """The console's first frame: what the agent's ``start`` line says (the technician
    is the session's, never the console's word)."""

    type: Literal["start"]
    url: Url | None = None
    reason: Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    screencast: bool = False


class Mouse(_Message):
    type: Literal["input"]
    kind: Literal["mouse"]
    event: Literal["mousePressed", "mouseReleased", "mouseMoved"]
    x: Coord
    y: Coord
    #: No middle button: on Linux it pastes the customer's X primary selection.
    button: Literal["none", "left", "right"] = "none"
    clicks: Annotated[int, Field(ge=0, le=3)] = 0


class Key(_Message):
    type: Literal["input"]
    kind: Literal["key"]
    event: Literal["keyDown", "keyUp", "char"]
    key: Annotated[str, Field(min_length=1, max_length=32)]
    code: Annotated[str, Field(max_length=32, pattern=r"^[A-Za-z0-9]*$")] = ""
    text: Annotated[str, Field(max_length=8)] = ""


class Wheel(_Message):
    type: Literal["input"]
    kind: Literal["wheel"]
    x: Coord
    y: Coord
    dx: Delta
    dy: Delta


Input = Annotated[Mouse | Key | Wheel, Field(discriminator="kind")]


class Pointer(_Message):
    type: Literal["pointer"]
    x: Coord
    y: Coord


class RequestControl(_Message):
    type: Literal["request_control"]


class ReleaseControl(_Message):
    type: Literal["release_control"]


class ProposeUrl(_Message):
    type: Literal["propose_url"]
    url: Url


class Screencast(_Message):
    type: Literal["screencast"]
    on: bool


class End(_Message):
    type: Literal["end"]


Command = RequestControl | ReleaseControl | ProposeUrl | Screencast | End
Message = Mouse | Key | Wheel | Pointer | Command
_INPUT: TypeAdapter[Mouse | Key | Wheel] = TypeAdapter(Input)
_OTHER: TypeAdapter[Pointer | Command] = TypeAdapter(Annotated[
    Pointer | RequestControl | ReleaseControl | ProposeUrl | Screencast | End,
    Field(discriminator="type")])
_START: TypeAdapter[Start] = TypeAdapter(Start)


class BadMessage(Exception):
    pass


def _validated(adapter: TypeAdapter[Any], text: str) -> Any:
    try:
        return adapter.validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the message"
        raise BadMessage(f"{where}: {first['msg']}"[:200]) from None


def parse_message(text: str) -> Message:
    """One console frame, validated; ``BadMessage`` says why not (never echoing it)."""
    if len(text) > MAX_FRAME:
        raise BadMessage(f"a frame is at most {MAX_FRAME} characters")
    try:
        kind = json.loads(text, parse_constant=_no_constant).get("type")
    except (ValueError, AttributeError):
        raise BadMessage("a frame is one JSON object") from None
    return _validated(_INPUT if kind == "input" else _OTHER, text)  # type: ignore[no-any-return]


def parse_start(text: str) -> Start:
    if len(text) > MAX_FRAME:
        raise BadMessage(f"a frame is at most {MAX_FRAME} characters")
    return _validated(_START, text)  # type: ignore[no-any-return]


def audited_url(url: str) -> str:
    """What the trail keeps of a URL: scheme, host and path (a query or fragment may
    carry a token, which has no place in the audit trail), at most 300 characters."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:300]


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class BadLine(Exception):
    pass


def parse_agent_line(data: bytes) -> dict[str, Any]:
    """One agent line as an object of a known type, lightly checked (the agent is the
    customer's machine: its lines are data, bounded, never interpreted further)."""
    if len(data) > MAX_LINE:
        raise BadLine("too_large")
    try:
        obj = json.loads(data, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError):
        raise BadLine("not_json") from None
    if not isinstance(obj, dict) or obj.get("type") not in AGENT_TYPES:
        raise BadLine("unknown_type")
    kind = obj["type"]
    if kind == "rrweb" and not (isinstance(obj.get("events"), list)
                                and len(obj["events"]) <= MAX_EVENTS):
        raise BadLine("bad_events")
    if kind == "rrweb_part":
        try:
            parts.check_fields(obj)
        except parts.BadPart as exc:
            raise BadLine(str(exc)) from None
    if kind == "control" and obj.get("state") not in CONTROL_STATES:
        raise BadLine("bad_state")
    if kind == "consent" and (obj.get("what") not in ("view", "control", "propose_url")
                              or obj.get("answer") not in ("yes", "no", "timeout")):
        raise BadLine("bad_consent")
    if kind == "nav" and not (isinstance(obj.get("url"), str) and len(obj["url"]) <= 8192):
        raise BadLine("bad_url")
    return obj


def _has_event(obj: dict[str, Any], kind: int) -> bool:
    return any(isinstance(e, dict) and e.get("type") == kind for e in obj.get("events", ()))


# --- the room --------------------------------------------------------------------------


@dataclass
class Bucket:
    """A token bucket: ``burst`` at once, then ``rate`` a second."""

    burst: float
    rate: float
    tokens: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass(eq=False)
class Viewer:
    """One console socket on the room."""

    ws: WebSocket
    username: str
    actor: str
    role: str  # control | watch
    queue: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)
    queued: int = 0
    gone: bool = False
    refusals: int = 0
    #: Reasons already audited for this console (a flood is audited once per reason).
    audited: set[str] = field(default_factory=set)
    inputs: Bucket = field(default_factory=lambda: Bucket(INPUT_BURST, INPUTS_PER_S))
    commands: Bucket = field(default_factory=lambda: Bucket(COMMAND_BURST, COMMANDS_PER_S))
    sending: asyncio.Future[None] | None = None
    listening: asyncio.Future[None] | None = None
    #: Its connection (made in its socket's task), aborted if it outlives a hang-up.
    conn: conn_limits.Conn | None = field(default_factory=conn_limits.current)
    #: The catch-up, sent right after ``ready`` (frames the room holds anyway: not
    #: counted against :data:`MAX_QUEUED`, so a snapshot of several MiB can be joined).
    backlog: collections.deque[str] = field(default_factory=collections.deque)


class Ended(Exception):
    """The co-browse ends: ``code`` (None: a normal end) said to every console."""

    def __init__(self, code: str | None, detail: str = "", closed_by: str = "agent") -> None:
        super().__init__(detail or code or "end")
        self.code, self.detail, self.closed_by = code, detail, closed_by


@dataclass(eq=False)
class Room:
    """One open co-browse: its channel, recording, consoles and what the agent said."""

    id: str
    runner: ChannelRunner
    ch: Channel
    recorder: LinesRecorder
    viewers: list[Viewer] = field(default_factory=list)
    #: What the agent said last: consent per what, control state, URL.
    consent: dict[str, str] = field(default_factory=dict)
    control: str = "none"
    url: str | None = None
    agent_bytes: int = 0
    agent_lines: int = 0
    dropped_lines: int = 0
    catch_up: list[str] = field(default_factory=list)
    catch_up_bytes: int = 0
    catch_up_complete: bool = False
    #: Where in ``catch_up`` the snapshot being received begins (its Meta or first part).
    snapshot_from: int | None = None
    parts: parts.Parts = field(default_factory=parts.Parts)
    #: The technician sent ``end`` (the agent then closes: ended by the console).
    end_asked: bool = False
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    events: asyncio.Queue[tuple[Viewer | None, BaseException | None]] = field(
        default_factory=asyncio.Queue)

    @property
    def proc(self) -> asyncssh.SSHClientProcess[bytes]:
        return self.ch.proc

    @property
    def session(self) -> LiveSession:
        return self.ch.session

    def audit(self, actor: str, action: str, **details: Any) -> None:
        self.runner.relay.record(actor, action, f"session:{self.session.id}",
                                 cobrowse=self.id, **details)

    # --- to the consoles ---------------------------------------------------------

    def _send(self, viewer: Viewer, frame: str | None) -> None:
        if viewer.gone:
            return
        if frame is not None and viewer.queued + len(frame) > (
                MAX_QUEUED_PARTS if frame.startswith(_PART_FRAME) else MAX_QUEUED):
            self.hang_up(viewer, "too_slow", "this console fell too far behind the co-browse")
            return
        viewer.queued += 0 if frame is None else len(frame)
        viewer.queue.put_nowait(frame)

    def tell(self, viewer: Viewer, kind: str, **fields: Any) -> None:
        self._send(viewer, json.dumps({"type": kind, **fields}))

    def tell_all(self, kind: str, **fields: Any) -> None:
        for v in self.viewers:
            self.tell(v, kind, **fields)

    def status(self) -> dict[str, Any]:
        return {"consent": dict(self.consent), "control": self.control, "url": self.url}

    def hang_up(self, viewer: Viewer, code: str = "", detail: str = "") -> None:
        """Say why and hang up one console (past its bound: one small frame more). The
        co-browse goes on unless it was the controller (then :meth:`run` ends it)."""
        if viewer.gone:
            return
        if code:
            frame = json.dumps({"type": "error", "error": code, "detail": detail})
            viewer.queued += len(frame)
            viewer.queue.put_nowait(frame)
            if code == "too_slow":  # access withdrawn: audited by hang_up_user
                self.audit(viewer.actor, "cobrowse.viewer.dropped", reason=code,
                           role=viewer.role)
        viewer.queue.put_nowait(None)
        viewer.gone = True
        self.end_within(viewer)  # a console that does not read: still closed
        self.events.put_nowait((viewer, None))

    def end_within(self, viewer: Viewer) -> None:
        """Its socket aborted if it takes nothing for a while now that it is hung up
        (:func:`conn_limits.end_within`; the sender calls this again after each frame
        taken), audited as its user's (``not_closed``)."""
        def aborted() -> None:
            self.audit(viewer.actor, "cobrowse.viewer.dropped", reason="not_closed",
                       role=viewer.role)
        conn_limits.end_within(viewer.conn, on_abort=aborted)

    def hang_up_user(self, username: str, reason: str, actor: str) -> int:
        """Hang up every console of ``username`` (access withdrawn), audited."""
        mine = [v for v in self.viewers if v.username == username and not v.gone]
        for v in mine:
            self.audit(actor, "cobrowse.viewer.dropped", reason=reason, role=v.role,
                       user=username)
            self.hang_up(v, reason, "your access to this session was withdrawn")
        return len(mine)

    def add(self, viewer: Viewer) -> None:
        self.viewers.append(viewer)
        self.tell(viewer, "ready", cobrowse=self.id, role=viewer.role, recorded=True,
                  **self.status())
        if viewer.role == "watch" and self.catch_up_complete:
            viewer.backlog.extend(self.catch_up)
        viewer.sending = asyncio.ensure_future(self.sender(viewer))
        viewer.listening = asyncio.ensure_future(reported(self.events, viewer, self.listen(viewer)))

    async def sender(self, viewer: Viewer) -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await viewer.queue.get()
                if frame is None:
                    break
                await viewer.ws.send_text(frame)
                viewer.queued -= len(frame)
                while viewer.backlog:  # right after "ready": the catch-up
                    await viewer.ws.send_text(viewer.backlog.popleft())
                    if viewer.gone:
                        self.end_within(viewer)
                if viewer.gone:  # hung up, and still reading: its grace starts again
                    self.end_within(viewer)
        was_gone, viewer.gone = viewer.gone, True
        with contextlib.suppress(Exception):
            await viewer.ws.close(1000)
        if not was_gone:
            self.events.put_nowait((viewer, None))
        if viewer in self.viewers and not self.ended.is_set():
            self.viewers.remove(viewer)
            if viewer.listening is not None:
                viewer.listening.cancel()

    # --- the agent's lines -------------------------------------------------------

    async def pump(self) -> None:
        """Read the agent's lines as they come: check, record, note, fan out."""
        async for line in self.lines():
            self.session.touch()
            line = line.rstrip(b"\r")
            if not line:
                continue
            try:
                obj = parse_agent_line(line)
                whole = self.check_part(obj)
            except BadLine as exc:
                self.dropped_lines += 1
                if self.dropped_lines == 1:  # a flood is audited once, counted at the end
                    self.audit(self.ch.actor, "cobrowse.agent_line.dropped",
                               reason=str(exc), bytes=len(line))
                if str(exc) == "too_large":
                    raise Ended("too_large", "the agent sent a line over 1 MiB") from None
                continue
            try:
                self.recorder.line(line)
            except RecordingFailed as exc:
                raise Ended("recording_failed", f"the recording cannot be written ({exc}); "
                                                "the co-browse was ended") from None
            self.agent_bytes += len(line) + 1
            self.agent_lines += 1
            self.note(obj)
            frame = '{"type":"agent","msg":' + line.decode("utf-8") + "}"
            self.keep_for_catch_up(obj, frame, whole)
            for v in list(self.viewers):
                self._send(v, frame)

    async def lines(self) -> Any:
        """The agent's lines (without their newline), each at most :data:`MAX_LINE`: a
        longer one ends the co-browse (``too_large``). Split by the rooms' line reader
        (relay/capabilities/lines.py: asyncssh's ``readline`` hands back a part of a
        line longer than the channel's window as if it were a whole one)."""
        reader = LineReader(self.proc.stdout, MAX_LINE, READ_CHUNK)
        while True:
            try:
                line = await reader.readline()
            except LineTooLong:
                self.dropped_lines += 1
                raise Ended("too_large", "the agent sent a line over 1 MiB") from None
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                if self.session.closing:
                    return
                raise Ended("agent_gone", f"{type(exc).__name__}") from exc
            if not line:
                return
            yield line[:-1] if line.endswith(b"\n") else line

    def note(self, obj: dict[str, Any]) -> None:
        """What the agent said that the relay keeps and audits."""
        kind, actor = obj["type"], self.ch.actor
        if kind == "consent":
            self.consent[obj["what"]] = obj["answer"]
            self.audit(actor, "cobrowse.consent", what=obj["what"], answer=obj["answer"])
        elif kind == "control":
            before, self.control = self.control, obj["state"]
            if self.control == "granted":
                self.audit(actor, "cobrowse.control.granted")
            elif self.control == "revoked" and before != "revoked":
                self.audit(actor, "cobrowse.control.revoked", before=before)
        elif kind == "nav":
            self.url = obj["url"]
            self.audit(actor, "cobrowse.navigated", url=audited_url(obj["url"]))

    def check_part(self, obj: dict[str, Any]) -> int | None:
        """The parts' order and bounds (:mod:`.cobrowse_parts`); the event's rrweb type
        when ``obj`` is the last part of a whole one. ``BadLine`` when dropped."""
        if obj["type"] == "rrweb":
            before = self.parts.abandoned
            self.parts.interrupted()
            if self.parts.abandoned != before:
                log.info("co-browse %s: a snapshot in parts was interrupted", self.id)
            return None
        if obj["type"] != "rrweb_part":
            return None
        try:
            return self.parts.part(obj)
        except parts.BadPart as exc:
            raise BadLine(str(exc)) from None

    def keep_for_catch_up(self, obj: dict[str, Any], frame: str,
                          whole: int | None = None) -> None:
        """Keep what a console joining now needs: the lines from the last Meta (4) rrweb
        event and the full snapshot (2) after it (in one line, or in parts: ``whole`` is
        2 at the last of them), bounded; past the bound a joiner waits for the next
        snapshot. Until a new snapshot is whole the previous one stays, with everything
        after it, so that a console joining meanwhile still gets a page."""
        kind = obj["type"]
        if kind not in ("rrweb", "rrweb_part"):
            return
        meta = kind == "rrweb" and _has_event(obj, 4)
        full_line = kind == "rrweb" and _has_event(obj, 2)
        starts = meta or full_line or (kind == "rrweb_part" and obj["index"] == 0)
        if not self.catch_up and not starts:
            return
        if self.catch_up_bytes + len(frame) > MAX_CATCH_UP:
            self.catch_up, self.catch_up_bytes, self.catch_up_complete = [], 0, False
            self.snapshot_from = None
            if not starts:
                return
        if meta or (starts and self.snapshot_from is None):
            self.snapshot_from = len(self.catch_up)
        self.catch_up.append(frame)
        self.catch_up_bytes += len(frame)
        if (full_line or whole == 2) and self.snapshot_from is not None:
            dropped = self.catch_up[:self.snapshot_from]
            self.catch_up = self.catch_up[self.snapshot_from:]
            self.catch_up_bytes -= sum(len(f) for f in dropped)
            self.catch_up_complete, self.snapshot_from = True, None

    # --- the consoles' lines -----------------------------------------------------

    def refuse(self, viewer: Viewer, reason: str, detail: str, what: str = "") -> None:
        """A console frame that does not go on: said to it, audited (once per reason
        for floods of the same kind), and past :data:`MAX_REFUSALS_AUDITED` refusals
        the console is hung up."""
        viewer.refusals += 1
        self.tell(viewer, "refused", error=reason, detail=detail)
        once = reason in ("rate_limited", "view_only", "no_control", "control_paused",
                          "agent_busy")
        if not once or reason not in viewer.audited:
            viewer.audited.add(reason)
            self.runner.relay.metrics.errors.labels("cobrowse_message_refused").inc()
            self.audit(viewer.actor, "cobrowse.message.refused", reason=reason,
                       role=viewer.role, detail=detail[:200],
                       **({"what": what} if what else {}))
        if not once and viewer.refusals > MAX_REFUSALS_AUDITED:
            self.hang_up(viewer, "bad_message", "too many refused messages")

    async def listen(self, viewer: Viewer) -> None:
        ws = viewer.ws
        while not viewer.gone:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            if text is None:
                self.refuse(viewer, "bad_message", "frames are JSON text")
                continue
            if viewer.role != "control":
                self.refuse(viewer, "view_only", "a watcher sees and never sends")
                continue
            try:
                message = parse_message(text)
            except BadMessage as exc:
                self.refuse(viewer, "bad_message", str(exc))
                continue
            self.command(viewer, message)

    def command(self, viewer: Viewer, msg: Message) -> None:
        is_input = isinstance(msg, Mouse | Key | Wheel | Pointer)
        if not (viewer.inputs if is_input else viewer.commands).take():
            self.refuse(viewer, "rate_limited", "too many messages; dropped", what=msg.type)
            return
        if isinstance(msg, Mouse | Key | Wheel) and self.control == "paused":
            self.refuse(viewer, "control_paused", "control is paused while the customer "
                        "uses their own mouse or keyboard; it resumes when they stop",
                        what=msg.type)
            return
        if isinstance(msg, Mouse | Key | Wheel) and self.control not in IN_CONTROL:
            self.refuse(viewer, "no_control", "the customer has not granted control",
                        what=msg.type)
            return
        if isinstance(msg, ProposeUrl):
            self.audit(viewer.actor, "cobrowse.url.proposed", url=audited_url(msg.url))
        elif isinstance(msg, End):
            self.end_asked = True
        elif isinstance(msg, RequestControl):
            self.audit(viewer.actor, "cobrowse.control.requested")
        elif isinstance(msg, ReleaseControl) and self.control in IN_CONTROL | {"paused"}:
            self.audit(viewer.actor, "cobrowse.control.revoked", before=self.control,
                       by="technician")
        if not self.write(msg.model_dump_json().encode()):
            self.refuse(viewer, "agent_busy", "the agent is not taking messages; dropped",
                        what=msg.type)

    def write(self, line: bytes) -> bool:
        stdin = self.proc.stdin
        with contextlib.suppress(asyncssh.Error, OSError):
            if stdin.channel.get_write_buffer_size() > MAX_PENDING:
                return False
            stdin.write(line + b"\n")
        return True

    # --- the room's life ---------------------------------------------------------

    async def run(self, controller: Viewer) -> None:
        self.add(controller)
        pump = asyncio.ensure_future(reported(self.events, None, self.pump()))
        end = Ended(None)
        try:
            while True:
                who, exc = await self.events.get()
                if who is None:  # the agent's side ended
                    if isinstance(exc, Ended):
                        end = exc
                    elif exc is not None:
                        log.error("co-browse %s: the pump failed: %r", self.id, exc)
                        end = Ended("channel_failed", type(exc).__name__)
                    elif self.end_asked:
                        end.closed_by = "console"
                    break
                if who.role == "control":  # the technician's console went or ended it
                    end = Ended(None, closed_by="console")
                    break
                self.hang_up(who)
        finally:
            if self.session.closing and end.code is None:
                end.closed_by = "session_closed"
            for v in self.viewers:
                if v.listening is not None:
                    v.listening.cancel()
            if end.closed_by != "agent" and end.code is None and not pump.done():
                self.write(b'{"type":"end"}')  # the agent closes the browser, then exits
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(pump), END_WAIT_S)
            pump.cancel()
            self.ended.set()
        await self.finish(end)
        for v in self.viewers:
            self._send(v, None)
            self.end_within(v)  # else one that does not read holds the end
        await asyncio.gather(*(v.sending for v in self.viewers if v.sending),
                             return_exceptions=True)

    async def finish(self, end: Ended) -> None:
        """Keep the recording, audit the channel once, say how it ended."""
        runner, ch, proc = self.runner, self.ch, self.proc
        if end.code is not None:
            proc.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(proc.wait_closed(), END_WAIT_S)
        status = proc.exit_status if end.code is None else None
        counts = {"cobrowse": self.id, "lines": self.agent_lines,
                  "dropped_lines": self.dropped_lines,
                  "split_snapshots": self.parts.completed,
                  "split_abandoned": self.parts.abandoned}
        if status == ChannelExit.REFUSED:
            err = b""
            with contextlib.suppress(Exception):
                err = await asyncio.wait_for(proc.stderr.read(4096), 2)
            self.recorder.abort()
            refusal = runner.refusal_of(self.session, "cobrowse", ch.actor, err)
            self.tell_all("error", error=refusal.code, detail=refusal.detail)
            return
        if end.code == "recording_failed":
            runner.failed(self.session, "cobrowse", ch.actor, end.code, end.detail,
                          bytes=self.agent_bytes, **counts)
            self.tell_all("error", error=end.code, detail=end.detail)
            return
        try:
            stored = runner.keep_recording(ch, self.recorder)
        except RecordingNotFiled as exc:
            runner.failed(self.session, "cobrowse", ch.actor, "recording_not_filed",
                          exc.detail, bytes=self.agent_bytes, sha256=exc.sha256,
                          recording_bytes=exc.size, **counts)
            self.tell_all("error", error="recording_not_filed", detail=exc.detail)
            return
        except RecordingFailed as exc:
            runner.failed(self.session, "cobrowse", ch.actor, "recording_failed", str(exc),
                          bytes=self.agent_bytes, **counts)
            self.tell_all("error", error="recording_failed",
                          detail="the recording could not be completed")
            return
        if end.code is not None:
            kept = {"bytes": self.agent_bytes, "recording": stored.id,
                    "sha256": stored.sha256, **counts}
            if end.code == "agent_gone" and end.__cause__ is not None:
                runner.agent_gone(ch, end.__cause__, **kept)  # audited, the session closed
            else:
                runner.failed(self.session, "cobrowse", ch.actor, end.code, end.detail,
                              **kept)
            self.tell_all("error", error=end.code, detail=end.detail,
                          recording=stored.public())
            return
        runner.finished(ch, status, self.agent_bytes, stored.sha256, recording=stored.id,
                        recording_bytes=stored.bytes, closed_by=end.closed_by, **counts)
        self.tell_all("exit", exit_status=status, recording=stored.public())


# --- serving a console socket ----------------------------------------------------------


def open_room(runner: ChannelRunner, session: LiveSession) -> Room | None:
    return next((r for r in runner.terminals.values() if isinstance(r, Room)
                 and r.ch.session is session and not r.ended.is_set()), None)


async def _first_frame(ws: WebSocket) -> Start:
    try:
        async with asyncio.timeout(30):
            msg = await ws.receive()
    except TimeoutError:
        raise SessionError(400, "bad_request", "the first frame did not come within "
                                               "30 s") from None
    text = msg.get("text")
    if msg["type"] == "websocket.disconnect" or text is None:
        raise SessionError(400, "bad_request", "the first frame is a JSON text frame")
    try:
        return parse_start(text)
    except BadMessage as exc:
        raise SessionError(400, "bad_request", f"the first frame: {exc}") from None


async def serve(runner: ChannelRunner, ws: WebSocket, session: LiveSession, actor: str,
                who: Any) -> None:
    """The room's stream: ``?watch=1`` joins the session's open co-browse as a watcher;
    otherwise the first frame is ``start`` and the technician's co-browse opens.
    ``SessionError`` when it does not (not yet said on the socket)."""
    username = who.user.username
    if ws.query_params.get("watch") == "1":
        room = open_room(runner, session)
        if room is None:
            raise SessionError(404, "no_cobrowse", "no co-browse is open in this session")
        if sum(not v.gone for v in room.viewers) >= MAX_VIEWERS:
            raise SessionError(409, "too_many_viewers",
                               f"a co-browse has at most {MAX_VIEWERS} consoles")
        viewer = Viewer(ws, username, actor, "watch")
        room.audit(actor, "cobrowse.join", role="watch")
        room.add(viewer)
        assert viewer.sending is not None
        with contextlib.suppress(BaseException):
            await viewer.sending
        return
    if open_room(runner, session) is not None:
        raise SessionError(409, "already_open", "a co-browse is open in this session; "
                                                "watch it with ?watch=1")
    start = await _first_frame(ws)
    line = json.dumps({"type": "start", "url": start.url, "technician": session.technician,
                       "reason": start.reason, "screencast": start.screencast})
    rec = runner.start_recording(session, "cobrowse", actor)
    try:
        async with runner.channel(session, "cobrowse", actor) as ch:
            room = Room("cb_" + secrets.token_urlsafe(9), runner, ch, rec)  # type: ignore[arg-type]
            runner.terminals[room.id] = room
            try:
                ch.proc.stdin.write(line.encode() + b"\n")
                if start.url is not None:
                    room.audit(actor, "cobrowse.url.proposed", url=audited_url(start.url))
                await room.run(Viewer(ws, username, actor, "control"))
            finally:
                runner.terminals.pop(room.id, None)
    finally:
        rec.abort()


SPEC = ChannelSpec("cobrowse", Transport.JSON_DUPLEX, no_request("cobrowse"), recorded=True,
                   summary="see, and when granted guide, the customer's browser",
                   stream=serve)
