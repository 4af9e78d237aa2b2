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
from urllib.parse import urlsplit

from backline.agent.cobrowse import events as ev
from backline.agent.cobrowse import frames, handsoff, recorder
from backline.agent.cobrowse.browser import Browser, BrowserError, CDPError, find_browser
from backline.agent.cobrowse.cdp import Event
from backline.agent.policy import BROWSER_ERROR_PAGES, CobrowsePolicy

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
#: Frames that record themselves, at most, in one co-browse (one gate each: a page of
#: many cross-origin frames gets no more than this many allowances).
MAX_FRAMES = 32
#: Lookups of a frame's <iframe> that found nothing (not serialized yet) after which
#: what the frame sent is no longer held (a fresh snapshot is asked once it is found).
#: The lookups go on, with a doubling wait from FRAME_RETRY_S up to FRAME_RETRY_CAP_S:
#: stopping there left a frame out of the view for good when its <iframe> reached the
#: parent's view late (a big page) and no new parent snapshot came.
MAX_LOOKUPS = 6
FRAME_RETRY_S = 0.25
FRAME_RETRY_CAP_S = 10.0
#: A frame is asked for a fresh full snapshot at most this often.
FRAME_ASK_S = 1.0
#: Run in the agent's isolated world on a frame's <iframe> element (the page cannot patch
#: what this world's DOM methods are): is it, or anything around it up to the top (through
#: shadow hosts, and <iframe>s of the same origin), blocked?
BLOCKED_CHECK = """function (selector) {
  let n = this;
  for (let i = 0; i < 256 && n; i += 1) {
    if (n.nodeType === 1 && n.closest(selector)) return true;
    const root = n.getRootNode();
    if (root && root.host) { n = root.host; continue; }
    let outer = null;
    try { outer = root && root.defaultView ? root.defaultView.frameElement : null; }
    catch (e) { outer = null; }
    n = outer;
  }
  return false;
}"""
#: Run in the main world of the document holding a frame's <iframe>: the id of that
#: element in the rrweb that records the document (inject.js). ``window`` is unforgeable.
OWNER_ID = """function (name) {
  const f = window[name];
  return typeof f === "function" ? f(this) : "none";
}"""


class InputRefused(Exception):
    """An input the agent will not pass on: ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class FrameInfo:
    parent: str | None = None
    url: str = ""


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
    #: The full snapshots of this page's top (the epoch its nodes' ids belong to), and
    #: the last one's timestamp.
    snapshots: int = 0
    snapshot_ts: float = 0.0
    #: The session that attached this target, and for an out-of-process frame the frame
    #: that holds its <iframe> (in that session's target).
    parent_sid: str | None = None
    parent_frame: str = ""
    #: The target's frames (its main frame and the in-process ones under it).
    frames: dict[str, FrameInfo] = field(default_factory=dict)
    #: Main-world execution contexts: id to frame, and each frame's origin.
    contexts: dict[int, str] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    #: The agent's isolated world in each frame (for the blocked check).
    isolated: dict[str, int] = field(default_factory=dict)


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
        #: Frames that record themselves (another origin than their parent's), by
        #: (session, frame): agent/cobrowse/frames.py.
        self.frames: dict[tuple[str, str], frames.Frame] = {}
        self.bases = frames.Bases()
        self._lookups_made = 0
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
            self._spawn(self._attached(params, event.session_id))
        elif method == "Target.detachedFromTarget":
            sid = params.get("sessionId")
            gone = self.targets.get(sid or "")
            for key in [k for k in self.frames if k[0] == sid]:
                if gone is not None and gone.type == "iframe":
                    # An out-of-process frame leaves (a cross-site navigation, maybe to
                    # a private address whose recorder sends nothing): what it showed
                    # leaves the view with it.
                    with contextlib.suppress(Exception):
                        self._blank(self.frames[key])
                del self.frames[key]
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
                self._binding(event.session_id, params.get("payload"),
                              params.get("executionContextId"))
            elif params.get("name") == self.input_binding:
                self._reported(event.session_id, params.get("payload"))
        elif method.startswith("Runtime.executionContext"):
            self._contexts(event.session_id, method, params)
        elif method in ("Page.frameAttached", "Page.frameDetached"):
            self._frame_tree(event.session_id, method, params)
        elif method == "Page.frameNavigated":
            frame = params.get("frame") or {}
            target = self.targets.get(event.session_id or "")
            fid = str(frame.get("id", ""))
            if target and (not frame.get("parentId") or fid == target.main_frame):
                target.main_frame = fid
                target.url = str(frame.get("url", ""))[:4096]
                target.world = None
                target.snapshot_seen = False
                if self.pages and self.pages[-1] == target.session_id:
                    self._say_nav(target)
                    if self.control:
                        self._spawn(self._watch_input())
            if target:
                self._frame_moved(target, fid, str(frame.get("url", ""))[:4096],
                                  frame.get("parentId"), new_document=True)
        elif method == "Page.navigatedWithinDocument":
            self._within_document(event.session_id, params)
            target = self.targets.get(event.session_id or "")
            if target:
                fid = str(params.get("frameId", ""))
                self._frame_moved(target, fid, str(params.get("url", ""))[:4096],
                                  (target.frames.get(fid) or FrameInfo()).parent,
                                  new_document=False)
        elif method == "Page.loadEventFired":
            self._spawn(self._snapshot_if_missing(event.session_id))
        elif method == "Fetch.requestPaused":
            self._spawn(self._paused(event.session_id, params))
        elif method == "Page.screencastFrame":
            self._spawn(self._frame(event.session_id, params))
        elif method == "Target.targetCrashed":
            self._crashed(str(params.get("targetId", "")))
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

    async def _attached(self, params: dict[str, Any], parent_sid: str | None = None) -> None:
        assert self.browser is not None
        conn = self.browser.conn
        sid = params.get("sessionId")
        info = params.get("targetInfo") or {}
        kind = info.get("type")
        if not isinstance(sid, str):
            return
        try:
            if kind in ("page", "iframe"):
                # A page's or an out-of-process frame's target id is its main frame's id.
                target = Target(sid, kind, str(info.get("targetId", "")),
                                str(info.get("url", ""))[:4096],
                                main_frame=str(info.get("targetId", "")),
                                parent_sid=parent_sid,
                                parent_frame=str(info.get("parentFrameId", "")))
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
                tree = (await conn.send("Page.getFrameTree", {}, sid)).get("frameTree") or {}
                root = tree.get("frame") or {}
                target.main_frame = str(root.get("id", target.main_frame))
                if kind == "iframe" and not target.parent_frame:
                    target.parent_frame = str(root.get("parentId", ""))
                self._frames_of(target, tree, None)
                if kind == "page":
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
                shown = recorder.shown_address(url, self.policy.hidden_urls)
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
        return recorder.url_matches(target.url, self.policy.hidden_urls)

    def _say_nav(self, target: Target) -> None:
        """The shown page's address, cut (recorder.shown_address); on a private page the
        view is blanked at once with a full snapshot of an empty document (what was shown
        before stays on no console), and no event of the page is sent until it leaves."""
        self._flush()
        self.emit({"type": "nav", **recorder.shown_address(target.url,
                                                           self.policy.hidden_urls)})
        if recorder.url_matches(target.url, BROWSER_ERROR_PAGES):
            self.emit({"type": "error", "error": "page_failed",
                       "detail": "the customer's browser could not load the page and shows "
                                 "its error page (not shown here: it prints the address)"})
        if self.private(target):
            for line in self.batcher.add(json.dumps(blank_snapshot())):
                self._send_line(line)
            self._flush()

    def _crashed(self, target_id: str) -> None:
        """The shown page's renderer died (out of memory, a crash): the view would stay
        frozen on its last state with nothing to say why. It is blanked and everyone is
        told; a reload by the customer, or an address the technician proposes, brings a
        new document and with it a fresh snapshot (``Page.frameNavigated``)."""
        target = next((t for t in self.targets.values() if t.target_id == target_id), None)
        if target is None or target.type != "page" or not self.pages or (
                self.pages[-1] != target.session_id):
            return
        target.snapshot_seen = False
        self.on_log("cobrowse.page_crashed", detail="the shown page's renderer crashed")
        self._flush()
        self.emit({"type": "error", "error": "page_crashed",
                   "detail": "the customer's page crashed; a reload shows it again"})
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

    def _binding(self, sid: str | None, payload: object, context: object = None) -> None:
        source = self.targets.get(sid or "")
        if source is None:
            return
        # Which document called: a page's top, or a frame that records itself (another
        # origin than its parent's: agent/cobrowse/frames.py). Anything else is noise.
        frame = (source.main_frame if context is None
                 else source.contexts.get(context) if isinstance(context, int) else None)
        if frame is None:
            source.gate.malformed += 1
            return
        if source.type != "page" or frame != source.main_frame:
            self._frame_binding(source, frame, payload)
            return
        target = self._shown(sid)
        if target is None:
            source.gate.malformed += 1
            return
        if self.private(target):
            return
        accepted = source.gate.accept(payload)
        snapshot = False
        owners = self._owners_in((source.session_id, source.main_frame)) if accepted else set()
        for event, text in accepted:
            checked = frames.check_top(event, owners)
            if checked is None:
                source.gate.malformed += 1  # an id of a frame's range, or a forged one
                continue
            if checked:
                text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            if event["type"] == META and isinstance(event.get("data"), dict) and (
                    "href" in event["data"]):
                # rrweb's meta event carries the address: cut like a nav line (the page's
                # recorder cuts it too, but the page can call the binding itself). A
                # recorder started at <html> of a popup's first document can see no
                # address yet (""): the one the agent tracks for the page is said.
                href = str(event["data"]["href"])
                if not urlsplit(href).scheme:
                    href = target.url
                event["data"]["href"] = str(recorder.shown_address(
                    href, self.policy.hidden_urls)["url"])
                text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
            if event["type"] == ev.FULL_SNAPSHOT:
                source.snapshot_seen = True
                source.snapshots += 1
                source.snapshot_ts = float(event["timestamp"])
                snapshot = True
            if event["type"] == ev.FULL_SNAPSHOT and self.stats["first_snapshot_ms"] is None:
                self.stats["first_snapshot_ms"] = round(
                    (time.monotonic() - self._started) * 1000, 1)
            self.stats["events"] += 1
            for line in self.batcher.add(text):
                self._send_line(line)
        self._flush_soon()
        self._say_drops(source)
        if snapshot:
            # The view was rebuilt: every frame under this page attaches again.
            self._children_stale((source.session_id, source.main_frame))

    def _owners_in(self, parent: tuple[str, str]) -> set[int]:
        """The ids of the <iframe>s in ``parent``'s stream under which a frame that
        records itself is attached (or will be): nothing else may add to them."""
        return {rec.owner for rec in self.frames.values()
                if rec.owner is not None and self._parent_of(rec) == parent}

    def _flush_soon(self) -> None:
        if len(self.batcher) and self._flush_at is None:
            # Leading edge: what this read of the pipe brought leaves together, at once
            # after a quiet spell, else when AGENT_FLUSH_MS has passed since the last.
            wait = max(0.0, self._flushed + AGENT_FLUSH_MS / 1000 - time.monotonic())
            self._flush_at = asyncio.get_running_loop().call_later(wait, self._flush)

    def _send_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.stats["events"] += 1
            for line in self.batcher.add(json.dumps(event, ensure_ascii=False,
                                                    separators=(",", ":"))):
                self._send_line(line)
        self._flush_soon()

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

    def _say_drops(self, target: Target | frames.Frame) -> None:
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
        """After drops, a fresh full snapshot once the page's allowance has refilled; the
        frames of the shown page that wait for their <iframe>'s id or a fresh snapshot."""
        while True:
            await asyncio.sleep(0.1)
            for sid in list(self.pages[-1:]):
                target = self.targets.get(sid)
                if target and target.gate.needs_snapshot and target.gate.recovered():
                    target.gate.needs_snapshot = False
                    await self._snapshot(sid)
                if target:
                    self._frames_due(target)

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

    # --- frames of another origin (agent/cobrowse/frames.py) --------------------------

    def _contexts(self, sid: str | None, method: str, params: dict[str, Any]) -> None:
        """Which document each main-world execution context is (a binding call names
        its context), each frame's origin, and the agent's isolated world per frame."""
        target = self.targets.get(sid or "")
        if target is None:
            return
        if method == "Runtime.executionContextCreated":
            ctx = params.get("context") or {}
            aux = ctx.get("auxData") or {}
            cid, fid = ctx.get("id"), aux.get("frameId")
            if not isinstance(cid, int) or not isinstance(fid, str):
                return
            if aux.get("isDefault"):
                target.contexts[cid] = fid
                target.origins[fid] = str(ctx.get("origin", ""))
                if (target.session_id, fid) in self.frames and not self._records_itself(
                        target, fid):
                    # Its new document is of its parent's origin: the parent records it.
                    del self.frames[(target.session_id, fid)]
            elif ctx.get("name") == ISOLATED_WORLD:
                target.isolated[fid] = cid
        elif method == "Runtime.executionContextDestroyed":
            cid = params.get("executionContextId")
            if isinstance(cid, int):
                target.contexts.pop(cid, None)
                for fid, world in list(target.isolated.items()):
                    if world == cid:
                        del target.isolated[fid]
        elif method == "Runtime.executionContextsCleared":
            target.contexts.clear()
            target.isolated.clear()

    def _frame_tree(self, sid: str | None, method: str, params: dict[str, Any]) -> None:
        target = self.targets.get(sid or "")
        fid = params.get("frameId")
        if target is None or not isinstance(fid, str):
            return
        if method == "Page.frameAttached":
            parent = params.get("parentFrameId")
            target.frames.setdefault(fid, FrameInfo()).parent = (
                parent if isinstance(parent, str) else None)
        elif fid != target.main_frame:  # detached (or moved out of this process)
            target.frames.pop(fid, None)
            target.origins.pop(fid, None)
            target.isolated.pop(fid, None)
            self.frames.pop((target.session_id, fid), None)

    def _frames_of(self, target: Target, tree: dict[str, Any], parent: str | None) -> None:
        stack: list[tuple[dict[str, Any], str | None]] = [(tree, parent)]
        for _ in range(1000):
            if not stack:
                break
            node, up = stack.pop()
            frame = node.get("frame") or {}
            fid = frame.get("id")
            if not isinstance(fid, str):
                continue
            target.frames[fid] = FrameInfo(up, str(frame.get("url", ""))[:4096])
            stack.extend((child, fid) for child in node.get("childFrames") or [])

    def _frame_moved(self, target: Target, fid: str, url: str, parent: object,
                     new_document: bool) -> None:
        """A frame's address changed. A frame that records itself and reaches a private
        address is blanked in the view (its recorder then sends nothing, and the agent
        drops anything it does); leaving one within its document asks for a snapshot."""
        key = (target.session_id, fid)
        before = self._chain_private(target, fid) if key in self.frames else False
        info = target.frames.setdefault(fid, FrameInfo())
        if fid != target.main_frame and isinstance(parent, str):
            info.parent = parent
        info.url = url
        rec = self.frames.get(key)
        if rec is None:
            return
        after = self._chain_private(target, fid)
        if after and (new_document or not before):
            self._blank(rec)
        elif new_document:
            rec.new_document()  # its new document's recorder sends a snapshot itself
        elif before and not after:
            rec.stale = True

    def _chain_private(self, target: Target, fid: str) -> bool:
        """Is the frame, or any frame above it up to its page's top, on a private
        address (by the addresses the agent tracks)? Unknown ground is private. With no
        ``private_urls``, only the browser's error pages are, and unknown ground is not
        (an ordinary frame whose parent is not known yet stays shown)."""
        if not self.policy.private_urls:
            return self._chain_matches(target, fid, BROWSER_ERROR_PAGES, unknown=False)
        return self._chain_matches(target, fid, self.policy.hidden_urls, unknown=True)

    def _chain_matches(self, target: Target, fid: str, patterns: tuple[str, ...],
                       unknown: bool) -> bool:
        """Does the frame's address, or one above it up to its page's top, match
        ``patterns``? ``unknown``: the answer where the chain cannot be followed."""
        t, f = target, fid
        for _ in range(64):
            info = t.frames.get(f)
            url = info.url if info else (t.url if f == t.main_frame else "")
            if url and recorder.url_matches(url, patterns):
                return True
            if f == t.main_frame:
                if t.type == "page":
                    return False
                up = self.targets.get(t.parent_sid or "")
                if up is None or not t.parent_frame:
                    return unknown
                t, f = up, t.parent_frame
            elif info is None or info.parent is None:
                return unknown
            else:
                f = info.parent
        return unknown

    def _page_of(self, target: Target) -> Target | None:
        t: Target | None = target
        for _ in range(64):
            if t is None or t.type == "page":
                return t
            t = self.targets.get(t.parent_sid or "")
        return None

    def _records_itself(self, target: Target, fid: str) -> bool:
        """A frame records itself when it is of another origin than its parent (inject.js
        decides the same by whether it can read its parent's document): an
        out-of-process frame always is; an in-process one by its main world's origin."""
        if fid == target.main_frame:
            return target.type == "iframe"
        info = target.frames.get(fid)
        if info is None or info.parent is None:
            return False
        mine, theirs = target.origins.get(fid), target.origins.get(info.parent)
        return bool(mine) and bool(theirs) and mine != theirs

    def _parent_of(self, rec: frames.Frame) -> tuple[str, str] | None:
        """The recorder whose rrweb serializes the frame's <iframe>: the nearest document
        above it that records (a page's top, or a frame that records itself)."""
        t = self.targets.get(rec.session_id)
        if t is None:
            return None
        if rec.frame_id == t.main_frame:
            f: str | None = t.parent_frame
            t = self.targets.get(t.parent_sid or "")
        else:
            f = (t.frames.get(rec.frame_id) or FrameInfo()).parent
        for _ in range(64):
            if t is None or not f:
                return None
            if (t.type == "page" and f == t.main_frame) or self._records_itself(t, f):
                return (t.session_id, f)
            f = (t.frames.get(f) or FrameInfo()).parent
        return None

    def _epoch(self, key: tuple[str, str] | None) -> object:
        """What the ids of a recorder's nodes in the view belong to (None: none there)."""
        if key is None:
            return None
        t = self.targets.get(key[0])
        if t is None:
            return None
        if t.type == "page" and key[1] == t.main_frame:
            return ("top", t.snapshots) if t.snapshot_seen else None
        rec = self.frames.get(key)
        return ("frame", rec.epoch) if rec is not None and rec.attached else None

    def _floor(self, key: tuple[str, str] | None) -> float:
        t = self.targets.get(key[0]) if key else None
        if t is not None and key is not None and t.type == "page" and key[1] == t.main_frame:
            return t.snapshot_ts
        rec = self.frames.get(key) if key else None
        return rec.floor if rec is not None else 0.0

    def _owner_valid(self, rec: frames.Frame) -> bool:
        return (rec.owner is not None and rec.owner_epoch is not None
                and self._epoch(self._parent_of(rec)) == rec.owner_epoch)

    def _frame_shown(self, source: Target, fid: str) -> bool:
        page = self._page_of(source)
        return (page is not None and bool(self.pages) and self.pages[-1] == page.session_id
                and not self.private(page) and not self._chain_private(source, fid))

    def _frame_binding(self, source: Target, fid: str, payload: object) -> None:
        """Events of a frame that records itself: the same gate as a page's, then moved
        into the frame's own id range and attached under its <iframe> (frames.py)."""
        key = (source.session_id, fid)
        rec = self.frames.get(key)
        if not self._records_itself(source, fid):
            # A document that must not send (a same-origin frame: its parent's rrweb
            # records it), or a frame that went back to its parent's origin.
            self.frames.pop(key, None)
            source.gate.malformed += 1
            return
        if rec is None:
            if len(self.frames) >= MAX_FRAMES:
                source.gate.malformed += 1
                return
            rec = self.frames[key] = frames.Frame(*key)
        if not self._frame_shown(source, fid):
            return
        out: list[dict[str, Any]] = []
        for event, text in rec.gate.accept(payload):
            if event["type"] == ev.FULL_SNAPSHOT:
                if not self._frame_snapshot_in(rec, event, len(text)):
                    continue
                self._children_stale(key)
                if self._owner_valid(rec):
                    assert rec.owner is not None
                    out.extend(rec.release(rec.owner, self._floor(self._parent_of(rec))))
                else:
                    rec.owner = None
                    self._spawn(self._lookup(rec))
            else:
                moved = rec.add(event, len(text))
                if moved is not None:
                    out.append(moved)
        if out:
            self._send_events(out)
        self._cap_held()
        self._say_drops(rec)

    def _cap_held(self) -> None:
        """What all frames hold back stays under frames.MAX_HELD_BYTES (each snapshot
        may be 15 MiB by itself): over it, the frame that has held longest lets go and
        is asked for a fresh snapshot once its <iframe> is found."""
        held = [r for r in self.frames.values() if r.held]
        total = sum(r.held_bytes for r in held)
        for rec in sorted(held, key=lambda r: float(r.held[0]["timestamp"])):
            if total <= frames.MAX_HELD_BYTES:
                break
            total -= rec.held_bytes
            rec.forget()
            rec.stale = True

    def _frame_snapshot_in(self, rec: frames.Frame, event: dict[str, Any], size: int
                           ) -> bool:
        """A frame's full snapshot taken in: within its allowance, in its document's
        range (a new range only for a new document, and only once the snapshot is
        found valid: a flood of snapshots, or of malformed ones, uses up none)."""
        if not rec.allow_snapshot():
            return False
        fresh = rec.base is None
        base = self.bases.peek() if fresh else rec.base
        if base is None or not rec.snapshot(event, base, size):
            rec.gate.malformed += 1
            return False
        if fresh:
            self.bases.take()
        return True

    def _children_stale(self, key: tuple[str, str]) -> None:
        """A recorder took a full snapshot (its nodes have new ids, the view rebuilt
        them): the frames under it look their <iframe> up again and, when what they
        sent is gone from the view, send a fresh snapshot."""
        for rec in list(self.frames.values()):
            if self._parent_of(rec) != key:
                continue
            rec.owner = None
            rec.lookups, rec.retry_at, rec.blocked = 0, 0.0, False
            if rec.attached or not rec.held:
                rec.forget()
                rec.stale = True
                rec.asked_at = -1e9
            self._spawn(self._lookup(rec))

    async def _lookup(self, rec: frames.Frame) -> None:
        """Find the frame's <iframe> id in its parent's rrweb; then what it held goes out."""
        if rec.looking:
            rec.again = True
            return
        rec.looking = True
        try:
            for _ in range(4):
                rec.again = False
                parent = self._parent_of(rec)
                epoch = self._epoch(parent)
                if parent is None or epoch is None:
                    return  # the parent's document is not in the view yet: it comes first
                found = await self._owner_in_parent(rec, parent)
                if self.frames.get((rec.session_id, rec.frame_id)) is not rec:
                    return
                if rec.again or self._epoch(parent) != epoch:
                    continue
                if found is None:
                    rec.owner = None
                    if rec.blocked:  # final until the parent is snapshotted again
                        rec.retry_at = float("inf")
                        return
                    rec.lookups += 1
                    if rec.lookups == MAX_LOOKUPS:
                        rec.forget()  # nothing to attach it to: held no longer
                        rec.stale = True
                    rec.retry_at = time.monotonic() + min(
                        FRAME_RETRY_CAP_S, FRAME_RETRY_S * 2 ** min(rec.lookups, 16))
                    return
                rec.owner, rec.owner_epoch = found, epoch
                self._release(rec)
                return
        finally:
            rec.looking = False

    def _release(self, rec: frames.Frame) -> None:
        assert rec.owner is not None
        source = self.targets.get(rec.session_id)
        if source is None or not self._frame_shown(source, rec.frame_id):
            return
        if not rec.held:
            rec.stale = True
            self._ask_frame(rec)
            return
        self._send_events(rec.release(rec.owner, self._floor(self._parent_of(rec))))
        key = (rec.session_id, rec.frame_id)
        for child in list(self.frames.values()):  # frames inside it can attach now
            if child is not rec and child.owner is None and self._parent_of(child) == key:
                self._spawn(self._lookup(child))

    def _blank(self, rec: frames.Frame) -> None:
        """The frame's view emptied: an empty document attached under its <iframe>."""
        shown = self.targets.get(rec.session_id)
        owner, valid = rec.owner, self._owner_valid(rec)
        rec.new_document()
        self._children_stale((rec.session_id, rec.frame_id))
        if owner is None or not valid or shown is None:
            return
        page = self._page_of(shown)
        if page is None or not self.pages or self.pages[-1] != page.session_id:
            return
        attach, _root = frames.blank(self.bases.blank(), int(time.time() * 1000))
        self._send_events([frames.owned(attach, owner, self._floor(self._parent_of(rec)))])

    def _frames_due(self, page: Target) -> None:
        """The shown page's frames: a fresh snapshot after drops or when what they sent
        is gone from the view; another lookup of an <iframe> not serialized yet."""
        now = time.monotonic()
        for rec in list(self.frames.values()):
            source = self.targets.get(rec.session_id)
            if source is None or self._page_of(source) is not page:
                continue
            if rec.gate.needs_snapshot and rec.gate.recovered(now):
                rec.gate.needs_snapshot = False
                rec.stale = True
            if self._owner_valid(rec):
                if rec.stale and self._frame_shown(source, rec.frame_id):
                    self._ask_frame(rec)
            elif not rec.looking and now >= rec.retry_at:
                self._spawn(self._lookup(rec))

    def _ask_frame(self, rec: frames.Frame) -> None:
        now = time.monotonic()
        if now - rec.asked_at >= FRAME_ASK_S:
            rec.asked_at = now
            self._spawn(self._frame_snapshot(rec))

    async def _frame_snapshot(self, rec: frames.Frame) -> None:
        """Ask a frame's own recorder for a fresh full snapshot (in its own main world)."""
        source = self.targets.get(rec.session_id)
        if source is None or self.browser is None:
            return
        name = self.binding + "_snapshot"
        params: dict[str, Any] = {"expression": f"globalThis[{name!r}] && "
                                                f"globalThis[{name!r}]()"}
        if rec.frame_id != source.main_frame:
            context = self._main_context(source, rec.frame_id)
            if context is None:
                return
            params["contextId"] = context
        with contextlib.suppress(CDPError, BrowserError, TimeoutError):
            await self.browser.conn.send("Runtime.evaluate", params, source.session_id,
                                         timeout=5)

    @staticmethod
    def _main_context(target: Target, fid: str) -> int | None:
        found = None
        for context, frame in target.contexts.items():
            if frame == fid:
                found = context
        return found

    async def _isolated_world(self, target: Target, fid: str) -> int:
        assert self.browser is not None
        world = target.isolated.get(fid)
        if world is None:
            made = await self.browser.conn.send("Page.createIsolatedWorld", {
                "frameId": fid, "worldName": ISOLATED_WORLD, "grantUniveralAccess": False},
                target.session_id, timeout=5)
            world = int(made["executionContextId"])
            target.isolated[fid] = world
        return world

    async def _owner_in_parent(self, rec: frames.Frame, parent: tuple[str, str]) -> int | None:
        """The id, in the merged stream, of the frame's <iframe>: found by the DevTools
        protocol (``DOM.getFrameOwner`` in the target that holds it), checked not blocked
        in the agent's isolated world, its rrweb id read from the parent's recorder
        (inject.js, which says "none" too when it is blocked or not serialized yet).
        None when there is none to attach to."""
        if self.browser is None:
            return None
        conn = self.browser.conn
        source = self.targets.get(rec.session_id)
        if source is None:
            return None
        if rec.frame_id == source.main_frame:  # out of process: held by the parent target
            holder, doc_frame = self.targets.get(source.parent_sid or ""), source.parent_frame
        else:
            holder = source
            doc_frame = (source.frames.get(rec.frame_id) or FrameInfo()).parent or ""
        if holder is None or not doc_frame:
            return None
        sid = holder.session_id
        # One group per lookup: lookups of several frames run at once on one session,
        # and releasing a shared group would free another lookup's objects.
        self._lookups_made += 1
        group = f"backline-frames-{self._lookups_made}"
        try:
            owner = await conn.send("DOM.getFrameOwner", {"frameId": rec.frame_id}, sid,
                                    timeout=5)
            node = owner.get("backendNodeId")
            if not isinstance(node, int):
                return None
            world = await self._isolated_world(holder, doc_frame)
            element = await conn.send("DOM.resolveNode", {
                "backendNodeId": node, "executionContextId": world, "objectGroup": group},
                sid, timeout=5)
            check = await conn.send("Runtime.callFunctionOn", {
                "objectId": element["object"]["objectId"], "functionDeclaration": BLOCKED_CHECK,
                "arguments": [{"value": self.privacy.block_selector + ", .rr-block"}],
                "returnByValue": True}, sid, timeout=5)
            if (check.get("result") or {}).get("value") is not False:
                rec.forget()  # what it held has nowhere to go
                rec.blocked = True  # until the parent's next snapshot (_children_stale)
                return None  # blocked (or the check failed): nothing is attached to it
            main: dict[str, Any] = {"backendNodeId": node, "objectGroup": group}
            context = self._main_context(holder, doc_frame)
            if context is not None:
                main["executionContextId"] = context
            element = await conn.send("DOM.resolveNode", main, sid, timeout=5)
            answer = await conn.send("Runtime.callFunctionOn", {
                "objectId": element["object"]["objectId"], "functionDeclaration": OWNER_ID,
                "arguments": [{"value": self.binding + "_id"}], "returnByValue": True},
                sid, timeout=5)
        except (CDPError, BrowserError, TimeoutError, KeyError, TypeError, ValueError):
            holder.isolated.pop(doc_frame, None)
            return None
        finally:
            with contextlib.suppress(CDPError, BrowserError, TimeoutError):
                await conn.send("Runtime.releaseObjectGroup", {"objectGroup": group}, sid,
                                timeout=5)
        value = (answer.get("result") or {}).get("value")
        if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(
                value) > 16:
            return None
        found = int(value)
        t = self.targets.get(parent[0])
        if t is not None and t.type == "page" and parent[1] == t.main_frame:
            return found if 0 < found < frames.FIRST_BASE else None
        above = self.frames.get(parent)
        if above is None or above.base is None or not 0 < found < frames.SPAN:
            return None
        return above.base + found

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
