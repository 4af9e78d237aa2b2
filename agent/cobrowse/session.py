"""One co-browse: the browser, its targets, the recording stream, control and screencast.

The room (``agent/capabilities/cobrowse.py``) owns the channel and the customer's
consent; this owns the browser. Lines for the relay go to ``emit`` (a callable taking
one JSON-able dict or a ready line): it must not block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backline.agent.cobrowse import events as ev
from backline.agent.cobrowse import handsoff, recorder
from backline.agent.cobrowse.browser import Browser, BrowserError, CDPError, find_browser
from backline.agent.cobrowse.cdp import Event
from backline.agent.policy import CobrowsePolicy

log = logging.getLogger("backline.agent.cobrowse")

ISOLATED_WORLD = "backline"
MAX_COORD = 100_000.0
MOUSE_EVENTS = {"mousePressed", "mouseReleased", "mouseMoved"}
KEY_EVENTS = {"keyDown": "keyDown", "keyUp": "keyUp", "char": "char"}
#: No middle button: on Linux it pastes the X primary selection (whatever the customer
#: last selected anywhere on their desktop) into the page.
BUTTONS = {"left", "right", "none"}
SCREENCAST_MAX_B64 = 1024 * 1024 - 256
#: A frame the room could not queue is acknowledged this much later.
FRAME_BACKOFF_S = 0.25
#: The agent's own coalescing of the page's batches into lines (the page batches at
#: recorder.FLUSH_MS): the first after a quiet spell is sent at once.
AGENT_FLUSH_MS = 20
#: rrweb's Meta event (the page's address and size).
META = 4


class InputRefused(Exception):
    """An input the agent will not pass on: ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Target:
    session_id: str
    type: str
    target_id: str
    url: str = ""
    gate: ev.Gate = field(default_factory=ev.Gate)
    main_frame: str = ""
    world: int | None = None
    #: A full snapshot came from this page since its document last changed.
    snapshot_seen: bool = False


class CoBrowse:
    def __init__(self, policy: CobrowsePolicy, emit: Callable[[dict[str, Any] | str], object],
                 on_log: Callable[..., Any] | None = None, injection: str = "cdp") -> None:
        #: "cdp" (the choice: docs/cobrowse.md) or "extension", kept for the measurement
        #: (bench/cobrowse_injection.py).
        self.injection = injection
        self.policy = policy
        self.emit = emit
        self.on_log = on_log or (lambda *a, **k: None)
        self.privacy = recorder.Privacy.from_policy(policy)
        self.binding = recorder.new_binding()
        #: The isolated world's own binding (the customer's input reports), never the page's.
        self.input_binding = recorder.new_binding()
        self.ledger = handsoff.Ledger()
        self.paused = False
        self._paused_until = 0.0
        self.script = recorder.injection(self.binding, self.privacy)
        self.browser: Browser | None = None
        self.targets: dict[str, Target] = {}
        self.pages: list[str] = []  # page session ids, newest last: the last is shown
        self.batcher = ev.Batcher()
        self.ended = asyncio.Event()
        self.end_reason = ""
        self.control = False
        self.screencast_on = False
        self._flusher: asyncio.Task[None] | None = None
        self._flush_at: asyncio.TimerHandle | None = None
        self._flushed = -1e9
        self._tasks: set[asyncio.Task[Any]] = set()
        self._dropped_said = 0.0
        self.stats = {"events": 0, "lines": 0, "bytes": 0, "first_snapshot_ms": None}
        self._started = time.monotonic()

    # --- life ------------------------------------------------------------------------

    async def start(self, headless: bool | None = None) -> None:
        executable = find_browser(self.policy.browser)
        if headless is None and self.policy.headless != "auto":
            headless = self.policy.headless == "true"
        extra: list[str] = []
        if self.injection == "extension":
            extra = recorder.write_extension(self.script)
        self.browser = await Browser.launch(executable, self._on_event, headless=headless,
                                            extra_flags=extra)
        conn = self.browser.conn
        watcher = asyncio.ensure_future(self._watch_browser())
        self._tasks.add(watcher)
        await conn.send("Target.setDiscoverTargets", {"discover": True})
        await conn.send("Target.setAutoAttach", {"autoAttach": True,
                                                 "waitForDebuggerOnStart": True,
                                                 "flatten": True})
        # The first tab (about:blank) existed before auto-attach: attach to it now.
        for info in (await conn.send("Target.getTargets")).get("targetInfos", []):
            if info.get("type") == "page" and not info.get("attached"):
                await conn.send("Target.attachToTarget", {"targetId": info["targetId"],
                                                          "flatten": True})
        self._flusher = asyncio.ensure_future(self._flush_loop())
        for _ in range(100):
            if self.pages:
                break
            await asyncio.sleep(0.02)
        if not self.pages:
            raise BrowserError("the browser opened no page")

    async def _watch_browser(self) -> None:
        assert self.browser is not None
        await self.browser.conn.closed.wait()
        self.finish("browser_closed")

    def finish(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()

    async def close(self) -> None:
        self.finish("technician")
        if self._flusher is not None:
            self._flusher.cancel()
        if self._flush_at is not None:
            self._flush_at.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self.browser is not None:
            await self.browser.close()
        if self.injection == "extension":
            recorder.remove_extension()

    # --- targets ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_event(self, event: Event) -> None:
        method, params = event.method, event.params
        if method == "Target.attachedToTarget":
            self._spawn(self._attached(params))
        elif method == "Target.detachedFromTarget":
            sid = params.get("sessionId")
            self.targets.pop(sid, None)
            if sid in self.pages:
                was_shown = self.pages[-1] == sid
                self.pages.remove(sid)
                if not self.pages:
                    self.finish("browser_closed")
                elif was_shown:
                    # The page under the closed popup is shown again: its address and a
                    # fresh full snapshot (the viewer's copy is the popup's).
                    back = self.targets.get(self.pages[-1])
                    if back is not None:
                        self._say_nav(back)
                    self._spawn(self._snapshot(self.pages[-1]))
        elif method == "Runtime.bindingCalled":
            if params.get("name") == self.binding:
                self._binding(event.session_id, params.get("payload"))
            elif params.get("name") == self.input_binding:
                self._reported(event.session_id, params.get("payload"))
        elif method == "Page.frameNavigated":
            frame = params.get("frame") or {}
            target = self.targets.get(event.session_id or "")
            if target and not frame.get("parentId"):
                target.main_frame = str(frame.get("id", ""))
                target.url = str(frame.get("url", ""))[:4096]
                target.world = None
                target.snapshot_seen = False
                if self.pages and self.pages[-1] == target.session_id:
                    self._say_nav(target)
                    if self.control:
                        self._spawn(self._watch_input())
        elif method == "Page.navigatedWithinDocument":
            self._within_document(event.session_id, params)
        elif method == "Page.loadEventFired":
            self._spawn(self._snapshot_if_missing(event.session_id))
        elif method == "Fetch.requestPaused":
            self._spawn(self._paused(event.session_id, params))
        elif method == "Page.screencastFrame":
            self._spawn(self._frame(event.session_id, params))
        elif method == "Page.fileChooserOpened":
            self.on_log("cobrowse.refused", reason="file_chooser",
                        detail="a file chooser opened while the technician had control")
            self.emit({"type": "error", "error": "file_chooser_refused",
                       "detail": "a file chooser was refused while the technician has control"})
        elif method == "Browser.downloadWillBegin":
            if self.control:
                self.on_log("cobrowse.refused", reason="download",
                            detail="a download while the technician had control")
                self.emit({"type": "error", "error": "download_refused",
                           "detail": "a download was refused while the technician has control"})

    async def _attached(self, params: dict[str, Any]) -> None:
        assert self.browser is not None
        conn = self.browser.conn
        sid = params.get("sessionId")
        info = params.get("targetInfo") or {}
        kind = info.get("type")
        if not isinstance(sid, str):
            return
        try:
            if kind in ("page", "iframe"):
                target = Target(sid, kind, str(info.get("targetId", "")),
                                str(info.get("url", ""))[:4096])
                self.targets[sid] = target
                await asyncio.gather(  # bindingCalled is sent only with Runtime enabled
                    conn.send("Runtime.enable", {}, sid),
                    conn.send("Runtime.addBinding", {"name": self.binding}, sid),
                    conn.send("Runtime.addBinding", {"name": self.input_binding,
                                                     "executionContextName": ISOLATED_WORLD},
                              sid),
                    conn.send("Page.enable", {}, sid),
                    conn.send("Page.addScriptToEvaluateOnNewDocument",
                              {"source": self.script, "runImmediately": True}, sid)
                    if self.injection == "cdp" else asyncio.sleep(0),
                    # The customer's-input watch, before any page script (handsoff.WATCH).
                    conn.send("Page.addScriptToEvaluateOnNewDocument", {
                        "source": handsoff.watch_script(self.input_binding),
                        "worldName": ISOLATED_WORLD, "runImmediately": True}, sid)
                    if kind == "page" else asyncio.sleep(0),
                    conn.send("Target.setAutoAttach", {"autoAttach": True,
                                                       "waitForDebuggerOnStart": True,
                                                       "flatten": True}, sid))
                if kind == "page" and self.policy.allowed_urls:
                    # Every top-level document request is checked against the list,
                    # also those the page makes itself (links, scripts, redirects).
                    await conn.send("Fetch.enable", {"patterns": [
                        {"urlPattern": "*", "resourceType": "Document",
                         "requestStage": "Request"}]}, sid)
                if kind == "page":
                    tree = await conn.send("Page.getFrameTree", {}, sid)
                    target.main_frame = str((tree.get("frameTree") or {}).get("frame", {})
                                            .get("id", ""))
                    self.pages.append(sid)
                if kind in ("page", "iframe"):  # an out-of-process frame chooses files too
                    await self._set_control_guards(sid, self.control)
                    if self.screencast_on:
                        await self._screencast_target(sid, True)
            with contextlib.suppress(CDPError):
                await conn.send("Runtime.runIfWaitingForDebugger", {}, sid)
        except (CDPError, BrowserError, TimeoutError) as exc:
            log.info("could not set up a %s target: %s", kind, exc)

    async def _paused(self, sid: str | None, params: dict[str, Any]) -> None:
        """A document request under ``allowed_urls``: a top-level one outside the list is
        failed (frames inside an allowed page are the page's own business)."""
        assert self.browser is not None
        request = params.get("request") or {}
        url = str(request.get("url", ""))
        target = self.targets.get(sid or "")
        top = target is not None and params.get("frameId") in (target.main_frame, None, "")
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            if top and not self.url_allowed(url):
                # Not the query, fragment or user info (a token), and of a private page
                # only its origin: the line goes to every console and the recording.
                shown = recorder.shown_address(url, self.policy.private_urls)
                said = str(shown["url"])[:300] + (" (a private page)" if shown.get("private")
                                                  else "")
                self.on_log("cobrowse.refused", reason="url_not_allowed", url=said)
                self.emit({"type": "error", "error": "url_not_allowed",
                           "detail": f"{said} is not allowed by the customer's policy"})
                await self.browser.conn.send("Fetch.failRequest", {
                    "requestId": params.get("requestId"), "errorReason": "BlockedByClient"},
                    sid)
            else:
                await self.browser.conn.send("Fetch.continueRequest",
                                             {"requestId": params.get("requestId")}, sid)

    # --- addresses and private pages ------------------------------------------------

    def private(self, target: Target) -> bool:
        return recorder.url_matches(target.url, self.policy.private_urls)

    def _say_nav(self, target: Target) -> None:
        """The shown page's address, cut (recorder.shown_address); on a private page the
        view is blanked at once with a full snapshot of an empty document (what was shown
        before stays on no console), and no event of the page is sent until it leaves."""
        self._flush()
        self.emit({"type": "nav", **recorder.shown_address(target.url,
                                                           self.policy.private_urls)})
        if self.private(target):
            for line in self.batcher.add(json.dumps(blank_snapshot())):
                self._send_line(line)
            self._flush()

    def _within_document(self, sid: str | None, params: dict[str, Any]) -> None:
        """pushState, replaceState or a fragment change: no new document, so the page's
        recorder goes on (inject.js drops its own events while the address is private,
        and so does the agent, by ``target.url``); leaving a private address asks for a
        fresh full snapshot (the view was blanked)."""
        target = self.targets.get(sid or "")
        if target is None or target.type != "page" or params.get("frameId") != (
                target.main_frame):
            return
        was_private = self.private(target)
        target.url = str(params.get("url", ""))[:4096]
        if self.pages and self.pages[-1] == target.session_id:
            self._say_nav(target)
            if was_private and not self.private(target):
                self._spawn(self._snapshot(target.session_id))

    # --- the recording ---------------------------------------------------------------

    def _shown(self, sid: str | None) -> Target | None:
        """The page a session belongs to, if it is the page being shown."""
        target = self.targets.get(sid or "")
        if target is None or not self.pages:
            return None
        if target.type == "page":
            return target if self.pages[-1] == target.session_id else None
        return self.targets.get(self.pages[-1])  # an OOPIF's events come via its page

    def _binding(self, sid: str | None, payload: object) -> None:
        target = self._shown(sid)
        source = self.targets.get(sid or "")
        if source is None:
            return
        if target is None or source.type != "page":
            # Only a page's top document sends (frames post to it): anything else is noise.
            source.gate.malformed += 1
            return
        if self.private(target):
            return
        accepted = source.gate.accept(payload)
        for event, text in accepted:
            if event["type"] == META and isinstance(event.get("data"), dict) and (
                    "href" in event["data"]):
                # rrweb's meta event carries the address: cut like a nav line (the page's
                # recorder cuts it too, but the page can call the binding itself).
                event["data"]["href"] = str(recorder.shown_address(
                    str(event["data"]["href"]), self.policy.private_urls)["url"])
                text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            if event["type"] == ev.FULL_SNAPSHOT:
                source.snapshot_seen = True
            if event["type"] == ev.FULL_SNAPSHOT and self.stats["first_snapshot_ms"] is None:
                self.stats["first_snapshot_ms"] = round(
                    (time.monotonic() - self._started) * 1000, 1)
            self.stats["events"] += 1
            for line in self.batcher.add(text):
                self._send_line(line)
        if len(self.batcher) and self._flush_at is None:
            # Leading edge: what this read of the pipe brought leaves together, at once
            # after a quiet spell, else when AGENT_FLUSH_MS has passed since the last.
            wait = max(0.0, self._flushed + AGENT_FLUSH_MS / 1000 - time.monotonic())
            self._flush_at = asyncio.get_running_loop().call_later(wait, self._flush)
        self._say_drops(source)

    def _flush(self) -> None:
        """The batched events as one line (also before a ``nav`` line: never overtaken)."""
        if self._flush_at is not None:
            self._flush_at.cancel()
        self._flush_at = None
        if len(self.batcher) and not self.ended.is_set():
            self._flushed = time.monotonic()
            self._send_line(self.batcher.flush())

    def _send_line(self, line: str) -> None:
        self.stats["lines"] += 1
        self.stats["bytes"] += len(line)
        self.emit(line)

    def _say_drops(self, target: Target) -> None:
        gate = target.gate
        now = time.monotonic()
        if gate.dropped_events and now - self._dropped_said >= 1.0:
            self._dropped_said = now
            self.on_log("cobrowse.capped", dropped_events=gate.dropped_events,
                        dropped_bytes=gate.dropped_bytes, malformed=gate.malformed)
            self.emit({"type": "error", "error": "rate_capped",
                       "detail": f"{gate.dropped_events} events ({gate.dropped_bytes} bytes) "
                                 "from the page were dropped: over the agent's limits"})

    async def _flush_loop(self) -> None:
        """After drops, a fresh full snapshot once the page's allowance has refilled."""
        while True:
            await asyncio.sleep(0.1)
            for sid in list(self.pages[-1:]):
                target = self.targets.get(sid)
                if target and target.gate.needs_snapshot and target.gate.recovered():
                    target.gate.needs_snapshot = False
                    await self._snapshot(sid)

    async def _snapshot_if_missing(self, sid: str | None) -> None:
        """A shown page loaded without a full snapshot reaching the agent: ask for one. A
        popup opened on an address first holds the initial about:blank, whose window the
        same-origin document then reuses (HTML's rule), and its recorder's first
        snapshot was lost; the view stayed on the blank page."""
        await asyncio.sleep(0.5)
        target = self.targets.get(sid or "")
        if (target is not None and target.type == "page" and not target.snapshot_seen
                and self.pages and self.pages[-1] == target.session_id):
            log.info("a page loaded without a full snapshot: asking for one")
            await self._snapshot(target.session_id)

    async def _snapshot(self, sid: str) -> None:
        """Ask a page's recorder for a fresh full snapshot (after drops, or a popup closed)."""
        if self.browser is None:
            return
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            await self.browser.conn.send("Runtime.evaluate", {
                "expression": f"globalThis[{self.binding + '_snapshot'!r}] && "
                              f"globalThis[{self.binding + '_snapshot'!r}]()"}, sid, timeout=5)

    # --- navigation ------------------------------------------------------------------

    def url_allowed(self, url: str) -> bool:
        if not url.startswith(("http://", "https://")) or len(url) > 4096:
            return False
        return not self.policy.allowed_urls or recorder.url_matches(url,
                                                                    self.policy.allowed_urls)

    async def navigate(self, url: str) -> None:
        if not self.url_allowed(url):
            raise InputRefused("url_not_allowed", "that address is not allowed by the "
                                                  "customer's policy")
        target = self._page()
        assert self.browser is not None
        await self.browser.conn.send("Page.navigate", {"url": url}, target.session_id)

    def _page(self) -> Target:
        if not self.pages:
            raise InputRefused("no_page", "the browser has no page open")
        return self.targets[self.pages[-1]]

    # --- control ---------------------------------------------------------------------

    async def set_control(self, granted: bool) -> None:
        """A grant takes effect only once its guards are on (downloads denied, file
        choosers intercepted in every attached page and frame target): no input is
        dispatched before. A revoke takes effect at once, its guards lifted after."""
        if not granted:
            self.control = False
            self.paused = False
        if self.browser is not None:
            with contextlib.suppress(CDPError, BrowserError, TimeoutError):
                await self.browser.conn.send("Browser.setDownloadBehavior", {
                    "behavior": "deny" if granted else "default", "eventsEnabled": True})
        for sid in list(self.targets):
            await self._set_control_guards(sid, granted)
        if granted:
            await self._watch_input()
            self.paused = False
            self.control = True

    async def _set_control_guards(self, sid: str, enabled: bool) -> None:
        """While the technician controls: file choosers are intercepted (never shown)."""
        if self.browser is None:
            return
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            await self.browser.conn.send("Page.setInterceptFileChooserDialog",
                                         {"enabled": enabled}, sid)

    async def _world(self, target: Target) -> int:
        assert self.browser is not None
        if target.world is None:
            created = await self.browser.conn.send("Page.createIsolatedWorld", {
                "frameId": target.main_frame, "worldName": ISOLATED_WORLD,
                "grantUniveralAccess": False}, target.session_id)
            target.world = int(created["executionContextId"])
        return target.world

    async def evaluate_isolated(self, expression: str) -> Any:
        """Run the agent's own script in its isolated world of the shown page."""
        assert self.browser is not None
        target = self._page()
        for attempt in (0, 1):
            try:
                context = await self._world(target)
                answer = await self.browser.conn.send("Runtime.evaluate", {
                    "expression": expression, "contextId": context, "returnByValue": True},
                    target.session_id, timeout=5)
                if "exceptionDetails" in answer and attempt == 0:
                    target.world = None
                    continue
                return (answer.get("result") or {}).get("value")
            except CDPError:
                target.world = None  # the document changed: a new world
                if attempt:
                    raise
        return None

    # --- the customer's own hands (agent/cobrowse/handsoff.py) ------------------------

    async def _watch_input(self) -> None:
        """The isolated world's listener for trusted input, in the shown page's document."""
        with contextlib.suppress(CDPError, BrowserError, TimeoutError, InputRefused):
            await self.evaluate_isolated(handsoff.watch_script(self.input_binding))

    def _reported(self, sid: str | None, payload: object) -> None:
        report = handsoff.parse_report(payload)
        if report is None or not self.control or not self.pages or sid != self.pages[-1]:
            return
        now = time.monotonic()
        if self.ledger.claim(report, now):
            return  # the technician's own, dispatched by the agent
        self._paused_until = now + handsoff.QUIET_S
        if not self.paused:
            self.paused = True
            self.on_log("cobrowse.control.paused", by=report["t"])
            self.emit({"type": "control", "state": "paused"})
            self._spawn(self._resume_when_quiet())

    async def _resume_when_quiet(self) -> None:
        while self.paused and self.control:
            wait = self._paused_until - time.monotonic()
            if wait <= 0:
                self.paused = False
                self.on_log("cobrowse.control.resumed")
                self.emit({"type": "control", "state": "resumed"})
                return
            await asyncio.sleep(wait)

    def _in_control(self) -> None:
        """Checked on receipt and again right before each ``Input.dispatch*`` (a key
        waiting on the focus check must not land after a revoke or a pause)."""
        if not self.control:
            raise InputRefused("not_in_control", "the technician has no control")
        if self.paused:
            raise InputRefused("control_paused", "control is paused: the customer is using "
                               "their own mouse or keyboard (it resumes "
                               f"{handsoff.QUIET_S:g} s after they stop)")

    async def input(self, message: dict[str, Any]) -> None:
        """One technician input, checked; the caller made sure control is granted."""
        self._in_control()
        assert self.browser is not None
        kind = message.get("kind")
        target = self._page()
        if kind in ("mouse", "wheel"):
            x, y = _coord(message.get("x")), _coord(message.get("y"))
            if kind == "wheel":
                params: dict[str, Any] = {"type": "mouseWheel", "x": x, "y": y,
                                          "deltaX": _delta(message.get("dx")),
                                          "deltaY": _delta(message.get("dy"))}
            else:
                event = message.get("event")
                button = message.get("button", "left")
                clicks = message.get("clicks", 1)
                if event not in MOUSE_EVENTS or button not in BUTTONS or not (
                        isinstance(clicks, int) and not isinstance(clicks, bool)
                        and 0 <= clicks <= 3):
                    raise InputRefused("bad_input", "a mouse input that is not one")
                params = {"type": event, "x": x, "y": y,
                          "button": "none" if event == "mouseMoved" else button,
                          "clickCount": 0 if event == "mouseMoved" else clicks}
            if params["type"] in ("mousePressed", "mouseWheel"):
                self.ledger.dispatched("wheel" if kind == "wheel" else "mousedown",
                                       time.monotonic(), x=x, y=y)
            self._in_control()
            await self.browser.conn.send("Input.dispatchMouseEvent", params,
                                         target.session_id)
            return
        if kind == "key":
            event = message.get("event")
            key, code, text = (message.get("key", ""), message.get("code", ""),
                               message.get("text", ""))
            if (event not in KEY_EVENTS or not all(isinstance(v, str) and len(v) <= 32
                                                   for v in (key, code, text))
                    or any(not ch.isprintable() for ch in key + code)
                    or any(ord(ch) < 32 and ch not in "\r\n\t\b" for ch in text)):
                raise InputRefused("bad_input", "a key input that is not one")
            where = await self.evaluate_isolated(recorder.focus_check(self.privacy,
                                                                      self.policy))
            if where == "masked":
                raise InputRefused("masked_field", "no typing while focus is in a field "
                                                   "that is kept private")
            if where != "ok":
                raise InputRefused("focus_unknown", "focus is in a frame the agent cannot "
                                                    "check: no typing there")
            params = {"type": KEY_EVENTS[event], "key": key, "code": code}
            if event == "char" or (event == "keyDown" and text):
                params["text"] = text
                params["unmodifiedText"] = text
            if event == "keyDown" and len(key) > 1:
                params["windowsVirtualKeyCode"] = VIRTUAL_KEYS.get(key, 0)
            if event == "keyDown":
                self.ledger.dispatched("keydown", time.monotonic(), key=key)
            self._in_control()
            await self.browser.conn.send("Input.dispatchKeyEvent", params, target.session_id)
            return
        raise InputRefused("bad_input", "an input of no known kind")

    async def pointer(self, x: object, y: object) -> None:
        await self.evaluate_isolated(recorder.pointer_script(_coord(x), _coord(y)))

    # --- screencast ------------------------------------------------------------------

    async def screencast(self, on: bool) -> None:
        self.screencast_on = on
        for sid in list(self.pages):
            await self._screencast_target(sid, on)

    async def _screencast_target(self, sid: str, on: bool) -> None:
        assert self.browser is not None
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            if on:
                await self.browser.conn.send("Page.startScreencast", {
                    "format": "jpeg", "quality": 60, "maxWidth": 1280, "maxHeight": 720},
                    sid)
            else:
                await self.browser.conn.send("Page.stopScreencast", {}, sid)

    async def _frame(self, sid: str | None, params: dict[str, Any]) -> None:
        """A screencast frame, acknowledged only once queued for the relay (Chromium
        sends the next after the ack: the video goes at the pace the relay reads); one
        dropped is acknowledged late, so the stream slows down without stopping."""
        assert self.browser is not None
        data = params.get("data")
        meta = params.get("metadata") or {}
        queued = False
        shown = self.targets.get(sid or "")
        # A private page's pixels never leave the machine: its frames are dropped.
        if (self.screencast_on and isinstance(data, str) and len(data) <= SCREENCAST_MAX_B64
                and self.pages and sid == self.pages[-1]
                and shown is not None and not self.private(shown)):
            queued = self.emit({"type": "frame", "b64": data,
                                "w": int(_coord(meta.get("deviceWidth", 0))),
                                "h": int(_coord(meta.get("deviceHeight", 0)))}) is not False
        if not queued:
            await asyncio.sleep(FRAME_BACKOFF_S)
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            await self.browser.conn.send("Page.screencastFrameAck",
                                         {"sessionId": params.get("sessionId")}, sid)


def blank_snapshot() -> dict[str, Any]:
    """An rrweb full snapshot of an empty document: what a viewer shows for a private
    page (its own nodes never leave the machine)."""
    return {"type": ev.FULL_SNAPSHOT, "timestamp": int(time.time() * 1000),
            "data": {"node": {"type": 0, "id": 1, "childNodes": []},
                     "initialOffset": {"left": 0, "top": 0}}}


VIRTUAL_KEYS = {"Enter": 13, "Backspace": 8, "Tab": 9, "Escape": 27, "ArrowLeft": 37,
                "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Delete": 46,
                "Home": 36, "End": 35, "PageUp": 33, "PageDown": 34, "Shift": 16,
                "Control": 17, "Alt": 18, "Meta": 91}


def _coord(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
            value) or not (-MAX_COORD <= value <= MAX_COORD):
        raise InputRefused("bad_input", "a coordinate that is not a finite number in range")
    return float(value)


def _delta(value: object) -> float:
    if value is None:
        return 0.0
    return _coord(value)
