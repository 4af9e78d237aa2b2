"""The one channel runner: every capability channel, REST or WebSocket, runs here.

A channel is one SSH session channel on a live support session, opened for one
capability's subsystem. Whatever serves it (``POST .../channels/{capability}``, the
``/stream/{capability}`` WebSocket's JSON lines, or a terminal), the same things
happen in the same place:

- the capability must be one of the session's; opening it is refused (audited
  ``session.channel.refused``) when the agent says no, and a channel that opened and
  then exits with 77 (:data:`ChannelExit.REFUSED`) is the refusal the agent reported;
- while it runs it counts in ``active_channels`` (the idle-out spares the session)
  and every byte ``touch``-es the session;
- its output is bounded (8 MiB answered in one piece, 64 MiB streamed) and hashed;
  cut there, said so and audited, never waited for;
- an agent that goes away mid-channel is ``agent_gone`` (audited
  ``session.channel.failed``, the session closed);
- it ends in one audit event, ``session.channel``, with ``exit_status``, ``bytes``
  and ``sha256`` (and, for a terminal, its recording);
- what its room keeps (a diagnostics report, a recording) is kept here.

The terminal's duplex bridge is :mod:`backline.relay.capabilities.shell`; it opens
its channel and ends it through :meth:`ChannelRunner.channel` and
:meth:`ChannelRunner.finished` like the others, so this is also the one place where
recording hooks in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import asyncssh
import sqlalchemy as sa

from backline.common.capabilities import ChannelExit
from backline.relay import term_index
from backline.relay.capabilities import recording, spec_for
from backline.relay.capabilities.base import (
    ChannelSpec,
    KeptContext,
    Pty,
    RecordingFailed,
    RecordingNotFiled,
    RequestRefused,
)
from backline.relay.capabilities.lines import LineReader, LineTooLong
from backline.relay.ports import Configured, Counters, Recorder, Stored
from backline.relay.sessions.session import LiveSession, SessionError
from backline.relay.sessions.states import State

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from backline.relay.blobs import BlobStore
    from backline.relay.sessions.manager import SessionManager

log = logging.getLogger("backline.relay.capabilities.runner")

EXIT_REFUSED = ChannelExit.REFUSED  # the agent's "opened, then refused" exit status
#: The most output answered in one piece (REST); past it the channel is cut.
MAX_OUTPUT = 8 * 1024 * 1024
MAX_STDERR = 16 * 1024
#: The longest line and the most output streamed as JSON lines.
MAX_STREAM_LINE = 1024 * 1024
MAX_STREAM_BYTES = 64 * 1024 * 1024
CLOSE_WAIT_S = 2.0
@dataclass
class Channel:
    """One open channel and who it runs for; see :meth:`ChannelRunner.channel`."""

    session: LiveSession
    spec: ChannelSpec
    actor: str
    proc: asyncssh.SSHClientProcess[bytes]
    started: float = field(default_factory=time.perf_counter)

    @property
    def capability(self) -> str:
        return self.spec.name

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 1)


class ChannelHost(Recorder, Configured, Stored, Counters, Protocol):
    """What the channel runner uses of the relay: the audit trail, the error counters,
    the sessions (to close one whose agent went away), and for what is kept the
    database, the blob store and ``config.record_keystrokes``."""

    @property
    def blobs(self) -> BlobStore: ...

    @property
    def sessions(self) -> SessionManager: ...


class ChannelRunner:
    """Opens, runs, bounds, audits and keeps every capability channel of the relay."""

    def __init__(self, relay: ChannelHost) -> None:
        self.relay = relay
        #: Open rooms with viewers by id (terminals, shell.py; co-browses, cobrowse.py):
        #: viewers join them, and withdrawn access hangs their consoles up.
        self.terminals: dict[str, Any] = {}
        self._tasks: set[asyncio.Future[Any]] = set()

    # --- what is asked -------------------------------------------------------------

    def spec(self, capability: str) -> ChannelSpec:
        return spec_for(capability)

    def request(self, session: LiveSession, capability: str, actor: str,
                asked: Mapping[str, Any]) -> bytes | None:
        """The channel's request from what was asked, or a 400 audited as
        ``session.channel.refused``."""
        try:
            return self.spec(capability).request(asked)
        except RequestRefused as exc:
            self.refused(session, capability, actor, exc.code, exc.detail)
            raise SessionError(400, exc.code, exc.detail, audited=True) from None

    # --- refusals and failures, audited ----------------------------------------------

    def refused(self, session: LiveSession, capability: str, actor: str, reason: str,
                detail: str = "") -> None:
        self.relay.metrics.errors.labels("session_channel_refused").inc()
        extra = {"detail": detail[:200]} if detail else {}
        self.relay.record(actor, "session.channel.refused", f"session:{session.id}",
                          capability=capability, reason=reason, agent=session.principal,
                          **extra)

    def failed(self, session: LiveSession, capability: str, actor: str, reason: str,
               detail: str, **extra: Any) -> None:
        self.relay.metrics.errors.labels(f"session_channel_{reason}").inc()
        self.relay.record(actor, "session.channel.failed", f"session:{session.id}",
                          capability=capability, agent=session.principal, reason=reason,
                          detail=detail[:200], **extra)

    def refusal_of(self, session: LiveSession, capability: str, actor: str,
                   stderr: bytes) -> SessionError:
        """An exit status 77 turned into the refusal the agent reported."""
        try:
            why = str(json.loads(stderr.decode().splitlines()[0]).get("refused", ""))[:64]
        except (ValueError, IndexError, AttributeError, UnicodeDecodeError):
            why = "refused"
        self.refused(session, capability, actor, f"agent_{why}" if why else "agent_refused")
        status = "refused_by_customer" if why == "customer_declined" else "refused_by_agent"
        return SessionError(403, status, f"the agent refused {capability!r} ({why})",
                            audited=True)

    def agent_gone(self, ch: Channel, exc: BaseException, close: bool = False,
                   **extra: Any) -> SessionError:
        """The agent went away in the middle of a channel: audited (with ``extra``, e.g.
        the recording kept), and the session closed when its SSH connection is gone too
        (always, with ``close``)."""
        session = ch.session
        detail = f"{type(exc).__name__}: {exc}"[:200]
        self.failed(session, ch.capability, ch.actor, "agent_gone", detail, **extra)
        if (close or session.ssh is None or session.ssh.is_closed()
                or session.lost is not None) and not session.closing:
            task = asyncio.ensure_future(self.relay.sessions.close(session, "agent_gone",
                                                                   detail))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return SessionError(502, "agent_gone", f"the agent went away during {ch.capability} "
                                               f"({type(exc).__name__})", audited=True)

    # --- the channel's life ----------------------------------------------------------

    def _ready(self, session: LiveSession, capability: str, actor: str
               ) -> asyncssh.SSHClientConnection:
        if session.state != State.READY or session.ssh is None:
            raise SessionError(409, "not_ready", "the session is not open")
        if capability not in session.capabilities:
            self.refused(session, capability, actor, "not_in_session")
            raise SessionError(403, "not_in_session",
                               f"{capability!r} is not one of this session's capabilities",
                               audited=True)
        return session.ssh

    @contextlib.asynccontextmanager
    async def channel(self, session: LiveSession, capability: str, actor: str,
                      request: bytes | None = None, pty: Pty | None = None
                      ) -> AsyncIterator[Channel]:
        """Open one SSH channel for ``capability`` and count it while it runs.

        ``request``, when given, is written to it and its input closed (the diagnostics
        subsystem waits for its request). ``pty`` asks for a terminal first."""
        ssh = self._ready(session, capability, actor)
        session.touch()
        extra: dict[str, Any] = {}
        if pty is not None:
            extra = {"term_type": pty.term, "term_size": (pty.cols, pty.rows)}
        try:
            proc = await ssh.create_process(subsystem=capability, encoding=None, **extra)
            if request is not None:
                proc.stdin.write(request)
                proc.stdin.write_eof()
        except asyncssh.ChannelOpenError as exc:
            self.refused(session, capability, actor, "refused_by_agent", exc.reason)
            raise SessionError(403, "refused_by_agent",
                               f"the agent refused {capability!r} (its local policy does not "
                               "allow it, or it does not offer it)", audited=True) from None
        except (asyncssh.Error, OSError) as exc:
            self.failed(session, capability, actor, "channel_failed",
                        f"{type(exc).__name__}: {exc}")
            raise SessionError(502, "channel_failed", f"could not open a channel: {exc}",
                               audited=True) from None
        session.active_channels += 1
        session.channels += 1
        try:
            yield Channel(session, self.spec(capability), actor, proc)
        finally:
            session.active_channels -= 1
            session.touch()
            proc.close()

    def finished(self, ch: Channel, exit_status: int | None, size: int, sha256: str,
                 **extra: Any) -> float:
        """The one audit event of a channel that ran: ``session.channel``."""
        duration_ms = ch.elapsed_ms()
        self.relay.record(ch.actor, "session.channel", f"session:{ch.session.id}",
                          capability=ch.capability, agent=ch.session.principal,
                          exit_status=exit_status, bytes=size, sha256=sha256,
                          duration_ms=duration_ms, **extra)
        return duration_ms

    # --- recordings ------------------------------------------------------------------

    def start_recording(self, session: LiveSession, capability: str, actor: str,
                        pty: Pty | None = None, title: str = "") -> recording.AnyRecorder:
        """A new recording for a channel about to open: an asciicast for a terminal
        (``pty``), the JSON lines as they come for a room without one (``cobrowse``);
        a 503 ``recording_failed`` (audited) when it cannot be started: no recorded
        channel runs unrecorded."""
        try:
            if pty is None:
                return recording.new_lines_recorder(self.relay.blobs)
            return recording.new_recorder(self.relay.blobs, pty.cols, pty.rows, pty.term,
                                          bool(self.relay.config.record_keystrokes), title)
        except RecordingFailed as exc:
            self.failed(session, capability, actor, "recording_failed", str(exc))
            raise SessionError(503, "recording_failed", "the recording cannot be started, "
                                                        f"so no {capability} is opened",
                               audited=True) from None

    def keep_recording(self, ch: Channel, rec: recording.AnyRecorder) -> recording.Stored:
        """Name a finished recording, file it under the session, audit it
        (``recording.stored``); ``RecordingFailed`` when its end cannot be written,
        :class:`RecordingNotFiled` (the blob is kept, named by its hash) when the
        database does not take its row."""
        digest, size, duration = rec.finish()
        s = ch.session
        try:
            stored = recording.save(self.relay.engine, session_id=s.id,
                                    capability=ch.capability, agent_id=s.principal,
                                    technician=s.technician, started_at=rec.started_at,
                                    duration_s=duration, size=size, sha256=digest,
                                    keystrokes=rec.keystrokes)
        except sa.exc.SQLAlchemyError as exc:
            log.error("recording %s of session %s not filed: %r", digest, s.id, exc)
            raise RecordingNotFiled(digest, size, f"{type(exc).__name__}") from exc
        self.relay.record(ch.actor, "recording.stored", f"session:{s.id}",
                          recording=stored.id, capability=ch.capability, sha256=digest,
                          bytes=size, duration_s=duration, keystrokes=rec.keystrokes)
        if ch.capability == "shell":  # its words, for finding it (relay/term_index.py)
            term_index.schedule(self.relay.engine, self.relay.blobs, recording_id=stored.id,
                                session_id=s.id, sha256=digest, keystrokes=rec.keystrokes)
        return stored

    def hang_up_user(self, username: str, reason: str, actor: str,
                     group_id: int | None = None) -> int:
        """Hang up every terminal console of ``username`` (in sessions of ``group_id``
        when given): access withdrawn is withdrawn from watching too, not only from the
        sessions the technician opened. How many were hung up."""
        count = 0
        for term in list(self.terminals.values()):
            if group_id is not None and term.ch.session.group_id != group_id:
                continue
            count += term.hang_up_user(username, reason, actor)
        return count

    def keep(self, ch: Channel, raw: bytes) -> str | None:
        """What the capability's room keeps of a whole, successful output."""
        if ch.spec.keep is None:
            return None
        s = ch.session
        return ch.spec.keep(self.relay, KeptContext(s.id, s.mode, s.principal, s.technician,
                                                    ch.actor), raw)

    # --- one answer (REST) -----------------------------------------------------------

    async def run(self, session: LiveSession, capability: str, actor: str,
                  asked: Mapping[str, Any], timeout: float = 120.0,
                  who: Any = None) -> dict[str, Any]:
        """Run one capability to completion; its output, bounded, and its hash.

        Output past :data:`MAX_OUTPUT` is cut there: the channel is closed at once and
        the answer is marked (``truncated``, ``bytes_kept``, ``bytes_dropped``: what
        arrived past the bound before the close; the agent sent no more). Waiting for
        the end instead waits for ever: once the relay stops reading, SSH flow control
        stops the agent, so its output never ends. An agent that goes away mid-channel
        is ``agent_gone`` (502), audited, and its session closed."""
        spec = self.spec(capability)
        if spec.transport.stream_only:
            raise SessionError(400, "stream_only", f"{capability} has viewers: open it "
                                                   "on its stream socket")
        if spec.answer is not None:  # a conversational room runs its channel itself
            return await spec.answer(self, session, actor, who, asked)
        request = self.request(session, capability, actor, asked)
        async with self.channel(session, capability, actor, request) as ch:
            proc = ch.proc
            try:
                async with asyncio.timeout(timeout):
                    out, dropped, err = await _collect(proc)
            except TimeoutError:
                self.failed(session, capability, actor, "timeout",
                            f"did not finish within {timeout:g} s")
                raise SessionError(504, "timeout", f"{capability} did not finish within "
                                                   f"{timeout:g} s", audited=True) from None
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                raise self.agent_gone(ch, exc) from None
        truncated = dropped > 0
        status = proc.exit_status
        if status == EXIT_REFUSED and not truncated:
            raise self.refusal_of(session, capability, actor, err)
        digest = hashlib.sha256(out).hexdigest()
        cut = {"limit": MAX_OUTPUT, "bytes_kept": len(out), "bytes_dropped": dropped}
        duration_ms = self.finished(ch, status, len(out), digest, truncated=truncated,
                                    **(cut if truncated else {}))
        result = {"capability": capability, "exit_status": status, "duration_ms": duration_ms,
                  "bytes": len(out), "sha256": digest, "truncated": truncated,
                  **(cut if truncated else {}), **parse_output(out)}
        if status == 0 and not truncated and spec.keep is not None:
            result["report"] = self.keep(ch, out)
        return result

    # --- JSON lines (the stream socket) ------------------------------------------------

    async def stream_lines(self, ws: WebSocket, session: LiveSession, capability: str,
                           actor: str, request: bytes | None) -> None:
        """A capability's output on an accepted WebSocket, line by line, as
        ``{"type": "line", "line": ...}`` then ``{"type": "exit", ...}`` (or one
        ``{"type": "error", ...}``). ``SessionError`` when the channel does not open
        (not yet said on the socket: the caller audits and says it)."""
        digest = hashlib.sha256()
        size = 0
        kept: list[bytes] | None = [] if self.spec(capability).keep is not None else None
        async with self.channel(session, capability, actor, request) as ch:
            proc = ch.proc
            gone = asyncio.ensure_future(until_disconnect(ws))
            reader = LineReader(proc.stdout, MAX_STREAM_LINE)
            try:
                while True:
                    reading = asyncio.ensure_future(reader.readline())
                    done, _ = await asyncio.wait({reading, gone},
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if reading not in done:
                        reading.cancel()
                        return
                    too_long = False
                    try:
                        line = reading.result()
                    except LineTooLong as exc:  # cut at the line's bound, not read on
                        line, too_long, size = b"", True, size + exc.size
                    except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                        err = self.agent_gone(ch, exc, close=True)
                        await say(ws, "error", error=err.code,
                                  detail=f"the agent went away during {capability}")
                        return
                    if not line and not too_long:
                        break
                    digest.update(line)
                    size += len(line)
                    if kept is not None:
                        kept.append(line)
                    session.touch()
                    if too_long or size > MAX_STREAM_BYTES:
                        # cut here, said and audited
                        self.finished(ch, None, size, digest.hexdigest(), streamed=True,
                                      truncated=True,
                                      limit=MAX_STREAM_LINE if too_long else MAX_STREAM_BYTES)
                        await say(ws, "error", error="too_large",
                                  detail="the output is too large to stream", truncated=True,
                                  bytes=size)
                        return
                    await ws.send_text(json.dumps({"type": "line",
                                                   "line": line.decode("utf-8", "replace")},
                                                  ensure_ascii=False))
                await asyncio.wait_for(proc.wait_closed(), 10)
                status = proc.exit_status
                err_text = (await proc.stderr.read(MAX_STDERR) if status == EXIT_REFUSED
                            else b"")
            finally:
                gone.cancel()
        if status == EXIT_REFUSED:
            refusal = self.refusal_of(session, capability, actor, err_text)
            await say(ws, "error", error=refusal.code, detail=refusal.detail)
            return
        duration_ms = self.finished(ch, status, size, digest.hexdigest(), streamed=True)
        report = self.keep(ch, b"".join(kept)) if kept is not None and status == 0 else None
        await say(ws, "exit", exit_status=status, bytes=size, sha256=digest.hexdigest(),
                  duration_ms=duration_ms, report=report)


async def say(ws: WebSocket, kind: str, **fields: Any) -> None:
    """One JSON text frame to the browser."""
    await ws.send_text(json.dumps({"type": kind, **fields}))


async def until_disconnect(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


async def _collect(proc: asyncssh.SSHClientProcess[bytes]) -> tuple[bytes, int, bytes]:
    """A channel's ``(stdout, bytes dropped past the bound, stderr)``.

    stderr is read alongside (bounded, the rest discarded) so that neither stream can
    stall the other through the channel's shared window. When stdout passes the bound
    the channel is closed at once and stderr is given up; the close is waited for only
    briefly (the agent's side may be slow to notice)."""
    errors = asyncio.ensure_future(read_bounded(proc.stderr, MAX_STDERR, drain=True))
    try:
        out, dropped = await read_bounded(proc.stdout, MAX_OUTPUT)
        if dropped:
            proc.close()
            errors.cancel()
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(proc.wait_closed(), CLOSE_WAIT_S)
            return out, dropped, b""
        err, _ = await errors
        await proc.wait_closed()
        return out, 0, err
    finally:
        if not errors.done():
            errors.cancel()
        with contextlib.suppress(BaseException):
            await errors


async def read_bounded(stream: asyncssh.SSHReader[bytes], limit: int, drain: bool = False
                       ) -> tuple[bytes, int]:
    """The first ``limit`` bytes up to EOF, and how many more arrived past them (0: the
    whole output). It stops at the first byte past ``limit`` unless ``drain``, which
    reads on to EOF and discards the rest (for stderr, which must not stall stdout)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        data = await stream.read(65536)
        if not data:
            return b"".join(chunks)[:limit], max(0, size - limit)
        if size < limit:
            chunks.append(data)
        size += len(data)
        if size > limit and not drain:
            return b"".join(chunks)[:limit], size - limit


def parse_output(out: bytes) -> dict[str, Any]:
    """A capability's output for the API: one JSON value, JSON lines, or text. It is
    the agent's word: returned as data, never interpreted."""
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError:
        return {"format": "binary", "output": None}
    try:
        return {"format": "json", "output": json.loads(text)}
    except ValueError:
        pass
    try:
        return {"format": "jsonl",
                "output": [json.loads(line) for line in text.splitlines() if line.strip()]}
    except ValueError:
        return {"format": "text", "output": text}
