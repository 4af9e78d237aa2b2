"""Control pauses while the customer uses their own mouse or keyboard (real Chromium).

The customer's input is simulated as what it is to the page: trusted input that the
agent did not dispatch (``Input.dispatch*`` on the agent's browser connection, but not
through ``CoBrowse.input``, so not in its ledger). The technician's own clicks and keys
must not pause control; the customer's must, at once, and the technician's input is
refused while paused; after a quiet spell control resumes and input reaches the page
again. Also the ledger and the report parser by themselves, hostile cases included.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from backline.agent.cobrowse import handsoff
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


def test_ledger_claims_only_what_was_dispatched() -> None:
    ledger = handsoff.Ledger()
    ledger.dispatched("mousedown", 10.0, x=100.0, y=50.0)
    ledger.dispatched("keydown", 10.0, key="a")
    report = {"t": "mousedown", "key": "", "x": 101.0, "y": 49.0}
    assert ledger.claim(report, 10.1)
    assert not ledger.claim(report, 10.1)  # claimed once only
    assert not ledger.claim({"t": "keydown", "key": "b", "x": 0, "y": 0}, 10.1)
    assert not ledger.claim({"t": "mousedown", "key": "", "x": 300, "y": 50}, 10.1)
    assert not ledger.claim({"t": "keydown", "key": "a", "x": 0, "y": 0}, 10 + 60)  # too old


@pytest.mark.parametrize("payload", [None, 5, "", "nope", "[]", '{"t": "mousemove"}',
                                     '{"t": "keydown", "key": 5}',
                                     '{"t": "wheel", "x": "1"}', '{"t": "wheel", "x": true}',
                                     '{"t": "keydown", "key": "' + "k" * 40 + '"}',
                                     "x" * 1000])
def test_reports_that_are_not_one_are_refused(payload: object) -> None:
    assert handsoff.parse_report(payload) is None


pytestmark_chromium = pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium")


@pytestmark_chromium
@run_async
async def test_customer_input_pauses_control_and_quiet_resumes_it(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES, YES))
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "TICK-1" in ch.text(), 60)
        ctx = server_ctx(server)
        cb = ctx.extra["cobrowse_session"]
        sid = cb.pages[-1]
        box = await page_eval(kit, ctx, "(() => { const r = document.getElementById('btn')"
                                        ".getBoundingClientRect(); return [r.x + r.width / 2,"
                                        " r.y + r.height / 2]; })()")
        name = await page_eval(kit, ctx, "(() => { const r = document.getElementById('name')"
                                         ".getBoundingClientRect(); return [r.x + 5,"
                                         " r.y + r.height / 2]; })()")

        def states() -> list[str]:
            return [m["state"] for m in ch.of("control")]

        def click(x: float, y: float) -> None:
            for event in ("mousePressed", "mouseReleased"):
                ch.send({"type": "input", "kind": "mouse", "event": event, "x": x, "y": y,
                         "button": "left", "clicks": 1})

        def key(c: str) -> None:
            ch.send({"type": "input", "kind": "key", "event": "keyDown", "key": c,
                     "code": "", "text": c})
            ch.send({"type": "input", "kind": "key", "event": "keyUp", "key": c,
                     "code": "", "text": ""})

        async def customer(**params: Any) -> None:
            """Trusted input the agent did not dispatch: the customer's own hands."""
            method = "Input.dispatchKeyEvent" if "key" in params else "Input.dispatchMouseEvent"
            await cb.browser.conn.send(method, params, sid)

        ch.send({"type": "request_control"})
        await ch.until(lambda: states()[-1:] == ["granted"])
        # The technician's own clicks and typing: control stays granted.
        click(*box)
        click(*name)
        for c in "ab":
            key(c)
        await ch.until(lambda: "clicks: 1" in ch.text())
        await asyncio.sleep(1.0)
        assert await page_eval(kit, ctx, "document.getElementById('name').value") == "ab"
        assert states() == ["granted"]
        # A script of the page dispatching events grants nothing and pauses nothing
        # (they are not trusted).
        await page_eval(kit, ctx, "document.dispatchEvent(new KeyboardEvent('keydown', "
                                  "{key: 'q'})); document.getElementById('btn').click()")
        await asyncio.sleep(0.5)
        assert states() == ["granted"]
        # The customer types a key: paused at once; the technician's click is refused.
        await customer(type="keyDown", key="c", text="c")
        await customer(type="keyUp", key="c")
        await ch.until(lambda: states()[-1:] == ["paused"], 10)
        clicks_before = await page_eval(kit, ctx, "window.__clicks.length")
        click(*box)
        await ch.until(lambda: any(m.get("error") == "control_paused" for m in ch.of("error")))
        await asyncio.sleep(0.3)
        assert await page_eval(kit, ctx, "window.__clicks.length") == clicks_before
        # The customer's mouse keeps it paused; after 1.5 s without either, resumed.
        await customer(type="mousePressed", x=5, y=5, button="left", clickCount=1)
        await customer(type="mouseReleased", x=5, y=5, button="left", clickCount=1)
        await asyncio.sleep(0.5)
        assert states()[-1] == "paused"
        await ch.until(lambda: states()[-1:] == ["resumed"], 10)
        assert states() == ["granted", "paused", "resumed"]
        click(*box)
        await ch.until(lambda: f"clicks: {clicks_before + 1}" in ch.text())
        got = await page_eval(kit, ctx, "window.__clicks")
        assert len(got) == clicks_before + 1 and got[-1]["trusted"] is True
        # Released: customer input no longer says anything.
        ch.send({"type": "release_control"})
        await ch.until(lambda: states()[-1:] == ["revoked"])
        await customer(type="keyDown", key="d", text="d")
        await asyncio.sleep(0.5)
        assert states()[-1] == "revoked"
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    events = [e["event"] for e in kit.log.read()]
    assert "cobrowse.control.paused" in events and "cobrowse.control.resumed" in events
    assert "control_paused" in [e.get("reason") for e in kit.log.read()
                                if e["event"] == "cobrowse.refused"]
    await asyncio.wait_for(server, 10)
