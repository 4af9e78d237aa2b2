"""The real agent (``backline-agent``'s own ``main``) with a stand-in ``cobrowse`` room
that speaks the co-browse contract's JSON lines (docs/cobrowse.md) without a browser,
for tests of the relay's room and the console's panel while the agent's real room is
built elsewhere. It is NOT the agent's co-browse: no Chromium, no consent window; it
answers as the contract says a customer who says yes would.

What it does, after the relay's ``start`` line:

- a ``start`` whose reason is ``standin:refuse``: ``consent view no``, the refusal on
  stderr, exit 77;
- otherwise ``consent view yes``, ``nav`` to the start URL, one rrweb batch (Meta and a
  FullSnapshot of a small page: a heading styled by a ``<style>``, a text ``#ticker``
  with a ``style`` attribute, and a button), one line
  that is not the contract's (``{"type":"bogus"}``: the relay must drop it), then every
  ``STANDIN_TICK`` seconds (default 1) an rrweb text mutation of ``#ticker``
  ("tick N");
- it answers ``request_control`` with ``consent control yes`` and ``control granted``,
  ``release_control`` with ``control revoked``, ``propose_url`` with a ``nav``,
  ``screencast on`` with ``STANDIN_FRAMES`` (default 0) frames of ``STANDIN_FRAME_KIB``
  KiB as fast as the channel takes them, then one ``{"type":"hidden"}`` line as a
  marker; ``end`` with ``ended technician`` and exit 0;
- every line it receives is appended to ``STANDIN_LOG`` (the test reads what reached
  the agent).

Run as ``python -m tests.cobrowse_standin --state-dir DIR run``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import sys
import time
from typing import Any

from backline.agent import capabilities, sessions
from backline.agent.capabilities import SessionContext

TICKER_TEXT_ID = 9
BUTTON_ID = 10


def now_ms() -> int:
    return int(time.time() * 1000)


def snapshot(url: str) -> list[dict[str, Any]]:
    """rrweb 2.x Meta and FullSnapshot events of a small page."""
    node = {"type": 0, "id": 1, "childNodes": [
        {"type": 1, "id": 2, "name": "html", "publicId": "", "systemId": ""},
        {"type": 2, "id": 3, "tagName": "html", "attributes": {}, "childNodes": [
            {"type": 2, "id": 4, "tagName": "head", "attributes": {}, "childNodes": [
                {"type": 2, "id": 12, "tagName": "style",
                 "attributes": {"_cssText": "#title { color: rgb(0, 128, 0); }"},
                 "childNodes": []}]},
            {"type": 2, "id": 5, "tagName": "body", "attributes": {}, "childNodes": [
                {"type": 2, "id": 6, "tagName": "h1", "attributes": {"id": "title"},
                 "childNodes": [{"type": 3, "id": 7, "textContent": "Stand-in page"}]},
                {"type": 2, "id": 8, "tagName": "p",
                 "attributes": {"id": "ticker", "style": "font-weight: 700;"},
                 "childNodes": [{"type": 3, "id": TICKER_TEXT_ID,
                                 "textContent": "tick 0"}]},
                {"type": 2, "id": BUTTON_ID, "tagName": "button",
                 "attributes": {"id": "go"},
                 "childNodes": [{"type": 3, "id": 11, "textContent": "Go"}]},
            ]},
        ]},
    ]}
    t = now_ms()
    return [{"type": 4, "data": {"href": url, "width": 800, "height": 600}, "timestamp": t},
            {"type": 2, "data": {"node": node, "initialOffset": {"left": 0, "top": 0}},
             "timestamp": t}]


def tick(n: int) -> dict[str, Any]:
    return {"type": 3, "timestamp": now_ms(), "data": {
        "source": 0, "texts": [{"id": TICKER_TEXT_ID, "value": f"tick {n}"}],
        "attributes": [], "removes": [], "adds": []}}


async def standin(process: Any, ctx: SessionContext) -> int:
    log_path = os.environ.get("STANDIN_LOG")

    def note(line: str) -> None:
        if log_path:
            with open(log_path, "a") as f:
                f.write(line.rstrip("\n") + "\n")

    async def say(obj: dict[str, Any]) -> None:
        process.stdout.write(json.dumps(obj) + "\n")
        await process.stdout.drain()

    first = await process.stdin.readline()
    note(first)
    try:
        start = json.loads(first)
        assert start["type"] == "start"
    except (ValueError, KeyError, AssertionError):
        await say({"type": "error", "error": "bad_request", "detail": "no start line"})
        return 2
    if start.get("reason") == "standin:refuse":
        await say({"type": "consent", "what": "view", "answer": "no"})
        process.stderr.write(json.dumps({"refused": "customer_declined"}) + "\n")
        return 77
    url = start.get("url") or "https://example.test/"
    await say({"type": "consent", "what": "view", "answer": "yes"})
    await say({"type": "nav", "url": url})
    await say({"type": "rrweb", "events": snapshot(url)})
    await say({"type": "bogus", "note": "not the contract's: the relay drops it"})

    async def ticker() -> None:
        n = 0
        period = float(os.environ.get("STANDIN_TICK", "1"))
        while True:
            await asyncio.sleep(period)
            n += 1
            await say({"type": "rrweb", "events": [tick(n)]})

    ticking = asyncio.ensure_future(ticker())
    try:
        while True:
            line = await process.stdin.readline()
            if not line:
                return 0
            note(line)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            kind = msg.get("type")
            if kind == "request_control":
                await say({"type": "consent", "what": "control", "answer": "yes"})
                await say({"type": "control", "state": "granted"})
            elif kind == "release_control":
                await say({"type": "control", "state": "revoked"})
            elif kind == "propose_url" and str(msg["url"]).endswith(("#paused", "#resumed")):
                # The real agent's pause (the customer's own mouse or keyboard), on cue.
                await say({"type": "control", "state": msg["url"].rsplit("#", 1)[1]})
            elif kind == "propose_url":
                await say({"type": "nav", "url": msg["url"]})
            elif kind == "screencast" and msg.get("on"):
                frame = base64.b64encode(
                    os.urandom(int(os.environ.get("STANDIN_FRAME_KIB", "256")) * 768)
                ).decode()
                for _ in range(int(os.environ.get("STANDIN_FRAMES", "0"))):
                    await say({"type": "frame", "b64": frame, "w": 800, "h": 600})
                await say({"type": "hidden", "what": ["password fields"]})
            elif kind == "end":
                await say({"type": "ended", "reason": "technician"})
                return 0
    finally:
        ticking.cancel()
        with contextlib.suppress(BaseException):
            await ticking


def registry() -> capabilities.Registry:
    reg = builtin()
    reg.register("cobrowse", standin, "test: a stand-in co-browse (no browser)",
                 replace=True)
    return reg


builtin = capabilities.builtin_registry
capabilities.builtin_registry = registry
sessions.builtin_registry = registry  # type: ignore[attr-defined]

if __name__ == "__main__":
    from backline.agent.cli import main

    sys.exit(main())
