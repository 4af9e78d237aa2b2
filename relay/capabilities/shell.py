"""``shell``: a terminal on the customer's machine, bridged to the console and recorded.

The agent runs a login shell in a pty (its policy decides, default ``deny``); the relay
opens the channel with a pty request (``term_type``, ``term_size``, bytes, no
encoding) and bridges it to a binary WebSocket (the protocol is in docs/sessions.md,
"The terminal, relay side"):

- Flow control end to end: the relay reads the SSH channel only while the controller
  has room in its window (:data:`WINDOW` of output it has not acknowledged with
  ``{"type": "ack"}``). While it does not read, asyncssh stops reading the channel
  once its buffer reaches the channel's window, SSH stops the agent, and the agent's
  pty stops the program: a flood is held back at its source. An ack counts only
  output the console's socket took (``delivered``), and each console's queue is
  bounded by bytes (:data:`MAX_QUEUED`, text frames included): a console that does
  not read, or a viewer a window behind, is hung up (``too_slow``), never buffered
  for. Resizes and grants are rate-limited. Viewers that left are forgotten.
- One controller types and resizes; viewers (``&terminal=ID``) see the output, their
  keystrokes are dropped (audited once) until the controller grants them control.
- Every byte of output (and every resize, and keystrokes when the relay's config says
  ``record_keystrokes``) is written to the recording before it goes on; when the
  recording cannot be written the channel ends (``recording_failed``, audited). On
  every other end, normal or not, the recording is kept (see :meth:`Terminal.finish`). The
  recording is started and kept by the channel runner (``start_recording``,
  ``keep_recording``): the one place where recording hooks in.

Console messages are validated (pydantic) and bounded before anything is done with
them; a malformed one ends the terminal with ``bad_message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any, Literal

import asyncssh
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from backline.common.capabilities import ChannelExit
from backline.relay.capabilities.base import (
    TERM_TYPES,
    ChannelSpec,
    Pty,
    RecordingFailed,
    RecordingNotFiled,
    Transport,
    no_request,
    reported,
)
from backline.relay.net import conn_limits
from backline.relay.sessions.session import LiveSession, SessionError

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from backline.relay.capabilities.recording import Recorder
    from backline.relay.capabilities.runner import Channel, ChannelRunner

log = logging.getLogger("backline.relay.capabilities.shell")

SPEC = ChannelSpec("shell", Transport.DUPLEX, no_request("shell"), recorded=True,
                   summary="a terminal on the customer's machine (pty, recorded)")

#: Output a viewer may have unacknowledged; the controller's also paces the reading.
WINDOW = 256 * 1024
#: The most read from the channel at once.
CHUNK = 64 * 1024
#: The largest keystroke/paste frame, and text (JSON) frame, a console may send.
MAX_INPUT_FRAME = 64 * 1024
MAX_TEXT_FRAME = 512
#: Keystrokes the agent has not taken yet, past which the terminal ends.
MAX_PENDING_INPUT = 256 * 1024
MAX_COLS, MAX_ROWS = 500, 200
MAX_VIEWERS = 8
#: What may wait in one console's queue (output and text), past which it is hung up
#: (``too_slow``): a window of output and room for the text frames around it.
MAX_QUEUED = WINDOW + 64 * 1024
#: Resizes and grants a controller may send: a burst, then so many a second; past it
#: they are dropped (audited once), so a spamming console grows neither the queues
#: nor the recording.
COMMAND_BURST = 20
COMMANDS_PER_S = 10.0


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Resize(_Message):
    type: Literal["resize"]
    cols: Annotated[int, Field(ge=1, le=MAX_COLS)]
    rows: Annotated[int, Field(ge=1, le=MAX_ROWS)]


class Ack(_Message):
    type: Literal["ack"]
    bytes: Annotated[int, Field(ge=0, le=2**53)]


class Grant(_Message):
    type: Literal["grant"]
    to: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$", max_length=64)]


ConsoleMessage = Annotated[Resize | Ack | Grant, Field(discriminator="type")]
_MESSAGES: TypeAdapter[Resize | Ack | Grant] = TypeAdapter(ConsoleMessage)


class BadMessage(Exception):
    pass


def parse_message(text: str) -> Resize | Ack | Grant:
    """One console text frame, validated; ``BadMessage`` says why not (never echoing
    the frame)."""
    if len(text) > MAX_TEXT_FRAME:
        raise BadMessage(f"a text frame is at most {MAX_TEXT_FRAME} characters")
    try:
        return _MESSAGES.validate_json(text)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "the message"
        raise BadMessage(f"{where}: {first['msg']}") from None


@dataclass(eq=False)
class Viewer:
    """One console socket on a terminal, with its sender and listener tasks."""

    ws: WebSocket
    username: str
    actor: str
    role: str  # control | view
    #: Output bytes queued for it, delivered (its socket took them), acknowledged:
    #: ``acked <= delivered <= sent``.
    sent: int = 0
    delivered: int = 0
    #: The output frame its socket is writing now: a console may have it (and ack it)
    #: before the write returns here.
    in_flight: int = 0
    acked: int = 0
    #: What is in its queue now (output and text), bounded by :data:`MAX_QUEUED`.
    queued: int = 0
    #: Resize/grant budget (a token bucket, see :data:`COMMAND_BURST`).
    tokens: float = COMMAND_BURST
    tokens_at: float = field(default_factory=time.monotonic)
    commands_dropped: bool = False
    queue: asyncio.Queue[bytes | str | None] = field(default_factory=asyncio.Queue)
    room: asyncio.Event = field(default_factory=asyncio.Event)
    input_dropped: bool = False
    gone: bool = False
    sending: asyncio.Future[None] | None = None
    listening: asyncio.Future[None] | None = None
    #: Its connection (made in its socket's task), aborted if it outlives a hang-up.
    conn: conn_limits.Conn | None = field(default_factory=conn_limits.current)

    def __post_init__(self) -> None:
        self.room.set()

    def unacked(self) -> int:
        """Output queued or delivered and not acknowledged: what the window bounds."""
        return self.sent - self.acked

    def may_command(self) -> bool:
        """One resize or grant from this console's budget (False: over it)."""
        now = time.monotonic()
        self.tokens = min(COMMAND_BURST, self.tokens + (now - self.tokens_at) * COMMANDS_PER_S)
        self.tokens_at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


def _size(item: bytes | str | None) -> int:
    return 0 if item is None else len(item)


class AgentGone(Exception):
    """The channel failed under the pump: audited by :meth:`Terminal.finish` (after the
    recording is kept, so the failure names it)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


class Ended(Exception):
    """The terminal ends: ``code`` (None: a normal end) said to every console."""

    def __init__(self, code: str | None, detail: str = "") -> None:
        super().__init__(detail or code or "exit")
        self.code = code
        self.detail = detail


@dataclass(eq=False)
class Terminal:
    """One open terminal: its channel, recording and consoles."""

    id: str
    runner: ChannelRunner
    ch: Channel
    recorder: Recorder
    cols: int
    rows: int
    term: str
    viewers: list[Viewer] = field(default_factory=list)
    output_bytes: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    #: (viewer, or None for the pump; what ended it) as each task ends.
    events: asyncio.Queue[tuple[Viewer | None, BaseException | None]] = field(
        default_factory=asyncio.Queue)

    @property
    def proc(self) -> asyncssh.SSHClientProcess[bytes]:
        return self.ch.proc

    @property
    def controller(self) -> Viewer | None:
        return next((v for v in self.viewers if v.role == "control" and not v.gone), None)

    # --- to the consoles -----------------------------------------------------------

    def _send(self, viewer: Viewer, item: bytes | str | None) -> None:
        """Queue one frame; a console whose queue would pass :data:`MAX_QUEUED` is hung
        up (``too_slow``) instead: the relay never buffers for a console that does not
        read."""
        if viewer.gone:
            return
        if item is not None and viewer.queued + len(item) > MAX_QUEUED:
            self.hang_up(viewer, "too_slow", "this console fell too far behind the terminal",
                         over=True)
            return
        viewer.queued += _size(item)
        viewer.queue.put_nowait(item)

    def tell(self, viewer: Viewer, kind: str, **fields: Any) -> None:
        self._send(viewer, json.dumps({"type": kind, **fields}))

    def tell_all(self, kind: str, **fields: Any) -> None:
        for v in self.viewers:
            self.tell(v, kind, **fields)

    def ready(self, viewer: Viewer) -> None:
        self.tell(viewer, "ready", terminal=self.id, role=viewer.role, recorded=True,
                  keystrokes_recorded=self.recorder.keystrokes, cols=self.cols, rows=self.rows)

    def hang_up(self, viewer: Viewer, code: str = "", detail: str = "",
                over: bool = False) -> None:
        """Say why (if there is a why) and hang up one console; the terminal goes on
        (unless it was the controller: then :meth:`run` ends it). ``over``: its queue
        is full, the error frame goes past the bound (one small frame, then none)."""
        if viewer.gone:
            return
        if code:
            frame = json.dumps({"type": "error", "error": code, "detail": detail})
            viewer.queued += len(frame)
            viewer.queue.put_nowait(frame)
            if code == "too_slow":
                self.runner.relay.record(viewer.actor, "terminal.viewer.dropped",
                                         f"session:{self.ch.session.id}", terminal=self.id,
                                         reason=code, role=viewer.role)
        viewer.queue.put_nowait(None)
        viewer.gone = True
        self.end_within(viewer)  # a console that does not read: still closed
        viewer.room.set()
        self.events.put_nowait((viewer, None))

    def end_within(self, viewer: Viewer) -> None:
        """Its socket aborted if it takes nothing for a while now that it is hung up
        (:func:`conn_limits.end_within`; the sender calls this again after each frame
        taken), audited as its user's (``not_closed``)."""
        def aborted() -> None:
            self.runner.relay.record(viewer.actor, "terminal.viewer.dropped",
                                     f"session:{self.ch.session.id}", terminal=self.id,
                                     reason="not_closed", role=viewer.role)
        conn_limits.end_within(viewer.conn, on_abort=aborted)

    def hang_up_user(self, username: str, reason: str, actor: str) -> int:
        """Hang up every console of ``username`` (access withdrawn), audited."""
        mine = [v for v in self.viewers if v.username == username and not v.gone]
        for v in mine:
            self.runner.relay.record(actor, "terminal.viewer.dropped",
                                     f"session:{self.ch.session.id}", terminal=self.id,
                                     reason=reason, user=username, role=v.role)
            self.hang_up(v, reason, "your access to this session was withdrawn")
        return len(mine)

    def add(self, viewer: Viewer) -> None:
        self.viewers.append(viewer)
        self.ready(viewer)
        viewer.sending = asyncio.ensure_future(self.sender(viewer))
        viewer.listening = asyncio.ensure_future(reported(self.events, viewer, self.listen(viewer)))

    def prune(self, viewer: Viewer) -> None:
        """Forget a console whose sender ended (the list stays bounded)."""
        if viewer in self.viewers and not self.ended.is_set():
            self.viewers.remove(viewer)
            if viewer.listening is not None:
                viewer.listening.cancel()

    # --- the terminal's life -------------------------------------------------------

    async def run(self, controller: Viewer) -> None:
        """Serve the terminal until the shell ends, the controller goes, or something
        ends it; then say how, keep the recording, audit, hang up every console."""
        self.add(controller)
        pump = asyncio.ensure_future(reported(self.events, None, self.pump()))
        end: Ended | None = None
        closed_by = "agent"
        try:
            while True:
                who, exc = await self.events.get()
                if who is None:
                    if isinstance(exc, Ended):
                        end = exc
                        if exc.code is None:  # the controlling console went away
                            closed_by = "console"
                    elif isinstance(exc, AgentGone):
                        end = Ended("agent_gone", "the agent went away during shell")
                        end.cause = exc.cause  # type: ignore[attr-defined]
                    elif exc is not None:
                        log.error("terminal %s: the pump failed: %r", self.id, exc)
                        end = Ended("channel_failed", type(exc).__name__)
                    break
                if isinstance(exc, Ended):
                    end = exc
                    break
                if who.role == "control":
                    end, closed_by = Ended(None), "console"
                    break
                self.hang_up(who)
        finally:
            if end is None and self.ch.session.closing:
                closed_by = "session_closed"
            pump.cancel()
            for v in self.viewers:
                if v.listening is not None:
                    v.listening.cancel()
            self.ended.set()
        await self.finish(end, closed_by)
        for v in self.viewers:
            self._send(v, None)
            self.end_within(v)  # else one that does not read holds the end
        await asyncio.gather(*(v.sending for v in self.viewers if v.sending),
                             return_exceptions=True)

    # --- output --------------------------------------------------------------------

    async def pump(self) -> None:
        """Read the channel (only while the controller has room), record, pass on."""
        stdout = self.proc.stdout
        while True:
            controller = self.controller
            if controller is None:
                raise Ended(None, "the controlling console went away")
            if controller.unacked() >= WINDOW:
                controller.room.clear()
                await controller.room.wait()
                continue
            try:
                data = await stdout.read(min(CHUNK, WINDOW - controller.unacked()))
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                if self.ch.session.closing:
                    return  # the session is being closed: the terminal ends with it
                raise AgentGone(exc) from None
            if not data:
                return
            self.record(self.recorder.output, data)
            self.output_bytes += len(data)
            self.ch.session.touch()
            for v in self.viewers:
                if v.gone:
                    continue
                if v is not controller and v.unacked() + len(data) > WINDOW:
                    self.hang_up(v, "too_slow", "this console fell too far behind the "
                                                "terminal", over=True)
                    continue
                v.sent += len(data)
                self._send(v, data)

    def record(self, what: Any, *args: Any) -> None:
        try:
            what(*args)
        except RecordingFailed as exc:
            raise Ended("recording_failed", f"the recording cannot be written ({exc}); "
                                            "the terminal was ended") from None

    # --- input ---------------------------------------------------------------------

    async def listen(self, viewer: Viewer) -> None:
        """One console's frames until it goes; ``Ended`` when what it sent ends the
        terminal (a malformed frame from the controller, input the shell never takes)."""
        ws = viewer.ws
        while not viewer.gone:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                return
            data, text = msg.get("bytes"), msg.get("text")
            try:
                if data is not None:
                    self.keystrokes(viewer, data)
                elif text is not None:
                    self.command(viewer, parse_message(text))
            except BadMessage as exc:
                if viewer.role == "control":  # audited once, by finish(), with the recording
                    raise Ended("bad_message", str(exc)) from None
                self.runner.failed(self.ch.session, "shell", viewer.actor, "bad_message",
                                   str(exc), terminal=self.id)
                self.hang_up(viewer, "bad_message", str(exc))
                return

    def keystrokes(self, viewer: Viewer, data: bytes) -> None:
        if len(data) > MAX_INPUT_FRAME:
            raise BadMessage(f"a keystroke frame is at most {MAX_INPUT_FRAME} bytes")
        if viewer.role != "control":
            self.dropped_input(viewer, "keystrokes")
            return
        self.record(self.recorder.input, data)
        stdin = self.proc.stdin
        try:
            stdin.write(data)
        except (asyncssh.Error, OSError):
            return  # the channel is closing; the pump says why
        if stdin.channel.get_write_buffer_size() > MAX_PENDING_INPUT:
            raise Ended("input_overflow", "the terminal does not take its input; it was "
                                          "ended")

    def dropped_input(self, viewer: Viewer, what: str) -> None:
        """A view-only console typed (or resized, or granted): dropped, audited once."""
        if not viewer.input_dropped:
            viewer.input_dropped = True
            self.runner.relay.record(viewer.actor, "terminal.input.dropped",
                                     f"session:{self.ch.session.id}", terminal=self.id,
                                     what=what, reason="view_only")

    def command(self, viewer: Viewer, msg: Resize | Ack | Grant) -> None:
        if isinstance(msg, Ack):
            if msg.bytes < viewer.acked or msg.bytes > viewer.delivered + viewer.in_flight:
                raise BadMessage("ack: more than was delivered, or less than acknowledged")
            viewer.acked = msg.bytes
            if viewer.unacked() < WINDOW:
                viewer.room.set()
            return
        if viewer.role != "control":
            self.dropped_input(viewer, msg.type)
            return
        if not viewer.may_command():
            if not viewer.commands_dropped:
                viewer.commands_dropped = True
                self.runner.relay.record(viewer.actor, "terminal.input.dropped",
                                         f"session:{self.ch.session.id}", terminal=self.id,
                                         what=msg.type, reason="rate_limited")
            return
        if isinstance(msg, Resize):
            if (msg.cols, msg.rows) == (self.cols, self.rows):
                return  # no change: nothing to record or say
            self.record(self.recorder.resize, msg.cols, msg.rows)
            self.cols, self.rows = msg.cols, msg.rows
            with contextlib.suppress(asyncssh.Error, OSError):
                self.proc.change_terminal_size(msg.cols, msg.rows)
            for v in self.viewers:
                if v is not viewer:
                    self.tell(v, "resize", cols=msg.cols, rows=msg.rows)
            return
        target = next((v for v in self.viewers if v.username == msg.to and v is not viewer
                       and not v.gone), None)
        if target is None:
            self.tell(viewer, "refused", error="no_such_viewer",
                      detail=f"{msg.to} is not watching this terminal")
            return
        viewer.role, target.role = "view", "control"
        self.runner.relay.record(viewer.actor, "terminal.control",
                                 f"session:{self.ch.session.id}", terminal=self.id,
                                 to=target.username, by=viewer.username)
        viewer.room.set()
        target.room.set()
        self.tell(viewer, "role", role="view")
        self.tell(target, "role", role="control")

    async def sender(self, viewer: Viewer) -> None:
        """What is queued for one console, in order (at most a window of output)."""
        with contextlib.suppress(Exception):
            while True:
                item = await viewer.queue.get()
                if item is None:
                    break
                if isinstance(item, bytes):
                    viewer.in_flight = len(item)
                    await viewer.ws.send_bytes(item)
                    viewer.delivered += len(item)  # only now is it counted as delivered
                    viewer.in_flight = 0
                else:
                    await viewer.ws.send_text(item)
                viewer.queued -= len(item)
                if viewer.gone:  # hung up, and still reading: its grace starts again
                    self.end_within(viewer)
        was_gone, viewer.gone = viewer.gone, True
        viewer.room.set()
        with contextlib.suppress(Exception):
            await viewer.ws.close(1000)
        if not was_gone:
            self.events.put_nowait((viewer, None))  # its socket failed: run() hears it
        self.prune(viewer)

    # --- the end -------------------------------------------------------------------

    async def finish(self, end: Ended | None, closed_by: str) -> None:
        """Say how the terminal ended, keep its recording, audit it once.

        The recording is kept on every end but ``recording_failed`` (its blob could not
        be written): a console that ends its terminal with a bad message, or an agent
        that goes away, does not erase the record of what was done; the failure's audit
        event names the recording and its SHA-256."""
        runner, ch, proc = self.runner, self.ch, self.proc
        session = ch.session
        failure = end.code if end is not None else None
        if end is not None:  # the console went, or something ended it: close the channel
            proc.close()
        if failure is None:
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(proc.wait_closed(), 5)
        status = proc.exit_status if failure is None else None
        if failure is None and status == ChannelExit.REFUSED and self.output_bytes == 0:
            err = b""
            with contextlib.suppress(Exception):
                err = await asyncio.wait_for(proc.stderr.read(4096), 2)
            refusal = runner.refusal_of(session, "shell", ch.actor, err)
            self.tell_all("error", error=refusal.code, detail=refusal.detail)
            return
        assert end is not None or failure is None
        if failure == "recording_failed":
            assert end is not None
            runner.failed(session, "shell", ch.actor, failure, end.detail,
                          terminal=self.id, bytes=self.output_bytes)
            self.tell_all("error", error=failure, detail=end.detail)
            return
        try:
            stored = runner.keep_recording(ch, self.recorder)
        except RecordingNotFiled as exc:  # written, not filed: said, audited, still ends
            runner.failed(session, "shell", ch.actor, "recording_not_filed", exc.detail,
                          terminal=self.id, bytes=self.output_bytes, sha256=exc.sha256,
                          recording_bytes=exc.size, **({"after": failure} if failure else {}))
            if failure is not None and end is not None:
                self.tell_all("error", error=failure, detail=end.detail)
            else:
                self.tell_all("exit", exit_status=status, recording=None,
                              error="recording_not_filed")
            return
        except RecordingFailed as exc:
            runner.failed(session, "shell", ch.actor, "recording_failed", str(exc),
                          terminal=self.id, bytes=self.output_bytes,
                          **({"after": failure} if failure else {}))
            self.tell_all("error", error="recording_failed",
                          detail="the recording could not be completed")
            return
        if end is not None and failure is not None:
            kept = {"terminal": self.id, "bytes": self.output_bytes,
                    "recording": stored.id, "sha256": stored.sha256}
            cause = getattr(end, "cause", None)
            if cause is not None:  # agent_gone: audited (and the session closed) there
                runner.agent_gone(ch, cause, **kept)
            else:
                runner.failed(session, "shell", ch.actor, failure, end.detail, **kept)
            self.tell_all("error", error=failure, detail=end.detail,
                          recording=stored.public())
            return
        runner.finished(ch, status, self.output_bytes, stored.sha256, terminal=self.id,
                        recording=stored.id, recording_bytes=stored.bytes, closed_by=closed_by)
        self.tell_all("exit", exit_status=status, recording=stored.public())


# --- serving a console socket ---------------------------------------------------------


def pty_of(query: Mapping[str, str]) -> Pty:
    """The terminal asked for in ``?cols=&rows=&term=``; ``SessionError`` 400 if not."""

    def number(name: str, default: int, most: int) -> int:
        raw = query.get(name, str(default))
        if not (raw.isascii() and raw.isdigit() and 1 <= len(raw) <= 3
                and 1 <= int(raw) <= most):
            raise SessionError(400, "bad_field", f"{name} is a whole number from 1 to {most}")
        return int(raw)

    term = query.get("term", TERM_TYPES[0])
    if term not in TERM_TYPES:
        raise SessionError(400, "bad_field", "term is one of " + ", ".join(TERM_TYPES))
    return Pty(term, number("cols", 80, MAX_COLS), number("rows", 24, MAX_ROWS))


async def open_terminal(runner: ChannelRunner, ws: WebSocket, session: LiveSession,
                        username: str, actor: str, pty: Pty) -> None:
    """Open a terminal for the controlling console on an accepted ``ws`` and run it to
    its end. ``SessionError`` when it does not open (not yet said on the socket)."""
    rec = runner.start_recording(session, "shell", actor, pty, title=f"{session.id} {username}")
    try:
        async with runner.channel(session, "shell", actor, pty=pty) as ch:
            term = Terminal("tm_" + secrets.token_urlsafe(9), runner, ch, rec, pty.cols,
                            pty.rows, pty.term)
            runner.terminals[term.id] = term
            try:
                await term.run(Viewer(ws, username, actor, "control"))
            finally:
                runner.terminals.pop(term.id, None)
    finally:
        rec.abort()


async def join_terminal(runner: ChannelRunner, ws: WebSocket, session: LiveSession,
                        terminal_id: str, username: str, actor: str) -> None:
    """Watch an open terminal from an accepted ``ws``, as a viewer, until it ends or
    this console goes. ``SessionError`` when there is no such terminal."""
    term = runner.terminals.get(terminal_id)
    if (not isinstance(term, Terminal) or term.ch.session is not session
            or term.ended.is_set()):
        raise SessionError(404, "no_such_terminal", "no such terminal is open in this session")
    if sum(not v.gone for v in term.viewers) >= MAX_VIEWERS:
        raise SessionError(409, "too_many_viewers", f"a terminal has at most {MAX_VIEWERS} "
                                                    "consoles")
    viewer = Viewer(ws, username, actor, "view")
    runner.relay.record(actor, "terminal.join", f"session:{session.id}", terminal=term.id,
                        role="view")
    term.add(viewer)
    assert viewer.sending is not None
    with contextlib.suppress(BaseException):
        await viewer.sending
