"""The cross-origin frame's first full snapshot, with real Chromium, forced into the race.

rrweb (``recordCrossOriginIframes``) drops a cross-origin frame's posted events until the
parent's own snapshot has serialized that frame's ``<iframe>``; an out-of-process frame
that reached DOMContentLoaded before its parent had its first snapshot dropped, and the
view showed the frame empty for good (its later mutations came, under ids never added).
Here the parent is held before its DOMContentLoaded by a slow external script after the
``<iframe>`` (the event loop stays free, so the frame's message is handled, and lost,
before the parent records), which made the race happen every time before the fix
(agent/cobrowse/assets/inject.js: after each full snapshot a document asks its child
frames for a fresh one). The frame's text never changes, so it can only come from a
full snapshot of the frame.
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

from tests.unit.test_cobrowse_agent import CHROMIUM, YES, ScriptedAsker, kit_for, open_cobrowse
from tests.unit.test_wstunnel import run_async

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium on the machine")
CHILD_TEXT = "STATIC-CROSS-FRAME-TEXT"
SLOW_S = 1.5


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
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def slow_parent() -> Iterator[str]:
    """A parent on 127.0.0.1 whose DOMContentLoaded waits for a slow script placed after
    a cross-site (``localhost``: an out-of-process) frame that has nothing but text."""
    child = _server({"/child.html": ("text/html", "<!doctype html><body><p>"
                                                  f"{CHILD_TEXT}</p></body>")})
    port = child.server_address[1]
    parent = _server({
        "/": ("text/html", "<!doctype html><body><h1>slow parent</h1>"
                           f'<iframe id="x" src="http://localhost:{port}/child.html"></iframe>'
                           '<script src="/slow.js"></script></body>'),
        "/slow.js": ("text/javascript", "window.slowDone = true;")})
    try:
        yield f"http://127.0.0.1:{parent.server_address[1]}/"
    finally:
        for s in (child, parent):
            s.shutdown()
            s.server_close()


def frame_adds(events: list[dict[str, Any]]) -> list[str]:
    """The JSON of each mutation that attaches a frame's document (isAttachIframe)."""
    return [json.dumps(e) for e in events if e["type"] == 3 and e["data"].get("source") == 0
            and e["data"].get("isAttachIframe")]


@run_async
async def test_cross_origin_frame_snapshot_survives_a_parent_that_records_late(
        tmp_path: Path, slow_parent: str) -> None:
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, slow_parent)
    async with conn:
        await ch.until(lambda: "slow parent" in ch.text(), 60)
        await ch.until(lambda: CHILD_TEXT in ch.text(), 15)
        await asyncio.sleep(0.3)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    events = [e for line in ch.of("rrweb") for e in line["events"]]
    full = [i for i, e in enumerate(events) if e["type"] == 2]
    attached = [i for i, e in enumerate(events) if e["type"] == 3
                and e["data"].get("isAttachIframe") and CHILD_TEXT in json.dumps(e)]
    # The frame's document came as an attach after the parent's first full snapshot
    # (before it, a viewer has nothing to attach it to).
    assert full and attached and attached[-1] > full[0], (full, attached)
    assert any(CHILD_TEXT in a for a in frame_adds(events))
    await asyncio.wait_for(server, 10)
