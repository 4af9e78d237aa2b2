"""A cross-origin frame is not recorded, with real Chromium, also when it loads first.

Until issue 13's privacy fixes, rrweb (``recordCrossOriginIframes``) posted a
cross-origin frame's events to its parent with ``postMessage(…, "*")`` (any script of
the embedding origin read them), and inject.js let the parent ask the frame for a fresh
full snapshot at will. Frames now never record (inject.js); a same-origin frame is
recorded by its top document, a cross-origin one is an empty frame. Here the parent is
held before its DOMContentLoaded by a slow external script after the ``<iframe>`` (the
case where the frame's snapshot once raced the parent's): the frame's static text must
appear nowhere in what the agent sends.
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
async def test_a_cross_origin_frame_is_never_recorded_even_before_its_parent(
        tmp_path: Path, slow_parent: str) -> None:
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, slow_parent)
    async with conn:
        await ch.until(lambda: "slow parent" in ch.text(), 60)
        await asyncio.sleep(2.0)  # time for the frame to load and (before) to post
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    events = [e for line in ch.of("rrweb") for e in line["events"]]
    assert [e for e in events if e["type"] == 2]
    assert CHILD_TEXT not in ch.text()
    assert not [a for a in frame_adds(events) if CHILD_TEXT in a]
    await asyncio.wait_for(server, 10)
