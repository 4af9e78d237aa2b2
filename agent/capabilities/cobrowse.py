"""``cobrowse``: the customer's browser, seen live and, only when granted, guided.

The channel (issue-13 contract): JSON lines both ways, each at most 1 MiB. The relay's
first line is ``{"type":"start","url":...,"technician":...,"reason":...,
"screencast":false}``; then ``request_control``, ``release_control``, ``input``,
``pointer``, ``propose_url``, ``screencast`` and ``end``. The agent answers
``consent``, ``rrweb`` (batched, masked at the source), ``control``, ``nav``, ``frame``,
``hidden``, ``error`` and, last, ``ended``. Exit status 0, 77 when the customer
refuses to be seen, 2 for a bad request.

Consent lives in the agent's own UI, never in the page (a page script can click
anything in the page): this room asks itself (``Capability.asks_itself``) so that
the question can say what is asked for. Viewing is one question (under ``allow`` the
administrator answered it); control is always another, refused when unanswered in
:data:`CONTROL_ASK_S`. While the asker can keep its window open (``ask_and_hold``),
that window is the indicator: closing the view's ends the co-browse, closing
control's ends control. Input reaches the page only while control is granted, only
through CDP ``Input.*`` (agent/cobrowse/session.py), and never while focus is in a
field kept private. Everything the relay sends is validated and rate-limited here;
everything the page sends is validated and capped in agent/cobrowse/events.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from backline.agent.capabilities.base import SessionContext
from backline.common.capabilities import ChannelExit

MAX_LINE = 1024 * 1024
REQUEST_WAIT_S = 10.0
CONTROL_ASK_S = 30.0
#: How long the customer has to answer a proposed address (when the technician has no
#: control, a proposal is a question, never a navigation).
PROPOSE_ASK_S = 30.0
#: What the relay may send per second (inputs, pointers), and its burst.
RELAY_LINES_PER_S = 200.0
RELAY_LINES_BURST = 400.0
#: rrweb lines waiting for the channel beyond this are dropped (the relay does not read).
MAX_QUEUED = 512
#: Screencast frames (up to 1 MiB each) waiting beyond this are dropped: the session
#: acknowledges a frame to Chromium only once queued, so the browser slows down to
#: what the relay reads.
MAX_QUEUED_FRAMES = 4
FRAME_PREFIX = '{"type":"frame"'
KNOWN = {"request_control", "release_control", "input", "pointer", "propose_url",
         "screencast", "end"}


VIEW_INDICATOR = ("A technician is watching the Backline co-browse window. Close this "
                  "window to end the co-browse at once.")


def view_indicator(hidden: list[str]) -> str:
    """The indicator of the view, saying what the technician does not see."""
    return f"{VIEW_INDICATOR} Hidden from the technician: {'; '.join(hidden)}."
CONTROL_INDICATOR = ("A technician CONTROLS the Backline co-browse window. Close this "
                     "window to take control back at once.")


class _BadRequest(Exception):
    pass


class LineReader:
    """JSON objects from the channel, one a line, each bounded."""

    def __init__(self, process: Any) -> None:
        self.process = process
        self.buffer = ""
        self.eof = False
        self.overlong = 0

    async def next(self) -> dict[str, Any] | None:
        """The next object; None at the end of input; ``{}`` for a line that is not one."""
        while True:
            newline = self.buffer.find("\n")
            if newline >= 0:
                line, self.buffer = self.buffer[:newline], self.buffer[newline + 1:]
                if self.overlong:
                    self.overlong = 0
                    return {}
                try:
                    value = json.loads(line)
                except (ValueError, RecursionError):
                    return {}
                return value if isinstance(value, dict) else {}
            if len(self.buffer) > MAX_LINE:
                self.buffer = ""
                self.overlong += 1
            if self.eof:
                return None
            chunk = await self.process.stdin.read(65536)
            if not chunk:
                self.eof = True
                if self.buffer and not self.overlong:
                    self.buffer += "\n"
                    continue
                return None
            self.buffer += chunk


def parse_start(value: dict[str, Any] | None) -> dict[str, Any]:
    if value is None:
        raise _BadRequest("the input closed before the start line")
    if value.get("type") != "start":
        raise _BadRequest('the first line must be {"type":"start", ...}')
    url = value.get("url")
    if url is not None and (not isinstance(url, str) or len(url) > 4096):
        raise _BadRequest("url must be an address of up to 4096 characters, or null")
    for name in ("technician", "reason"):
        if not isinstance(value.get(name, ""), str) or len(value.get(name, "")) > 500:
            raise _BadRequest(f"{name} must be a string of up to 500 characters")
    if not isinstance(value.get("screencast", False), bool):
        raise _BadRequest("screencast must be true or false")
    return value


def _printable(text: str, most: int = 300) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:most]


def view_question(ctx: SessionContext, url: str | None, reason: str,
                  hidden: list[str] | None = None) -> str:
    where = f" on {_printable(url, 200)}" if url else ""
    text = (f"Technician {_printable(ctx.technician)} asks to see a browser window that "
            f"Backline opens{where}")
    if reason or ctx.reason:
        text += f" ({_printable(reason or ctx.reason)})"
    if hidden:
        # The policy's own words (selectors, URL patterns): the administrator's, not the
        # relay's; still only printable characters.
        text += (". Hidden from the technician: "
                 + _printable("; ".join(hidden), 1000))
    return text + ". Allow?"


def hidden_for(ctx: SessionContext) -> list[str]:
    """What stays on this machine, from the policy (the same list as the ``hidden`` line)."""
    from backline.agent.cobrowse.recorder import Privacy

    policy = ctx.policy.cobrowse
    return Privacy.from_policy(policy).hidden(policy)


def control_question(ctx: SessionContext) -> str:
    return (f"Technician {_printable(ctx.technician)} asks to CONTROL the co-browse "
            "window (click and type in it). Allow?")


def propose_question(ctx: SessionContext, url: str) -> str:
    return (f"Technician {_printable(ctx.technician)} proposes to open "
            f"{_printable(url[:300])} in the co-browse window. Open it?")


class Room:
    """One co-browse channel."""

    def __init__(self, process: Any, ctx: SessionContext) -> None:
        self.process = process
        self.ctx = ctx
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.dropped_lines = 0
        #: Screencast frames in the queue (the writer counts them out).
        self.frames_queued = 0
        self.base = {"session_id": ctx.session_id, "technician": ctx.technician}
        self.cb: Any = None
        self.asking: asyncio.Task[None] | None = None
        self.proposing: asyncio.Task[None] | None = None
        self.control_held: Any = None
        self.tokens = RELAY_LINES_BURST
        self.tokens_at = time.monotonic()
        self.refused_said: dict[str, float] = {}
        #: What `backline-agent sessions` shows of this co-browse (hidden, control).
        self.status: dict[str, Any] = {}
        self.unsaid: dict[str, int] = {}

    def emit(self, event: dict[str, Any] | str) -> bool:
        """Queue one line for the relay; False when it was dropped (the relay is not
        reading: DOM lines past :data:`MAX_QUEUED`, frames past
        :data:`MAX_QUEUED_FRAMES`)."""
        if isinstance(event, dict) and event.get("type") == "control" and self.status:
            self.status["control"] = event.get("state", "none")
        if isinstance(event, str):
            if self.queue.qsize() >= MAX_QUEUED:  # the relay is not reading: drop video/DOM
                self.dropped_lines += 1
                return False
            self.queue.put_nowait(event)
            return True
        frame = event.get("type") == "frame"
        if frame and self.frames_queued >= MAX_QUEUED_FRAMES:
            self.dropped_lines += 1
            return False
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        if frame:
            self.frames_queued += 1
        self.queue.put_nowait(line)
        return True

    async def writer(self) -> None:
        while True:
            line = await self.queue.get()
            if line.startswith(FRAME_PREFIX):
                self.frames_queued -= 1
            try:
                self.process.stdout.write(line + "\n")
            except UnicodeEncodeError:  # a lone surrogate from the page: escaped instead
                self.process.stdout.write(json.dumps(json.loads(line)) + "\n")
            await self.process.stdout.drain()

    async def flush(self) -> None:
        for _ in range(200):
            if self.queue.empty():
                break
            await asyncio.sleep(0.01)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.stdout.drain(), 2)

    def refused(self, how: str, detail: str) -> int:
        """The channel refused as the SSH server refuses one (logged as
        ``channel.refused``, one JSON line on stderr that the relay audits), exit 77."""
        self.log("channel.refused", capability="cobrowse", decision="ask", reason=how,
                 detail=detail)
        with contextlib.suppress(Exception):
            self.process.stderr.write(json.dumps({"refused": how, "capability": "cobrowse"})
                                      + "\n")
        return int(ChannelExit.REFUSED)

    def log(self, event: str, **fields: Any) -> None:
        self.ctx.log.record(event, **self.base, **fields)

    def refuse_input(self, reason: str, detail: str) -> None:
        """Logged and said to the relay at most once a second per reason, with how many
        more were refused meanwhile (a flood of refused lines must not become a flood of
        answers, nor fill the customer's disk with log lines)."""
        now = time.monotonic()
        if now - self.refused_said.get(reason, -1e9) >= 1.0:
            self.refused_said[reason] = now
            self.log("cobrowse.refused", reason=reason, detail=detail[:200],
                     also_refused=self.unsaid.pop(reason, 0))
            self.emit({"type": "error", "error": reason, "detail": detail[:300]})
        else:
            self.unsaid[reason] = self.unsaid.get(reason, 0) + 1

    def allow_line(self) -> bool:
        now = time.monotonic()
        self.tokens = min(RELAY_LINES_BURST,
                          self.tokens + (now - self.tokens_at) * RELAY_LINES_PER_S)
        self.tokens_at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    # --- consent ---------------------------------------------------------------------

    async def ask(self, words: str, timeout: float, indicator: str = "") -> Any:
        """Ask in the agent's UI; with ``indicator``, an asker that can keeps its window
        open after a yes, saying so, and its closing ends what was granted."""
        from backline.agent.consent import NoAsker

        asker = self.ctx.extra.get("asker") or NoAsker()
        holding = getattr(asker, "ask_and_hold", None) if indicator else None
        if holding is not None:
            import inspect

            # An asker whose ask_and_hold takes no indicator text keeps its own.
            extra = ({"indicator": indicator} if "indicator" in
                     inspect.signature(holding).parameters else {})
            return await holding(words, timeout, self.ctx, "cobrowse", **extra)
        return await asker.ask(words, timeout)

    async def bounded_ask(self, words: str, timeout: float, indicator: str = "") -> Any:
        """:meth:`ask`, bounded here whatever the asker does (one that never answers is
        a refusal after ``timeout`` and a second)."""
        from backline.agent.consent import Answer

        try:
            return await asyncio.wait_for(self.ask(words, timeout, indicator), timeout + 1)
        except TimeoutError:
            return Answer(False, "no_answer")

    async def ask_control(self) -> None:
        answer = await self.bounded_ask(control_question(self.ctx), CONTROL_ASK_S,
                                        indicator=CONTROL_INDICATOR)
        said = "yes" if answer.allowed else ("timeout" if answer.how == "no_answer" else "no")
        self.log("cobrowse.consent", what="control", answer=said, how=answer.how)
        self.emit({"type": "consent", "what": "control", "answer": said})
        if not answer.allowed:
            self.emit({"type": "control", "state": "refused"})
            return
        await self.cb.set_control(True)
        self.control_held = answer.held
        self.log("cobrowse.control.granted")
        self.emit({"type": "control", "state": "granted"})
        if answer.held is not None:
            await answer.held.ended.wait()  # the customer closed the control indicator
            if self.cb.control:
                await self.revoke("customer")

    async def open_start(self, url: str) -> None:
        """The start line's address, which the view question named."""
        await self.open_address(url, by="technician")

    async def open_address(self, url: str, by: str) -> None:
        """Navigate, saying a refusal or a browser error as lines; logged when done."""
        from backline.agent.cobrowse.session import InputRefused

        try:
            await self.cb.navigate(url)
        except InputRefused as exc:
            self.refuse_input(exc.reason, exc.detail)
            return
        except Exception as exc:
            self.emit({"type": "error", "error": "browser", "detail": str(exc)[:300]})
            return
        self.log("cobrowse.navigated", url=url[:500], by=by)

    async def ask_propose(self, url: str) -> None:
        """Without control, a proposed address is the customer's to open or not."""
        answer = await self.bounded_ask(propose_question(self.ctx, url), PROPOSE_ASK_S)
        said = "yes" if answer.allowed else ("timeout" if answer.how == "no_answer" else "no")
        self.log("cobrowse.consent", what="propose_url", answer=said, how=answer.how)
        self.emit({"type": "consent", "what": "propose_url", "answer": said})
        if not answer.allowed:
            self.refuse_input("propose_refused", "the customer did not open the address "
                              f"proposed ({said})")
            return
        await self.open_address(url, by="customer")

    async def revoke(self, by: str) -> None:
        await self.cb.set_control(False)
        held, self.control_held = self.control_held, None
        if held is not None:
            with contextlib.suppress(Exception):
                await held.close()
        self.log("cobrowse.control.revoked", by=by)
        self.emit({"type": "control", "state": "revoked"})

    # --- the relay's lines -----------------------------------------------------------

    async def handle(self, message: dict[str, Any]) -> str | None:
        """One line from the relay; a reason to end, or None."""
        kind = message.get("type")
        if kind not in KNOWN:
            self.refuse_input("bad_request", "a line that is not one of the contract's")
            return None
        if kind == "end":
            return "technician"
        if not self.allow_line():
            self.refuse_input("rate_limited", "the relay sent more than "
                              f"{RELAY_LINES_PER_S:g} lines a second")
            return None
        from backline.agent.cobrowse.session import InputRefused

        try:
            if kind == "request_control":
                if self.cb.control:
                    self.emit({"type": "control",
                               "state": "paused" if self.cb.paused else "granted"})
                elif self.asking is None or self.asking.done():
                    self.asking = asyncio.ensure_future(self.ask_control())
            elif kind == "release_control":
                if self.asking is not None and not self.asking.done():
                    self.asking.cancel()
                if self.cb.control:
                    await self.revoke("technician")
            elif kind == "input":
                if not self.cb.control:
                    self.refuse_input("not_in_control", "input without control granted "
                                                        "by the customer: nothing done")
                    return None
                await self.cb.input(message)
            elif kind == "pointer":
                await self.cb.pointer(message.get("x"), message.get("y"))
            elif kind == "propose_url":
                url = message.get("url")
                if not isinstance(url, str):
                    raise InputRefused("bad_request", "propose_url needs a url")
                if self.cb.control and not self.cb.paused:
                    await self.cb.navigate(url)
                    self.log("cobrowse.navigated", url=url[:500], by="technician")
                elif not self.cb.url_allowed(url):
                    raise InputRefused("url_not_allowed", "that address is not allowed by "
                                                          "the customer's policy")
                elif self.proposing is not None and not self.proposing.done():
                    raise InputRefused("propose_pending", "the customer is still asked "
                                                          "about the last address proposed")
                else:
                    self.proposing = asyncio.ensure_future(self.ask_propose(url))
            elif kind == "screencast":
                await self.screencast(message.get("on") is True)
        except InputRefused as exc:
            self.refuse_input(exc.reason, exc.detail)
        except Exception as exc:  # a CDP error for one input is not the end of the session
            self.emit({"type": "error", "error": "browser", "detail": str(exc)[:300]})
        return None

    async def screencast(self, on: bool) -> None:
        from backline.agent.cobrowse.session import InputRefused

        if on and not self.ctx.policy.cobrowse.screencast:
            raise InputRefused("screencast_not_allowed", "the customer's policy does not "
                               "allow the screencast (pixels cannot be masked)")
        await self.cb.screencast(on)
        self.log("cobrowse.screencast", on=on)


async def run(process: Any, ctx: SessionContext) -> int:
    from backline.agent.cobrowse.browser import BrowserError
    from backline.agent.cobrowse.recorder import RecorderMissing
    from backline.agent.cobrowse.session import CoBrowse

    room = Room(process, ctx)
    asker = ctx.extra.get("asker")
    if ctx.policy.decision("cobrowse") == "ask" and not getattr(asker, "available", False):
        # Nobody to ask (a background agent without a display): no, before any work.
        return room.refused("no_way_to_ask", "ask, with no way to ask the customer")
    writer = asyncio.ensure_future(room.writer())
    reader = LineReader(process)
    try:
        try:
            async with asyncio.timeout(REQUEST_WAIT_S):
                start = parse_start(await reader.next())
        except (_BadRequest, TimeoutError) as exc:
            detail = str(exc) or f"no start line within {REQUEST_WAIT_S:g} s"
            room.log("cobrowse.refused", reason="bad_request", detail=detail)
            room.emit({"type": "error", "error": "bad_request", "detail": detail})
            await room.flush()
            return int(ChannelExit.BAD_REQUEST)
        url = start.get("url")
        hidden = hidden_for(ctx)
        # View consent: under ask, the customer; under allow, the administrator said yes.
        view_held = None
        if ctx.policy.decision("cobrowse") == "ask":
            answer = await room.ask(view_question(ctx, url, start.get("reason", ""), hidden),
                                    ctx.policy.ask_timeout_s,
                                    indicator=view_indicator(hidden))
            said = "yes" if answer.allowed else ("timeout" if answer.how == "no_answer"
                                                 else "no")
            room.log("cobrowse.consent", what="view", answer=said, how=answer.how)
            room.emit({"type": "consent", "what": "view", "answer": said})
            if not answer.allowed:
                await room.flush()
                return room.refused(answer.how, "the customer was asked to be seen")
            view_held = answer.held
        else:
            room.log("cobrowse.consent", what="view", answer="yes", how="policy_allow")
            room.emit({"type": "consent", "what": "view", "answer": "yes"})
        cb = CoBrowse(ctx.policy.cobrowse, room.emit, on_log=room.log)
        room.cb = cb
        ctx.extra["cobrowse_session"] = cb  # what the agent's own UI (and tests) look at
        try:
            await cb.start(headless=ctx.extra.get("cobrowse_headless"))
        except (BrowserError, RecorderMissing, OSError) as exc:
            room.log("cobrowse.refused", reason="no_browser", detail=str(exc)[:300])
            room.emit({"type": "error", "error": "no_browser", "detail": str(exc)[:500]})
            room.emit({"type": "ended", "reason": "browser_closed"})
            await cb.close()
            await room.flush()
            return 1
        reason = "technician"
        notes = ctx.extra.get("status_notes")
        room.status = {"hidden": hidden, "control": "none"}
        if isinstance(notes, dict):
            notes["cobrowse"] = room.status  # `backline-agent sessions` shows it
        try:
            room.emit({"type": "hidden", "what": hidden})
            if url:  # the address the customer was asked to be seen on: opened at once
                await room.open_start(url)
            if start.get("screencast"):
                await room.handle({"type": "screencast", "on": True})
            reason = await serve_lines(room, reader, cb, view_held)
        finally:
            for task in (room.asking, room.proposing):
                if task is not None:
                    task.cancel()
            if room.control_held is not None:
                with contextlib.suppress(Exception):
                    await room.control_held.close()
            if view_held is not None:
                with contextlib.suppress(Exception):
                    await view_held.close()
            await cb.close()
            if isinstance(notes, dict):
                notes.pop("cobrowse", None)
        room.log("cobrowse.ended", reason=reason, dropped_lines=room.dropped_lines, **{
            k: v for k, v in cb.stats.items() if k != "first_snapshot_ms"})
        room.emit({"type": "ended", "reason": reason})
        await room.flush()
        return 0
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await writer


async def serve_lines(room: Room, reader: LineReader, cb: Any, view_held: Any) -> str:
    """The relay's lines until the co-browse ends; why it ended."""
    ended = asyncio.ensure_future(cb.ended.wait())
    closed = (asyncio.ensure_future(view_held.ended.wait()) if view_held is not None
              else None)
    try:
        while True:
            nxt = asyncio.ensure_future(reader.next())
            waiting = {nxt, ended} | ({closed} if closed is not None else set())
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await nxt
                if closed is not None and closed.done():
                    return "customer"
                return cb.end_reason or "browser_closed"
            message = nxt.result()
            if message is None:
                return "technician"
            if not message:
                room.refuse_input("bad_request", "a line that is not a JSON object (or over "
                                                 "1 MiB)")
                continue
            why = await room.handle(message)
            if why:
                return why
    finally:
        ended.cancel()
        if closed is not None:
            closed.cancel()
