"""What merging a cross-origin frame in the agent costs (docs/cobrowse.md, "Frames").

The frame's events go through Python (agent/cobrowse/frames.py) instead of through the
embedding page (rrweb's postMessage, a leak): this measures that price on the loopback
test site (tests/sites/cobrowse/), with a fresh headless browser per run:

- ``attach_after_top_ms``: from the top document's first full snapshot leaving the
  agent to the cross-origin frame's attach mutation leaving it (the frame's own
  snapshot and the lookup of its ``<iframe>``: ``DOM.getFrameOwner``, the blocked check
  in the isolated world, the parent recorder's id);
- ``lookup_ms``: the lookup alone (each one made in the run);
- ``frame_bytes_s`` / ``all_bytes_s``: what the frame's events add to the stream (the
  test frame changes its text every second) over ``--seconds``;
- ``large_*``: the test site's ``large.html`` (10,000 elements) as a cross-origin
  frame: the size of its snapshot, the agent's CPU time to move its ids
  (``frames.attach``, median of 5) and to write the moved event's JSON again (a page's
  own events go out as the gate's text; a frame's were changed); and a mutation of 100
  added nodes (``transform``).

    .venv/bin/python -m bench.cobrowse_frames [--runs 3] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backline.agent.cobrowse import frames
from backline.agent.cobrowse.session import CoBrowse
from backline.agent.policy import CobrowsePolicy

ROOT = Path(__file__).resolve().parents[1]


def _events(line: str) -> list[dict[str, Any]]:
    if not line.startswith('{"type":"rrweb"'):
        return []
    return list(json.loads(line)["events"])


def _is_frame_attach(event: dict[str, Any]) -> bool:
    return (event["type"] == 3 and bool(event["data"].get("isAttachIframe"))
            and any(a["node"].get("id", 0) >= frames.FIRST_BASE
                    for a in event["data"].get("adds", [])))


def _in_frame_range(event: object) -> bool:
    """Does the event name a node of a frame's range (an id at or over FIRST_BASE)?"""
    stack = [event]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):  # (a timestamp in ms is over 2**40 too)
            stack.extend(v for k, v in item.items() if k != "timestamp")
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and (
                item >= frames.FIRST_BASE):
            return True
    return False


async def one(url: str, browser: str, seconds: float) -> dict[str, Any]:
    seen: list[tuple[float, str]] = []
    cb = CoBrowse(CobrowsePolicy(browser=browser), lambda line: seen.append(
        (time.monotonic(), line if isinstance(line, str) else json.dumps(line))))
    lookups: list[float] = []
    original = cb._owner_in_parent

    async def timed(*args: Any) -> Any:
        started = time.monotonic()
        try:
            return await original(*args)
        finally:
            lookups.append((time.monotonic() - started) * 1000)

    cb._owner_in_parent = timed  # type: ignore[method-assign]
    try:
        await cb.start(headless=True)
        await cb.navigate(url)
        await asyncio.sleep(2.0)
        mark = len(seen)
        await asyncio.sleep(seconds)
    finally:
        await cb.close()
    top = attach = None
    for at, line in seen:
        for event in _events(line):
            if event["type"] == 2 and top is None and "cross" in line:
                top = at
            if _is_frame_attach(event) and attach is None and top is not None:
                attach = at
    window = seen[mark:]
    frame_bytes = sum(len(json.dumps(e, separators=(",", ":"), ensure_ascii=False))
                      for _, line in window for e in _events(line) if _in_frame_range(e))
    return {"attach_after_top_ms": round((attach - top) * 1000, 1) if top and attach
            else None,
            "lookup_ms": [round(x, 1) for x in lookups],
            "frame_bytes_s": round(frame_bytes / seconds),
            "all_bytes_s": round(sum(len(line) for _, line in window) / seconds)}


async def measure(ports: dict[str, int], browser: str, runs: int, seconds: float
                  ) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    done = [await one(f"http://127.0.0.1:{ports['a']}/", browser, seconds)
            for _ in range(runs)]
    big_frame = await large_as_frame(ports, browser)
    return {"runs": done, **big_frame,
            "load_average": [round(load_before, 1), round(os.getloadavg()[0], 1)],
            "cpus": os.cpu_count()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    browser = os.environ.get("BACKLINE_CHROMIUM", "/usr/bin/chromium")
    server = subprocess.Popen([sys.executable, "-m", "tests.sites.cobrowse.server"],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        result = asyncio.run(measure(ports, browser, args.runs, args.seconds))
    finally:
        server.kill()
        server.wait()
    out = ROOT / "bench" / "results" / "cobrowse_frames.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


async def large_as_frame(ports: dict[str, int], browser: str) -> dict[str, Any]:
    """large.html in an <iframe> of another site (the test site's same.html on origin
    A gets one added by the test, as a page script would)."""
    snapshots: list[dict[str, Any]] = []
    cb = CoBrowse(CobrowsePolicy(browser=browser), lambda line: None)
    original = cb._frame_binding

    def keep(source: Any, fid: str, payload: object) -> None:
        if isinstance(payload, str) and '"type":2' in payload and not snapshots:
            snapshots.extend(e for e in json.loads(payload) if e.get("type") == 2)
        original(source, fid, payload)

    cb._frame_binding = keep  # type: ignore[method-assign]
    try:
        await cb.start(headless=True)
        await cb.navigate(f"http://127.0.0.1:{ports['a']}/same.html")
        await asyncio.sleep(1.0)
        assert cb.browser is not None
        await cb.browser.conn.send("Runtime.evaluate", {"expression": (
            "const f = document.createElement('iframe');"
            f"f.src = 'http://localhost:{ports['b']}/large.html'; f.width = 800;"
            "f.height = 600; document.body.appendChild(f); true")}, cb.pages[-1])
        for _ in range(300):
            if snapshots:
                break
            await asyncio.sleep(0.1)
    finally:
        await cb.close()
    if not snapshots:
        return {"large_snapshot_bytes": None}
    event = snapshots[0]
    times, dumps = [], []
    for _ in range(5):
        fresh = copy.deepcopy(event)  # (the merge moves ids in place)
        started = time.process_time()
        attached, _root = frames.attach(fresh, frames.FIRST_BASE)
        times.append((time.process_time() - started) * 1000)
        started = time.process_time()
        json.dumps(attached, ensure_ascii=False, separators=(",", ":"))
        dumps.append((time.process_time() - started) * 1000)
    adds = [{"parentId": 5, "nextId": None, "node": {"type": 2, "id": 1000 + i,
             "tagName": "div", "attributes": {"class": "row"}, "childNodes": [
                 {"type": 3, "id": 2000 + i, "textContent": f"item {i}"}]}}
            for i in range(100)]
    mutation = {"type": 3, "timestamp": 1, "data": {"source": 0, "adds": adds,
                                                    "removes": [], "texts": [],
                                                    "attributes": []}}
    copies = [copy.deepcopy(mutation) for _ in range(200)]
    started = time.process_time()
    for one_copy in copies:
        frames.transform(one_copy, frames.FIRST_BASE, frames.FIRST_BASE + 1)
    per = (time.process_time() - started) * 1000 / 200
    return {"large_snapshot_bytes": len(json.dumps(event, separators=(",", ":"))),
            "large_attach_cpu_ms": round(statistics.median(times), 1),
            "large_attach_json_cpu_ms": round(statistics.median(dumps), 1),
            "mutation_100_adds_cpu_ms": round(per, 3)}


if __name__ == "__main__":
    main()
