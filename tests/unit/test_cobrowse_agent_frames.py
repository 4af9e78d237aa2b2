"""Frames of another origin, merged into their page's stream by the agent (issue 13).

A frame that cannot read its parent's document records itself, sends through its own
target's binding (out of process) or its own execution context (in process), and the
agent moves its ids into a range of their own and attaches its snapshot under its
``<iframe>`` (agent/cobrowse/frames.py). First the pure transform, hostile inputs
included; then real Chromium on loopback: the frame's text attached under the right
``<iframe>``, its changes moved, a parent snapshot re-attaching it, a frame that loads
before its parent, in-process and nested frames, and what must never happen: anything
attached to a blocked ``<iframe>`` or sent of a private frame, a ``postMessage`` of
rrweb events, or the frame's content passing through the embedding page's JSON.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backline.agent.cobrowse import frames
from backline.agent.cobrowse.cdp import Event
from backline.agent.cobrowse.events import Bucket
from tests.unit.test_cobrowse_agent import (  # noqa: F401 (fixtures)
    CHROMIUM,
    YES,
    ScriptedAsker,
    _capture_ctx,
    kit_for,
    open_cobrowse,
    page_eval,
    server_ctx,
    site,
)
from tests.unit.test_wstunnel import run_async

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium on the machine")
CHILD_TEXT = "STATIC-CROSS-FRAME-TEXT"
SLOW_S = 1.5
#: Where a page is cut in two, the rest sent LATER_S after the first part: the frame's
#: recorder (started at <html>) snapshots what was parsed so far, and the rest reaches
#: the view as mutations (what a loaded machine's parser, yielding, did by itself).
LATER = "<!--later-->"
LATER_S = 0.5
BASE = frames.FIRST_BASE


# --- the pure transform ------------------------------------------------------------

def snapshot(ts: float = 10.0) -> dict[str, Any]:
    return {"type": 2, "timestamp": ts, "data": {"node": {
        "type": 0, "id": 1, "childNodes": [
            {"type": 2, "id": 2, "tagName": "html", "attributes": {}, "childNodes": [
                {"type": 2, "id": 3, "tagName": "body", "attributes": {}, "childNodes": [
                    {"type": 3, "id": 4, "textContent": "hello"}]}]}]},
        "initialOffset": {"left": 0, "top": 0}}}


def ids_of(node: dict[str, Any]) -> list[int]:
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n["id"])
        stack.extend(n.get("childNodes", []))
    return out


def test_a_frame_snapshot_becomes_an_attach_mutation_in_its_own_range() -> None:
    event = snapshot()
    attach, root = frames.attach(event, BASE)
    assert root == BASE + 1
    data = attach["data"]
    assert attach["type"] == 3 and data["source"] == 0 and data["isAttachIframe"] is True
    assert (data["removes"], data["texts"], data["attributes"]) == ([], [], [])
    add = data["adds"][0]
    assert add["parentId"] is None and add["nextId"] is None
    assert sorted(ids_of(add["node"])) == [BASE + 1, BASE + 2, BASE + 3, BASE + 4]
    # rootId on every node but the document (rrweb's patchRootIdOnNode).
    html = add["node"]["childNodes"][0]
    assert "rootId" not in add["node"] and html["rootId"] == root
    assert html["childNodes"][0]["childNodes"][0]["rootId"] == root
    owned = frames.owned(attach, 77, floor=50.0)
    assert owned["data"]["adds"][0]["parentId"] == 77 and owned["timestamp"] == 50.0
    assert attach["data"]["adds"][0]["parentId"] is None


def test_every_id_of_an_incremental_event_moves() -> None:
    r = BASE + 1

    def moved(source: int, **data: Any) -> dict[str, Any] | None:
        return frames.transform({"type": 3, "timestamp": 1, "data": {"source": source,
                                                                     **data}}, BASE, r)

    m = moved(0, adds=[{"parentId": 3, "nextId": None, "previousId": 4,
                        "node": {"type": 3, "id": 9, "textContent": "x"}}],
              removes=[{"parentId": 3, "id": 4}], texts=[{"id": 5, "value": "y"}],
              attributes=[{"id": 6, "attributes": {"class": "a"}}])
    assert m is not None
    d = m["data"]
    assert d["adds"] == [{"parentId": BASE + 3, "nextId": None, "previousId": BASE + 4,
                          "node": {"type": 3, "id": BASE + 9, "textContent": "x",
                                   "rootId": r}}]
    assert d["removes"] == [{"parentId": BASE + 3, "id": BASE + 4}]
    assert d["texts"][0]["id"] == BASE + 5 and d["attributes"][0]["id"] == BASE + 6
    assert moved(1, positions=[{"x": 1, "y": 2, "id": 7, "timeOffset": 0}])["data"][
        "positions"][0]["id"] == BASE + 7  # type: ignore[index]
    for source in (2, 3, 5, 7):
        assert moved(source, id=8)["data"]["id"] == BASE + 8  # type: ignore[index]
    rule = moved(8, id=8, styleId=2, adds=[])
    assert rule and (rule["data"]["id"], rule["data"]["styleId"]) == (BASE + 8, BASE + 2)
    sel = moved(14, ranges=[{"start": 3, "startOffset": 0, "end": 4, "endOffset": 1}])
    assert sel and (sel["data"]["ranges"][0]["start"], sel["data"]["ranges"][0]["end"]) == (
        BASE + 3, BASE + 4)
    adopted = moved(15, id=1, styleIds=[1, 2], styles=[{"styleId": 2, "rules": []}])
    assert adopted and adopted["data"]["styleIds"] == [BASE + 1, BASE + 2]
    assert adopted["data"]["styles"][0]["styleId"] == BASE + 2
    # Dropped as rrweb drops them (viewport), and what the merge does not carry.
    assert moved(4, width=1, height=2) is None
    assert moved(10, family="x") is None and moved(99, id=1) is None
    for kind in (0, 1, 4, 5, 6):
        assert frames.transform({"type": kind, "timestamp": 1, "data": {}}, BASE, r) is None


@pytest.mark.parametrize("bad", [frames.SPAN, 2**53, 1.5, "3", True, [1], {"a": 1}])
def test_a_forged_id_cannot_name_a_node_outside_the_frames_range(bad: object) -> None:
    """A page script calling the frame's binding can at worst add DOM inside the frame's
    own range: an id that does not fit it drops the event (never passes through)."""
    for data in ({"source": 0, "adds": [{"parentId": bad, "nextId": None,
                                         "node": {"type": 3, "id": 2}}]},
                 {"source": 0, "adds": [{"parentId": 1, "nextId": None,
                                         "node": {"type": 3, "id": bad}}]},
                 {"source": 0, "removes": [{"parentId": 1, "id": bad}]},
                 {"source": 0, "texts": [{"id": bad, "value": "x"}]},
                 {"source": 2, "id": bad}, {"source": 15, "id": 1, "styleIds": [bad]},
                 {"source": 1, "positions": [{"id": bad}]}):
        assert frames.transform({"type": 3, "timestamp": 1, "data": data},
                                BASE, BASE + 1) is None, data
    with pytest.raises(frames.Unmappable):
        frames.attach({"type": 2, "timestamp": 1, "data": {"node": {
            "type": 0, "id": 1, "childNodes": [{"type": 2, "id": bad}]}}}, BASE)
    for node in (None, [], {"type": 0}, {"type": 0, "id": 1, "childNodes": "x"}):
        with pytest.raises(frames.Unmappable):
            frames.attach({"type": 2, "timestamp": 1, "data": {"node": node}}, BASE)


def _mutation(**data: Any) -> dict[str, Any]:
    return {"type": 3, "timestamp": 1, "data": {"source": 0, "adds": [], "removes": [],
                                                "texts": [], "attributes": [], **data}}


@pytest.mark.parametrize("data", [
    {"texts": [{"id": BASE + 4, "value": "x"}]},
    {"attributes": [{"id": BASE + 4, "attributes": {"src": "x"}}]},
    {"removes": [{"parentId": BASE + 3, "id": BASE + 4}]},
    {"adds": [{"parentId": 5, "nextId": None, "node": {"type": 3, "id": BASE + 9}}]},
    {"adds": [{"parentId": BASE + 3, "nextId": None, "node": {"type": 3, "id": 9}}]},
    {"adds": [{"parentId": 5, "nextId": BASE, "node": {"type": 3, "id": 9}}]},
    {"adds": [{"parentId": 5, "nextId": None, "node": {"type": 3, "id": -5}}]},
    {"texts": [{"id": -7, "value": "x"}]},
])
def test_a_forged_top_event_naming_a_frames_range_is_dropped(data: dict[str, Any]) -> None:
    """A hostile embedding page calls its own binding: no id of a frame's range (nor
    one a frame will use next), no negative node id."""
    assert frames.check_top(_mutation(**data), set()) is None
    for source, extra in ((2, {"id": BASE + 4}), (1, {"positions": [{"id": BASE}]}),
                          (15, {"id": 1, "styleIds": [BASE]})):
        assert frames.check_top({"type": 3, "timestamp": 1, "data": {
            "source": source, **extra}}, set()) is None
    full = snapshot()
    full["data"]["node"]["childNodes"][0]["id"] = BASE + 2
    assert frames.check_top(full, set()) is None


def test_the_tops_own_events_pass_unchanged_and_none_adds_under_a_frames_iframe() -> None:
    full = snapshot()
    assert frames.check_top(full, set()) is False and full == snapshot()
    own = _mutation(texts=[{"id": 4, "value": "x"}],
                    adds=[{"parentId": 3, "nextId": None, "node": {"type": 3, "id": 9}}])
    assert frames.check_top(own, {7}) is False and len(own["data"]["adds"]) == 1
    pointer = {"type": 3, "timestamp": 1, "data": {"source": 1, "positions": [
        {"x": 1, "y": 1, "id": -1, "timeOffset": 0}]}}  # rrweb's "not serialised"
    assert frames.check_top(pointer, set()) is False
    # rrweb's own add under its ignored node (-2: a script's text), beside a real one:
    # that add is taken out (it goes nowhere), the event goes on.
    ignored = _mutation(adds=[{"parentId": 12, "nextId": None, "node": {"type": 3, "id": 60}},
                              {"parentId": -2, "nextId": None, "node": {"type": 3, "id": 61}},
                              {"parentId": None, "nextId": None, "node": {"type": 3, "id": 62}}])
    assert frames.check_top(ignored, set()) is True
    assert [a["node"]["id"] for a in ignored["data"]["adds"]] == [60]
    for kind in (4, 5, 6):
        assert frames.check_top({"type": kind, "timestamp": 1, "data": {}}, set()) is False
    # A document forged under the <iframe> a frame that records itself is attached to.
    forged = _mutation(adds=[{"parentId": 7, "nextId": None, "node": {"type": 0, "id": 20}},
                             {"parentId": 3, "nextId": None, "node": {"type": 3, "id": 21}}],
                       isAttachIframe=True)
    assert frames.check_top(forged, {7}) is True
    assert [a["parentId"] for a in forged["data"]["adds"]] == [3]


def test_a_frames_negative_ids_and_forged_attach_flag() -> None:
    r = BASE + 1

    def moved(**data: Any) -> dict[str, Any] | None:
        return frames.transform(_mutation(**data), BASE, r)

    assert moved(adds=[{"parentId": 3, "nextId": None, "node": {"type": 3, "id": -5}}]) is None
    for nowhere in ({"parentId": -1}, {"parentId": -2}, {"parentId": None}, {}):
        out = moved(adds=[{**nowhere, "nextId": None, "node": {"type": 3, "id": 5}}])
        assert out is not None and out["data"]["adds"] == [], nowhere  # never passed on
    assert moved(removes=[{"parentId": 3, "id": -9}]) is None
    kept = moved(adds=[{"parentId": 3, "nextId": -1, "node": {"type": 3, "id": 5}}])
    assert kept and kept["data"]["adds"][0]["nextId"] == -1  # rrweb's "none" stays
    forged = moved(adds=[{"parentId": 3, "nextId": None, "node": {"type": 3, "id": 5}}],
                   isAttachIframe=True)
    assert forged and "isAttachIframe" not in forged["data"]
    nested = moved(adds=[{"parentId": 3, "nextId": None, "node": {"type": 0, "id": 5,
                                                                   "childNodes": []}}],
                   isAttachIframe=True)  # rrweb's own attach of a same-origin frame in it
    assert nested and nested["data"]["isAttachIframe"] is True
    with pytest.raises(frames.Unmappable):
        frames.attach({"type": 2, "timestamp": 1, "data": {"node": {"type": 0, "id": -3}}},
                      BASE)


def test_the_ranges_never_meet_and_stay_exact_in_javascript() -> None:
    bases = frames.Bases()
    first, second = bases.take(), bases.take()
    assert first == frames.FIRST_BASE and second == first + frames.SPAN  # type: ignore[operator]
    bases.next = frames.BLANK_BASE - frames.SPAN  # the last one that fits
    assert bases.take() is not None and bases.take() is None
    assert frames.MAX_SAFE == 2**53 - 1 and frames.BLANK_BASE + frames.SPAN <= frames.MAX_SAFE
    assert bases.blank() == frames.BLANK_BASE and bases.blank() == frames.BLANK_BASE + 1


def test_a_frame_holds_its_events_until_its_iframe_is_known_bounded() -> None:
    frame = frames.Frame("s", "f")
    meta = {"type": 4, "timestamp": 1, "data": {"href": "x", "width": 1, "height": 1}}
    assert frame.add(meta, 10) is None and not frame.stale  # before any snapshot: ignored

    def text() -> dict[str, Any]:  # (a new one each time: the merge moves ids in place)
        return {"type": 3, "timestamp": 20, "data": {"source": 0,
                                                     "texts": [{"id": 4, "value": "z"}]}}

    assert frame.add(text(), 10) is None and frame.stale  # no range yet: a snapshot is due
    assert frame.snapshot(snapshot(ts=10.0), BASE) and not frame.stale
    assert frame.add(text(), 10) is None  # held
    out = frame.release(owner=61, floor=30.0)
    assert [e["timestamp"] for e in out] == [30.0, 30.0]  # never before the parent's
    assert out[0]["data"]["adds"][0]["parentId"] == 61 and frame.attached
    assert out[1]["data"]["texts"][0]["id"] == BASE + 4
    assert frame.add(text(), 10)["data"]["texts"][0]["id"] == BASE + 4  # type: ignore[index]
    # Over the bound, what was held is forgotten and a fresh snapshot is due.
    frame.snapshot(snapshot(), BASE + frames.SPAN)
    for _ in range(frames.MAX_BUFFER_EVENTS + 1):
        frame.add(text(), 10)
    assert frame.held == [] and frame.stale and not frame.attached
    frame.snapshot(snapshot(), BASE)
    assert frame.add(text(), frames.MAX_BUFFER_BYTES + 1) is None and frame.held == []


def test_a_blank_frame_is_an_empty_document() -> None:
    attach, root = frames.blank(BASE, 5)
    node = attach["data"]["adds"][0]["node"]
    assert node == {"type": 0, "id": root, "childNodes": []} and attach["data"]["isAttachIframe"]


# --- the session's frame handling, without a browser (forged binding calls) ---------

def offline_session(private_urls: tuple[str, ...] = ()) -> tuple[Any, list[Any]]:
    """A co-browse with a shown page (its top snapshotted) and one out-of-process frame
    under it, no browser: what its binding handler does with forged calls."""
    from backline.agent.cobrowse.session import CoBrowse, Target
    from backline.agent.policy import CobrowsePolicy

    out: list[Any] = []
    cb = CoBrowse(CobrowsePolicy(private_urls=private_urls), out.append)
    page = Target("P", "page", "top", "http://127.0.0.1/", main_frame="top",
                  snapshot_seen=True, snapshots=1)
    frame = Target("F", "iframe", "f1", "http://localhost/", main_frame="f1",
                   parent_sid="P", parent_frame="top")
    cb.targets = {"P": page, "F": frame}
    cb.pages = ["P"]
    return cb, out


def sent_events(out: list[Any]) -> list[dict[str, Any]]:
    return [e for line in out if isinstance(line, str)
            for e in json.loads(line)["events"]]


@run_async
async def test_a_flood_of_frame_snapshots_uses_one_range_and_a_blank_still_works() -> None:
    cb, out = offline_session()
    for i in range(300):  # what a frame's script calling its _snapshot in a loop sends
        cb._binding("F", json.dumps([snapshot(ts=10.0 + i)]), None)
    rec = cb.frames[("F", "f1")]
    assert rec.base == BASE and cb.bases.next == BASE + frames.SPAN  # one range, kept
    assert rec.snapshots == frames.SNAPSHOTS_BURST and rec.snapshots_dropped == 295
    # Malformed snapshots use up no range either.
    rec.new_document()
    rec.snapshot_bucket = Bucket(1000.0, 1000.0)  # (malformed ones count against it too)
    for _ in range(50):
        cb._binding("F", json.dumps([{"type": 2, "timestamp": 1, "data": {"node": {
            "type": 0, "id": 1, "childNodes": [{"type": 3, "id": -4}]}}}]), None)
    assert cb.bases.next == BASE + frames.SPAN and rec.base is None
    # A new document (the frame navigated) is a new range; another snapshot of it, not.
    cb._binding("F", json.dumps([snapshot()]), None)
    cb._binding("F", json.dumps([snapshot()]), None)
    assert rec.base == BASE + frames.SPAN and cb.bases.next == BASE + 2 * frames.SPAN
    # Every range used up: a new document is not attached, but a blank still goes out.
    cb.bases.next = frames.BLANK_BASE
    rec.new_document()
    cb._binding("F", json.dumps([snapshot()]), None)
    assert rec.base is None
    rec.owner, rec.owner_epoch = 7, cb._epoch(cb._parent_of(rec))
    cb._blank(rec)
    cb._flush()
    (blank,) = [e for e in sent_events(out) if e["type"] == 3]
    add = blank["data"]["adds"][0]
    assert add["parentId"] == 7 and add["node"]["childNodes"] == []
    assert add["node"]["id"] > frames.BLANK_BASE and add["node"]["id"] <= frames.MAX_SAFE
    for _ in range(3):
        cb._blank(rec)
    assert cb.bases.blanks == 4


@run_async
async def test_what_all_frames_hold_is_capped_oldest_first() -> None:
    cb, _out = offline_session()
    recs = []
    for i in range(3):
        rec = frames.Frame("F", f"g{i}")
        assert rec.snapshot(snapshot(ts=10.0 + i), BASE + i * frames.SPAN,
                            size=15 * 1024 * 1024)
        cb.frames[("F", f"g{i}")] = rec
        recs.append(rec)
    cb._cap_held()
    assert recs[0].held == [] and recs[0].stale and recs[0].held_bytes == 0
    assert recs[1].held and recs[2].held
    assert sum(r.held_bytes for r in recs) <= frames.MAX_HELD_BYTES


@run_async
async def test_a_frame_whose_iframe_comes_late_is_still_looked_up_and_attached() -> None:
    """The frame's <iframe> is not in the parent's view for many lookups (a big page
    still being serialized, say): past MAX_LOOKUPS what the frame held is let go, but
    the lookups go on, at most FRAME_RETRY_CAP_S apart, and once the <iframe> is there
    the frame is attached (before, it stayed out of the view until the parent's next
    full snapshot, which may never come)."""
    from backline.agent.cobrowse import session as session_mod

    cb, _out = offline_session()
    cb._binding("F", json.dumps([snapshot()]), None)
    rec = cb.frames[("F", "f1")]
    misses = session_mod.MAX_LOOKUPS + 4
    calls: list[int] = []

    async def owner(_rec: Any, _parent: Any) -> int | None:
        calls.append(1)
        return None if len(calls) <= misses else 7

    cb._owner_in_parent = owner  # type: ignore[method-assign]
    asked: list[Any] = []
    cb._ask_frame = asked.append  # type: ignore[method-assign]  # no browser to ask
    page = cb.targets["P"]
    for _ in range(misses + 5):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if rec.owner is not None:
            break
        wait = rec.retry_at - time.monotonic()
        assert wait <= session_mod.FRAME_RETRY_CAP_S + 0.1, wait
        rec.retry_at = 0.0  # the wait is over
        cb._frames_due(page)
    assert len(calls) == misses + 1
    assert rec.owner == 7
    assert asked == [rec]  # what it held was let go: a fresh snapshot is asked


@run_async
async def test_a_blocked_iframe_is_not_looked_up_again_until_its_parent_is_snapshotted(
        ) -> None:
    """A lookup that found the <iframe> blocked is final (the lookups that go on past
    MAX_LOOKUPS are for an <iframe> not serialized yet), until the parent's next full
    snapshot gives its nodes new ids."""
    cb, _out = offline_session()
    cb._binding("F", json.dumps([snapshot()]), None)
    rec = cb.frames[("F", "f1")]
    calls: list[int] = []

    async def blocked(found: Any, _parent: Any) -> int | None:
        calls.append(1)
        found.blocked = True
        return None

    cb._owner_in_parent = blocked  # type: ignore[method-assign]
    for _ in range(5):
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if rec.retry_at != float("inf"):
            rec.retry_at = 0.0
        cb._frames_due(cb.targets["P"])
    assert len(calls) == 1
    cb._children_stale(cb._parent_of(rec))  # the parent snapshotted again
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(calls) == 2


@run_async
async def test_a_frame_on_the_browsers_error_page_is_blanked_under_the_default_policy() -> None:
    """No private_urls at all: a frame that lands on Chromium's error page (it prints
    the address it could not load, query included) is blanked in the view and what it
    sends is dropped by the agent too, not only by its own recorder."""
    cb, out = offline_session()
    cb._binding("F", json.dumps([snapshot()]), None)
    rec = cb.frames[("F", "f1")]
    rec.owner, rec.owner_epoch = 7, cb._epoch(cb._parent_of(rec))
    frame = cb.targets["F"]
    assert cb._frame_shown(frame, "f1")
    cb._frame_moved(frame, "f1", "chrome-error://chromewebdata/", None, True)
    assert not cb._frame_shown(frame, "f1")
    cb._flush()
    blank = [e for e in sent_events(out) if e["type"] == 3 and e["data"].get("isAttachIframe")]
    assert blank and blank[-1]["data"]["adds"][0]["node"]["childNodes"] == []
    before = len(sent_events(out))
    printed = json.dumps([snapshot(ts=11.0)]).replace("hello", "https://x.test/?t=SECRET")
    cb._binding("F", printed, None)
    cb._flush()
    assert "SECRET" not in json.dumps(sent_events(out)[before:])
    # Back on an ordinary address, it is shown again.
    cb._frame_moved(frame, "f1", "http://localhost/back", None, True)
    assert cb._frame_shown(frame, "f1")


@run_async
async def test_a_meta_event_without_an_address_says_the_pages_tracked_one() -> None:
    """A recorder started at <html> of a popup's first document can see no address yet:
    its meta event says "" (the view said ":"); the agent puts the page's address, as it
    tracks it, cut as a nav line is."""
    cb, out = offline_session()
    cb.targets["P"].url = "http://127.0.0.1/index.html?popup=1"
    meta = {"type": 4, "timestamp": 9.0, "data": {"href": "", "width": 800, "height": 600}}
    cb._binding("P", json.dumps([meta]), None)
    cb._flush()
    (said,) = [e for e in sent_events(out) if e["type"] == 4]
    assert said["data"]["href"] == "http://127.0.0.1/index.html"


def test_the_co_browse_hands_out_ranges_at_a_bounded_rate() -> None:
    bases = frames.Bases()
    t0 = bases.bucket.at
    taken = [bases.take(now=t0) for _ in range(int(frames.BASES_BURST) + 5)]
    assert taken.count(None) == 5 and None not in taken[:int(frames.BASES_BURST)]
    assert bases.take(now=t0 + 1.0) is not None  # refilled at BASES_PER_S


# --- with real Chromium ------------------------------------------------------------

def _server(pages: dict[str, tuple[str, str]]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in pages:
                self.send_error(404)
                return
            if path == "/slow.js":
                time.sleep(SLOW_S)
            kind, body = pages[path]
            first, _, rest = body.partition(LATER)
            data, later = first.encode(), rest.encode()
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(data) + len(later)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)
            if later:
                self.wfile.flush()
                time.sleep(LATER_S)
                self.wfile.write(later)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _html(body: str) -> tuple[str, str]:
    return ("text/html", f"<!doctype html><html><head><meta charset='utf-8'></head>"
                         f"<body>{body}</body></html>")


@pytest.fixture(scope="module")
def hosts() -> Iterator[dict[str, str]]:
    """Three servers on 127.0.0.1 (three origins; ``localhost`` another site than
    ``127.0.0.1``, so a frame there is out of process). Pages:

    - ``/slow``: a parent whose DOMContentLoaded waits for a slow script placed after a
      cross-site frame (the frame's snapshot comes before its parent's);
    - ``/nested``: a hostile parent (it patches JSON and listens to every message) with
      an in-process cross-origin frame (127.0.0.1, another port), an out-of-process
      one (localhost) that holds an in-process cross-origin frame of its own, and a
      same-origin frame (recorded by the parent's rrweb) that holds a cross-origin one;
    - ``/guarded``: a blocked <iframe>, one inside a blocked element, one on a private
      address, and an open one (the control), whose text reaches its document after
      the frame's snapshot (:data:`LATER`)."""
    pages_one: dict[str, tuple[str, str]] = {}
    pages_two: dict[str, tuple[str, str]] = {}
    pages_three: dict[str, tuple[str, str]] = {}
    one, two, three = (_server(p) for p in (pages_one, pages_two, pages_three))
    p1, p2, p3 = (s.server_address[1] for s in (one, two, three))
    a, b = f"http://127.0.0.1:{p1}", f"http://localhost:{p2}"
    pages_one.update({
        "/slow": _html(f'<h1>slow parent</h1><iframe id="x" src="{b}/child.html"></iframe>'
                       '<script src="/slow.js"></script>'),
        "/slow.js": ("text/javascript", "window.slowDone = true;"),
        "/nested": _html(
            "<script>window.__stolen = [];"
            "const keep = (s) => { if (typeof s === 'string' && s.includes('FRAME-'))"
            " window.__stolen.push(s.slice(0, 200)); };"
            "const js = JSON.stringify, jp = JSON.parse;"
            "JSON.stringify = function (...a) { const r = js.apply(this, a); keep(r);"
            " return r; };"
            "JSON.parse = function (...a) { keep(a[0]); return jp.apply(this, a); };"
            "addEventListener('message', (m) => keep(js(m.data)), true);</script>"
            "<h1>nested parent</h1>"
            f'<iframe id="ip" src="http://127.0.0.1:{p2}/inproc.html"></iframe>'
            f'<iframe id="oop" src="{b}/outer.html"></iframe>'
            '<iframe id="wrap" src="/wrap"></iframe>'),
        "/wrap": _html(f'<iframe id="deep" src="http://127.0.0.1:{p2}/deep.html"></iframe>'),
        "/guarded": _html(
            "<h1>guarded parent</h1>"
            f'<iframe id="open" src="{b}/open.html"></iframe>'
            f'<iframe id="marked" data-backline-private src="{b}/marked.html"></iframe>'
            f'<div class="vault"><iframe id="inside" src="{b}/inside.html"></iframe></div>'
            f'<iframe id="priv" src="{b}/account/frame.html"></iframe>'),
    })
    pages_two.update({
        "/child.html": _html(f"<p>{CHILD_TEXT}</p>"),
        "/inproc.html": _html("<p id=t>INPROC-FRAME-TEXT</p><script>let k = 0; setInterval("
                              "() => { document.getElementById('t').textContent ="
                              " 'INPROC-FRAME-TEXT ' + (++k); }, 500);</script>"),
        "/outer.html": _html("<p>OUTER-FRAME-TEXT</p>"
                             f'<iframe id="inner" src="http://localhost:{p3}/inner.html">'
                             "</iframe>"),
        # Its text comes after its snapshot (in the view all the same).
        "/open.html": _html(f"{LATER}<p>OPEN-FRAME-TEXT</p>"),
        "/deep.html": _html("<p>DEEP-FRAME-TEXT</p>"),
        "/marked.html": _html("<p>BLOCKED-FRAME-TEXT-1</p>"),
        "/inside.html": _html("<p>BLOCKED-FRAME-TEXT-2</p>"),
        "/account/frame.html": _html("<p>PRIVATE-FRAME-TEXT</p>"),
    })
    pages_three["/inner.html"] = _html("<p>INNER-FRAME-TEXT</p>")
    try:
        yield {"a": a, "b": b}
    finally:
        for s in (one, two, three):
            s.shutdown()
            s.server_close()


def rrweb_events(ch: Any) -> list[dict[str, Any]]:
    return [e for line in ch.of("rrweb") for e in line["events"]]


def iframes_in(node: dict[str, Any]) -> dict[str, int]:
    """``id`` attribute to rrweb id of every <iframe> of a serialised tree."""
    out, stack = {}, [node]
    while stack:
        n = stack.pop()
        if n.get("tagName") == "iframe":
            out[str((n.get("attributes") or {}).get("id"))] = n["id"]
        stack.extend(n.get("childNodes", []))
    return out


def _in_range(value: object, base: int) -> bool:
    return isinstance(value, int) and base < value < base + frames.SPAN


def frame_document(events: list[dict[str, Any]], index: int) -> dict[str, Any]:
    """The frame document attached by ``events[index]`` as the view holds it: the
    attached tree and what later mutations add in its range (its recorder starts at
    ``<html>``: under load its snapshot holds the nodes parsed so far, the rest reaches
    it as the parser inserts them), up to its next attach (a fresh snapshot of it, or
    another document under the same ``<iframe>``)."""
    first = events[index]["data"]["adds"][0]
    base = first["node"]["id"] - 1
    nodes = [first["node"]]
    for e in events[index + 1:]:
        if e["type"] != 3 or e["data"].get("source") != 0:
            continue
        adds = e["data"].get("adds") or []
        if e["data"].get("isAttachIframe") and any(
                a["parentId"] == first["parentId"] or a["node"]["id"] == first["node"]["id"]
                for a in adds):
            break
        # (not another frame's document attached inside it: that one is in a range of
        # its own)
        nodes.extend(a["node"] for a in adds if _in_range(a.get("parentId"), base)
                     and _in_range(a["node"].get("id"), base))
        nodes.extend({"type": 3, "id": t["id"], "textContent": t.get("value")}
                     for t in e["data"].get("texts") or [] if _in_range(t.get("id"), base))
    return {"type": 0, "id": first["node"]["id"], "childNodes": nodes}


def attaches(events: list[dict[str, Any]], text: str) -> list[tuple[int, dict[str, Any]]]:
    """(index, add) of each attach of a frame document in the agent's ranges that holds
    ``text`` in the view (in its snapshot, or added after it: :func:`frame_document`)."""
    return [(i, add) for i, e in enumerate(events)
            if e["type"] == 3 and e["data"].get("source") == 0 and e["data"].get("isAttachIframe")
            for add in e["data"]["adds"][:1]
            if add["node"].get("type") == 0 and add["node"]["id"] >= BASE
            and text in json.dumps(frame_document(events, i))]


def top_iframes_before(events: list[dict[str, Any]], index: int) -> dict[str, int]:
    """The top document's <iframe> ids as of ``events[index]``: in its last full
    snapshot, and in the mutations after it (the recorder starts at <html>, so a page
    that is still loading sends its elements as the parser inserts them)."""
    full = [i for i, e in enumerate(events[:index]) if e["type"] == 2]
    assert full, "no top snapshot before the attach"
    found = iframes_in(events[full[-1]]["data"]["node"])
    for e in events[full[-1] + 1:index]:
        if e["type"] == 3 and e["data"].get("source") == 0 and not e["data"].get(
                "isAttachIframe"):
            for add in e["data"].get("adds", []):
                if add.get("parentId", 0) < frames.FIRST_BASE:
                    found.update(iframes_in(add["node"]))
    return found


def session_of(server: Any) -> Any:
    return server_ctx(server).extra["cobrowse_session"]


async def eval_in_frame(cb: Any, url_part: str, expression: str) -> Any:
    """Evaluate in the main world of the out-of-process frame whose address has
    ``url_part`` (the frame's own scripts could do the same)."""
    for sid, target in cb.targets.items():
        if target.type == "iframe" and url_part in target.url:
            answer = await cb.browser.conn.send("Runtime.evaluate", {
                "expression": expression, "returnByValue": True}, sid)
            return (answer.get("result") or {}).get("value")
    raise AssertionError(f"no frame target at {url_part}: "
                         f"{[(t.type, t.url) for t in cb.targets.values()]}")


@needs_chromium
@run_async
async def test_a_cross_origin_frame_is_attached_under_its_iframe_and_kept_there(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        # The frame's text (its snapshot) and its changes (mutations, every second).
        await ch.until(lambda: "CROSS-ORIGIN-FRAME-TEXT 2" in ch.text(), 60)
        ctx = server_ctx(server)
        cb = session_of(server)
        # A script of the embedding page listens to every message; the frame loads again.
        await page_eval(kit, ctx, "window.__heard = []; addEventListener('message', (m) =>"
                                  " window.__heard.push(JSON.stringify(m.data)), true);"
                                  "const f = document.getElementById('cross');"
                                  "f.src = f.src + '?again'; true")
        reloaded = len(rrweb_events(ch))
        await ch.until(lambda: attaches(rrweb_events(ch)[reloaded:], "CROSS-ORIGIN"), 30)
        # The parent's own full snapshot (new ids for its nodes): the frame attaches again.
        await cb._snapshot(cb.pages[-1])
        again = len(rrweb_events(ch))
        await ch.until(lambda: [e for e in rrweb_events(ch)[again:] if e["type"] == 2], 15)
        await ch.until(lambda: attaches(rrweb_events(ch)[again:], "CROSS-ORIGIN"), 15)
        heard = await page_eval(kit, ctx, "JSON.stringify(window.__heard)")
        # Forged events on the frame's binding (what a script of the frame could send):
        # in the frame's own range, or dropped; from a same-origin frame: noise.
        frame_sid = next(sid for sid, t in cb.targets.items() if t.type == "iframe")
        forged = {"type": 3, "timestamp": 1, "data": {"source": 0, "adds": [
            {"parentId": 5, "nextId": None, "node": {"type": 3, "id": 999,
                                                     "textContent": "FORGED-TEXT"}}],
            "removes": [], "texts": [], "attributes": []}}
        beyond = json.loads(json.dumps(forged).replace("FORGED-TEXT", "BEYOND-TEXT"))
        beyond["data"]["adds"][0]["parentId"] = frames.SPAN + 5
        cb._binding(frame_sid, json.dumps([forged, beyond]), None)
        page = cb.targets[cb.pages[-1]]
        same = next(f for f, info in page.frames.items() if info.url.endswith("/same.html"))
        context = next(c for c, f in page.contexts.items() if f == same)
        noise = page.gate.malformed
        cb._binding(page.session_id, json.dumps([forged]).replace("FORGED", "NOISE"),
                    context)
        assert page.gate.malformed == noise + 1
        await ch.until(lambda: "FORGED-TEXT" in ch.text(), 10)
        # The embedding page calls its own binding (its name can be found) to rewrite
        # the frame in the view: a text of the frame's range, a node planted where the
        # frame's next ids go, a document forged under its <iframe>; then a control.
        (rec,) = [r for r in cb.frames.values() if r.attached]
        assert rec.base is not None and rec.owner is not None
        top_forged = [
            {"type": 3, "timestamp": 2, "data": {"source": 0, "adds": [], "removes": [],
                                                 "attributes": [], "texts": [
                {"id": rec.base + 4, "value": "TOP-FORGED-TEXT"}]}},
            {"type": 3, "timestamp": 2, "data": {"source": 0, "removes": [], "texts": [],
                                                 "attributes": [], "adds": [
                {"parentId": 1, "nextId": None,
                 "node": {"type": 3, "id": rec.base + 5000, "textContent": "TOP-PLANTED"}}]}},
            {"type": 3, "timestamp": 2, "data": {"source": 0, "removes": [], "texts": [],
                                                 "attributes": [], "isAttachIframe": True,
                                                 "adds": [
                {"parentId": rec.owner, "nextId": None,
                 "node": {"type": 0, "id": 4000, "childNodes": [
                     {"type": 3, "id": 4001, "textContent": "TOP-UNDER-IFRAME"}]}}]}},
            {"type": 3, "timestamp": 2, "data": {"source": 0, "removes": [], "texts": [],
                                                 "attributes": [], "adds": [
                {"parentId": 1, "nextId": None,
                 "node": {"type": 3, "id": 4100, "textContent": "TOP-CONTROL-TEXT"}}]}}]
        cb._binding(page.session_id, json.dumps(top_forged), None)
        await ch.until(lambda: "TOP-CONTROL-TEXT" in ch.text(), 10)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    events = rrweb_events(ch)
    found = attaches(events, "CROSS-ORIGIN-FRAME-TEXT")
    assert len(found) >= 3, len(found)  # loaded, reloaded, re-attached after the snapshot
    bases = []
    for index, add in found:
        # Under the <iframe id="cross"> of the top snapshot it follows.
        assert add["parentId"] == top_iframes_before(events, index)["cross"], add["parentId"]
        bases.append(add["node"]["id"] - 1)
    # A range per document (loaded, reloaded); the re-attach of the same document after
    # the parent's snapshot is in its range again (rrweb keeps its ids in a document).
    assert len(set(bases)) == 2 and bases == sorted(bases), bases
    # The top's own ids stay below every frame range; the frame's changes are moved.
    top_ids = [i for e in events if e["type"] == 2 for i in ids_of(e["data"]["node"])]
    assert max(top_ids) < BASE
    changes = [e for e in events if e["type"] == 3 and e["data"].get("source") == 0
               and not e["data"].get("isAttachIframe")
               and "CROSS-ORIGIN-FRAME-TEXT " in json.dumps(e)]
    assert changes
    for change in changes:
        for add in change["data"]["adds"]:
            assert any(b < add["parentId"] < b + frames.SPAN for b in bases), add
            assert add["node"]["id"] >= BASE
        for removed in change["data"]["removes"]:
            assert removed["id"] >= BASE
    assert [e for e in events if e["type"] == 4 and "localhost" in json.dumps(e)] == []
    # Nothing of it was posted to the embedding page.
    assert "CROSS-ORIGIN-FRAME-TEXT" not in heard and "rrweb" not in heard, heard[:300]
    assert json.loads(heard) == []
    (fake,) = [e for e in events if "FORGED-TEXT" in json.dumps(e)]
    assert any(b < fake["data"]["adds"][0]["parentId"] < b + frames.SPAN for b in bases)
    assert "BEYOND-TEXT" not in ch.text() and "NOISE-TEXT" not in ch.text()
    for forged_text in ("TOP-FORGED-TEXT", "TOP-PLANTED", "TOP-UNDER-IFRAME"):
        assert forged_text not in ch.text(), forged_text
    assert "SAME-ORIGIN-FRAME-TEXT" in ch.text()  # same-origin frames: the parent's rrweb
    await asyncio.wait_for(server, 10)


@needs_chromium
@run_async
async def test_a_frame_that_loads_before_its_parent_is_attached_once_the_parent_is(
        tmp_path: Path, hosts: dict[str, str]) -> None:
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"{hosts['a']}/slow")
    async with conn:
        await ch.until(lambda: attaches(rrweb_events(ch), CHILD_TEXT), 60)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    events = rrweb_events(ch)
    (index, add), *_ = attaches(events, CHILD_TEXT)
    assert add["parentId"] == top_iframes_before(events, index)["x"]
    top = [e for e in events[:index] if e["type"] == 2][-1]
    assert events[index]["timestamp"] >= top["timestamp"]  # a replay orders by time
    await asyncio.wait_for(server, 10)


@needs_chromium
@run_async
async def test_in_process_and_nested_frames_and_a_hostile_embedding_page(
        tmp_path: Path, hosts: dict[str, str]) -> None:
    """An in-process cross-origin frame (127.0.0.1, another port: it calls the page
    target's binding from its own execution context); an out-of-process one holding an
    in-process frame of a third origin (the parent of that one is itself a frame
    target); a cross-origin frame inside a same-origin one (its <iframe> is in the top
    rrweb's stream); all in a parent that patches JSON and listens to every message."""
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"{hosts['a']}/nested")
    async with conn:
        await ch.until(lambda: all(attaches(rrweb_events(ch), t) for t in (
            "INPROC-FRAME-TEXT", "OUTER-FRAME-TEXT", "INNER-FRAME-TEXT",
            "DEEP-FRAME-TEXT")), 60)
        await ch.until(lambda: "INPROC-FRAME-TEXT 3" in ch.text(), 15)
        cb = session_of(server)
        kinds = sorted(t.type for t in cb.targets.values())
        stolen = await page_eval(kit, server_ctx(server), "JSON.stringify(window.__stolen)")
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    assert kinds == ["iframe", "page"], kinds  # the in-process ones have no target
    events = rrweb_events(ch)
    (i, inproc), *_ = attaches(events, "INPROC-FRAME-TEXT")
    assert inproc["parentId"] == top_iframes_before(events, i)["ip"]
    (o, outer), *_ = attaches(events, "OUTER-FRAME-TEXT")
    assert outer["parentId"] == top_iframes_before(events, o)["oop"]
    (n, inner), *_ = attaches(events, "INNER-FRAME-TEXT")
    # Under the <iframe id="inner"> of the outer frame, in the outer frame's range.
    outer_base = outer["node"]["id"] - 1
    inner_owner = iframes_in(frame_document(events, o))["inner"]
    assert inner["parentId"] == inner_owner and outer_base < inner_owner < outer_base + frames.SPAN
    assert n > o
    (d, deep), *_ = attaches(events, "DEEP-FRAME-TEXT")
    # The same-origin frame's document came in the top's own stream (ids below BASE).
    wrapped = [iframes_in(add["node"]) for e in events[:d] if e["type"] == 3
               and e["data"].get("isAttachIframe") for add in e["data"]["adds"]
               if add["node"]["id"] < BASE]
    assert deep["parentId"] in [w["deep"] for w in wrapped if "deep" in w], wrapped
    assert json.loads(stolen) == [], stolen[:300]
    await asyncio.wait_for(server, 10)


@needs_chromium
@run_async
async def test_nothing_is_attached_to_a_blocked_iframe_nor_sent_of_a_private_frame(
        tmp_path: Path, hosts: dict[str, str]) -> None:
    kit = kit_for(tmp_path, ScriptedAsker(YES), block_selectors=[".vault"],
                  private_urls=["*/account/*"])
    conn, ch, server = await open_cobrowse(kit, f"{hosts['a']}/guarded")
    async with conn:
        await ch.until(lambda: attaches(rrweb_events(ch), "OPEN-FRAME-TEXT"), 60)
        await asyncio.sleep(1.5)  # the others had the time to load and send
        cb = session_of(server)
        loaded = await eval_in_frame(cb, "/marked.html", "document.body.textContent")
        # The open frame moves to a private address within its document: it is blanked.
        at = len(rrweb_events(ch))
        await eval_in_frame(cb, "/open.html", "history.pushState({}, '', '/account/9');"
                                              "document.body.insertAdjacentHTML('beforeend',"
                                              " '<p>OPEN-NOW-PRIVATE</p>'); true")
        await ch.until(lambda: any(
            add["node"] == {"type": 0, "id": add["node"]["id"], "childNodes": []}
            for e in rrweb_events(ch)[at:] if e["type"] == 3 and e["data"].get("isAttachIframe")
            for add in e["data"]["adds"]), 15)
        await asyncio.sleep(1.0)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    assert "BLOCKED-FRAME-TEXT-1" in loaded  # it ran: the view is what was kept from it
    text = json.dumps(rrweb_events(ch))
    for secret in ("BLOCKED-FRAME-TEXT-1", "BLOCKED-FRAME-TEXT-2", "PRIVATE-FRAME-TEXT",
                   "OPEN-NOW-PRIVATE"):
        assert secret not in text, secret
    events = rrweb_events(ch)
    owners = {add["parentId"] for e in events if e["type"] == 3
              and e["data"].get("isAttachIframe") for add in e["data"]["adds"]
              if add["node"].get("type") == 0 and add["node"]["id"] >= BASE}
    top = top_iframes_before(events, len(events))
    assert owners == {top["open"]}, (owners, top)
    await asyncio.wait_for(server, 10)


@needs_chromium
@run_async
async def test_a_frame_whose_target_leaves_is_blanked_in_the_view(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    """An out-of-process frame's target detaches (a cross-site navigation does that,
    maybe to a private address whose recorder sends nothing): its content must not stay
    in the view; an empty document is attached under its <iframe>."""
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "CROSS-ORIGIN-FRAME-TEXT" in ch.text(), 60)
        cb = session_of(server)
        (rec,) = [r for r in cb.frames.values() if r.attached]
        owner, at = rec.owner, len(rrweb_events(ch))
        frame_sid = next(sid for sid, t in cb.targets.items() if t.type == "iframe")
        cb._on_event(Event("Target.detachedFromTarget", {"sessionId": frame_sid}, None))

        def blanked() -> bool:
            return any(e["type"] == 3 and e["data"].get("isAttachIframe")
                       and add["parentId"] == owner and add["node"]["type"] == 0
                       and "CROSS-ORIGIN" not in json.dumps(add)
                       for e in rrweb_events(ch)[at:] for add in e["data"]["adds"])
        await ch.until(blanked, 15)
        assert not [k for k in cb.frames if k[0] == frame_sid]
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    await asyncio.wait_for(server, 10)
