"""Popups (real Chromium): the newest page is the one streamed and the one the
technician's input reaches; when it closes, the page under it is shown again (its
address, a fresh full snapshot) and input goes back to it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

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

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium on the machine")


@run_async
async def test_input_follows_the_newest_page_and_comes_back(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    base = f"http://127.0.0.1:{site['a']}/"
    kit = kit_for(tmp_path, ScriptedAsker(YES, YES))
    conn, ch, server = await open_cobrowse(kit, base)
    async with conn:
        await ch.until(lambda: "TICK-1" in ch.text(), 60)
        ctx = server_ctx(server)
        cb = ctx.extra["cobrowse_session"]
        first = cb.pages[-1]
        ch.send({"type": "request_control"})
        await ch.until(lambda: [m["state"] for m in ch.of("control")] == ["granted"])

        async def clicks(sid: str) -> int:
            answer = await cb.browser.conn.send("Runtime.evaluate", {
                "expression": "window.__clicks.length", "returnByValue": True}, sid)
            return int(answer["result"]["value"])

        def click_button() -> None:
            for event in ("mousePressed", "mouseReleased"):
                ch.send({"type": "input", "kind": "mouse", "event": event, "x": box[0],
                         "y": box[1], "button": "left", "clicks": 1})

        box = await page_eval(kit, ctx, "(() => { const r = document.getElementById('btn')"
                                        ".getBoundingClientRect(); return [r.x + r.width / 2,"
                                        " r.y + r.height / 2]; })()")
        # The page opens a popup (same site, another address): it is streamed, and input
        # goes to it, not to the page under it.
        await cb.browser.conn.send("Runtime.evaluate", {
            "expression": f"window.open({base + 'index.html?popup=1'!r}, 'p', "
                          "'width=1280,height=700') && true", "userGesture": True}, first)
        # (its address as the relay sees it: without the query, issue 13's privacy)
        await ch.until(lambda: any(m["url"] == base + "index.html" for m in ch.of("nav")), 30)
        await ch.until(lambda: len(cb.pages) == 2 and cb.pages[-1] != first, 10)
        popup = cb.pages[-1]
        def popup_snapshot() -> bool:
            events = [e for line in ch.of("rrweb") for e in line["events"]]
            metas = [i for i, e in enumerate(events) if e["type"] == 4
                     and str(e["data"].get("href", "")) == base + "index.html"]
            return bool(metas) and any(e["type"] == 2 for e in events[metas[0]:])

        await ch.until(popup_snapshot, 30)
        await asyncio.sleep(0.5)
        click_button()
        for _ in range(100):
            if await clicks(popup) == 1:
                break
            await asyncio.sleep(0.1)
        assert (await clicks(popup), await clicks(first)) == (1, 0)
        # The popup closes: the first page is shown again, with its address and a fresh
        # full snapshot, and input reaches it.
        lines_before = len(ch.lines)
        await cb.browser.conn.send("Runtime.evaluate", {"expression": "window.close()"},
                                   popup)
        await ch.until(lambda: cb.pages == [first], 20)
        await ch.until(lambda: any('"type":"nav"' in x and '"url":"' + base + '"' in x
                                   for x in ch.lines[lines_before:]), 10)
        await ch.until(lambda: any('{"type":2,' in x for x in ch.lines[lines_before:]), 20)
        click_button()
        for _ in range(100):
            if await clicks(first) == 1:
                break
            await asyncio.sleep(0.1)
        assert await clicks(first) == 1
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    await asyncio.wait_for(server, 10)
