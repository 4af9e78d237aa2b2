"""Privacy at the source (issue 13), with real Chromium and the loopback test site.

What leaves the machine for a page matching ``private_urls``, or a frame the page
embeds: the ``nav`` line is cut to ``scheme://host/path`` (no query: a token) and, for a
private page, to its origin and ``"private": true``; a single-page app moving to a
private address by pushState stops being recorded (the view is blanked) and resumes
with a fresh full snapshot when it leaves; a private same-origin frame is blocked in
its parent's recording; no screencast frame of a private page; a cross-origin frame's
content is recorded through the agent, never posted to the embedding page (any of its
scripts could read rrweb's ``postMessage(…, "*")``; test_cobrowse_agent_frames.py has
the rest of it).
"""

from __future__ import annotations

import asyncio
import json
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


def rrweb_text(lines: list[dict]) -> str:
    return json.dumps([e for m in lines if m.get("type") == "rrweb" for e in m["events"]])


@run_async
async def test_a_pushstate_to_a_private_address_stops_the_recording(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES), private_urls=["*/account/*"],
                  screencast=True)
    a = f"http://127.0.0.1:{site['a']}"
    conn, ch, server = await open_cobrowse(kit, f"{a}/?q=START-TOKEN#frag-TOKEN")
    async with conn:
        await ch.until(lambda: "TICK-" in ch.text(), 60)
        # The address without its query or fragment.
        assert {"type": "nav", "url": f"{a}/"} in ch.of("nav"), ch.of("nav")
        ch.send({"type": "screencast", "on": True})
        await ch.until(lambda: ch.of("frame"), 30)
        ctx = server_ctx(server)
        await page_eval(kit, ctx, "history.pushState({}, '', '/account/7?session=PUSH-TOKEN');"
                                  "document.getElementById('tick').id = 'gone';"
                                  "document.body.insertAdjacentHTML('beforeend',"
                                  " '<p id=acct>ACCOUNT-SECRET-8812</p>')")
        await ch.until(lambda: any(m.get("private") for m in ch.of("nav")), 15)
        private_at = len(ch.lines)
        await asyncio.sleep(2.5)
        after = [json.loads(x) for x in ch.lines[private_at:]]
        assert not [m for m in after if m.get("type") == "frame"], "a private page's pixels"
        # Back to a public address: a fresh full snapshot, then frames again.
        # (as a single-page app replaces its view: the private content goes first)
        await page_eval(kit, ctx, "document.getElementById('acct').remove();"
                                  "history.pushState({}, '', '/again?x=BACK-TOKEN');"
                                  "document.body.insertAdjacentHTML('beforeend',"
                                  " '<p>PUBLIC-AGAIN-TEXT</p>')")
        await ch.until(lambda: "PUBLIC-AGAIN-TEXT" in ch.text(), 15)
        await ch.until(lambda: ch.of("frame")[-1:] and len(ch.lines) > private_at
                       and any(json.loads(x).get("type") == "frame"
                               for x in ch.lines[private_at:]), 15)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    text = ch.text()
    for secret in ("START-TOKEN", "frag-TOKEN", "PUSH-TOKEN", "BACK-TOKEN", "account/7"):
        assert secret not in text, [x[:300] for x in ch.lines if secret in x]
    assert "ACCOUNT-SECRET-8812" not in rrweb_text(ch.parsed())
    navs = ch.of("nav")
    assert {"type": "nav", "url": a, "private": True} in navs, navs
    assert {"type": "nav", "url": f"{a}/again"} in navs, navs
    # The view was blanked at the private address (an empty full snapshot after its nav).
    lines = ch.parsed()
    at = next(i for i, m in enumerate(lines) if m.get("private"))
    blank = lines[at + 1]
    assert blank["type"] == "rrweb" and blank["events"][0]["type"] == 2
    assert blank["events"][0]["data"]["node"]["childNodes"] == []
    await asyncio.wait_for(server, 10)


@run_async
async def test_a_private_same_origin_frame_is_blocked_in_its_parent(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES), private_urls=["*/same.html*"])
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "TICK-3" in ch.text(), 60)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    text = rrweb_text(ch.parsed())
    assert "Co-browse test site" in text
    assert "SAME-ORIGIN-FRAME-TEXT" not in text, [
        json.dumps(e)[:400] for m in ch.of("rrweb") for e in m["events"]
        if "SAME-ORIGIN-FRAME-TEXT" in json.dumps(e)]
    assert "data-backline-private" in text or "rr_width" in text
    await asyncio.wait_for(server, 10)


@run_async
async def test_a_same_origin_frame_that_moves_to_a_private_address_stops_being_recorded(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    """The frame's own start-up cannot see a pushState; the top document's rrweb cuts
    what belongs to a frame whose address is private at the moment it is sent (the
    same cut closes the race in which a loaded frame was serialised before it marked
    itself)."""
    kit = kit_for(tmp_path, ScriptedAsker(YES), private_urls=["*/frame-account*"])
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "SAME-ORIGIN-FRAME-TEXT" in rrweb_text(ch.parsed()), 60)
        ctx = server_ctx(server)
        await page_eval(kit, ctx, "(() => { const w = document.getElementById('same')"
                                  ".contentWindow; w.document.body.insertAdjacentHTML("
                                  "'beforeend', '<p>FRAME-PUBLIC-TEXT</p>'); })()")
        await ch.until(lambda: "FRAME-PUBLIC-TEXT" in rrweb_text(ch.parsed()), 15)
        await page_eval(kit, ctx, "(() => { const w = document.getElementById('same')"
                                  ".contentWindow; w.history.pushState({}, '', "
                                  "'/frame-account/3'); w.document.body.insertAdjacentHTML("
                                  "'beforeend', '<p>FRAME-PRIVATE-TEXT</p>');"
                                  " w.document.getElementById('same-text').textContent ="
                                  " 'FRAME-PRIVATE-EDIT'; })()")
        # The top page goes on being recorded (its ticks), the frame's changes do not.
        ticks = rrweb_text(ch.parsed()).count("TICK-")
        await ch.until(lambda: rrweb_text(ch.parsed()).count("TICK-") >= ticks + 2, 15)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    text = rrweb_text(ch.parsed())
    assert "FRAME-PRIVATE-TEXT" not in text
    assert "FRAME-PRIVATE-EDIT" not in text
    await asyncio.wait_for(server, 10)


@run_async
async def test_a_cross_origin_frame_is_recorded_but_never_posted_to_its_parent(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "TICK-" in ch.text(), 60)
        ctx = server_ctx(server)
        # A script of the embedding origin listens to every message, then the frame
        # loads again (and would post its full snapshot and mutations).
        await page_eval(kit, ctx, "window.__heard = [];"
                                  "addEventListener('message', (m) => window.__heard.push("
                                  "JSON.stringify(m.data)));"
                                  "const f = document.getElementById('cross');"
                                  "f.src = f.src + '?again'; true")
        await asyncio.sleep(3.5)  # the frame's text changes every second
        heard = await page_eval(kit, ctx, "JSON.stringify(window.__heard)")
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    assert "CROSS-ORIGIN-FRAME-TEXT" not in heard, heard[:500]
    assert "CROSS-ORIGIN-FRAME-TEXT" in ch.text()  # through the agent, not the page
    assert "SAME-ORIGIN-FRAME-TEXT" in ch.text()  # same-origin frames are still recorded
    await asyncio.wait_for(server, 10)


def test_shown_address_cuts_what_may_carry_a_secret() -> None:
    from backline.agent.cobrowse.recorder import shown_address

    private = ("*/account/*",)
    assert shown_address("https://u:pw@shop.example:8443/a/b?t=1#x", private) == {
        "url": "https://shop.example:8443/a/b"}
    assert shown_address("https://shop.example/account/7?t=1", private) == {
        "url": "https://shop.example", "private": True}
    assert shown_address("http://[::1]:80/x", ()) == {"url": "http://[::1]:80/x"}
    assert shown_address("about:blank", ()) == {"url": "about:blank"}
    assert shown_address("data:text/html,SECRET", ()) == {"url": "data:"}
    assert shown_address("http://[bad/", ())["url"] == ""


@run_async
async def test_no_screencast_frame_of_a_private_page(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    kit = kit_for(tmp_path, ScriptedAsker(YES), private_urls=["*/index.html*"],
                  screencast=True)
    a = f"http://127.0.0.1:{site['a']}"
    conn, ch, server = await open_cobrowse(kit, f"{a}/")
    async with conn:
        await ch.until(lambda: "TICK-" in ch.text(), 60)
        ch.send({"type": "screencast", "on": True})
        await ch.until(lambda: ch.of("frame"), 30)
        # A new document on a private address (the page ticks: frames would keep coming).
        await page_eval(kit, server_ctx(server), "location.href = '/index.html?k=1'; true")
        await ch.until(lambda: len(ch.of("nav")) >= 2, 15)
        at = len(ch.lines)
        await asyncio.sleep(2.5)
        later = [json.loads(x) for x in ch.lines[at:]]
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    assert not [m for m in later if m.get("type") == "frame"], "a private page's pixels"
    assert not [m for m in later if m.get("type") == "rrweb" and "TICK-" in json.dumps(m)]
    assert ch.of("nav")[-1] == {"type": "nav", "url": a, "private": True}
    await asyncio.wait_for(server, 10)


@run_async
async def test_a_refused_address_is_told_without_its_query(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    a = f"http://127.0.0.1:{site['a']}"
    kit = kit_for(tmp_path, ScriptedAsker(YES), allowed_urls=[f"{a}/same.html"])
    conn, ch, server = await open_cobrowse(kit, f"{a}/same.html")
    async with conn:
        await ch.until(lambda: "SAME-ORIGIN-FRAME-TEXT" in ch.text(), 60)
        # The page itself goes to an address outside the list (the request is failed).
        await page_eval(kit, server_ctx(server), "location.href = '/?reset=DENY-TOKEN'; true")
        await ch.until(lambda: any(m.get("error") == "url_not_allowed"
                                   for m in ch.of("error")), 30)
        # Chromium then shows its error page, which prints the refused address whole:
        # it is blanked, never recorded (it leaked the query before, now and then).
        await ch.until(lambda: any(str(m.get("url", "")).startswith("chrome-error:")
                                   and m.get("private") for m in ch.of("nav")), 30)
        assert any(m.get("error") == "page_failed" for m in ch.of("error"))  # and why
        await asyncio.sleep(1.5)  # what its recorder would have sent, it had the time to
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    refused = [m for m in ch.of("error") if m.get("error") == "url_not_allowed"]
    assert f"{a}/ is not allowed" in refused[0]["detail"], refused
    assert "DENY-TOKEN" not in ch.text()
    assert "DENY-TOKEN" not in (tmp_path / "activity.jsonl").read_text()
    await asyncio.wait_for(server, 10)


@run_async
async def test_editable_text_is_masked_like_an_input(tmp_path: Path,
                                                     site: dict[str, int]) -> None:  # noqa: F811
    """What the customer types into a contenteditable (a rich editor, a comment box) is
    an input's value in all but name: masked, as is the text it held."""
    kit = kit_for(tmp_path, ScriptedAsker(YES))
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "TICK-1" in ch.text(), 60)
        ctx = server_ctx(server)
        await page_eval(kit, ctx, "document.body.insertAdjacentHTML('beforeend', '<div "
                                  "id=\"ed\" contenteditable>EDITABLE-BEFORE</div>'); "
                                  "document.getElementById('ed').focus()")
        cb = ctx.extra["cobrowse_session"]
        await cb.browser.conn.send("Input.insertText", {"text": " EDIT-SECRET-77"},
                                   cb.pages[-1])
        await page_eval(kit, ctx, "document.body.insertAdjacentHTML('beforeend', "
                                  "'<p>PLAIN-AFTER-TEXT</p>')")
        await ch.until(lambda: "PLAIN-AFTER-TEXT" in rrweb_text(ch.parsed()), 15)
        held = await page_eval(kit, ctx, "document.getElementById('ed').textContent")
        assert "EDIT-SECRET-77" in held and "EDITABLE-BEFORE" in held  # the typing landed
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    text = ch.text()
    assert "EDIT-SECRET" not in text and "EDITABLE-BEFORE" not in text
    await asyncio.wait_for(server, 10)


@run_async
async def test_a_page_parsed_in_pieces_keeps_its_private_parts(
        tmp_path: Path, site: dict[str, int]) -> None:  # noqa: F811
    """The recorder starts at <html>, so what the parser inserts goes as mutations: a
    private element, a blocked one and a password field arrive in one piece and what
    they hold in later ones (``/slow.html``); none of it leaves the machine."""
    kit = kit_for(tmp_path, ScriptedAsker(YES), block_selectors=[".acct"])
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/slow.html")
    async with conn:
        await ch.until(lambda: "SLOW-PUBLIC-END" in ch.text(), 60)
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    text = ch.text()
    assert "SLOW-START" in text
    for secret in ("DEEP-SECRET", "ACCT-SECRET", "PW-ATTR-SECRET", "TEXTAREA-SECRET"):
        assert secret not in text, [x[:300] for x in ch.lines if secret in x]
    await asyncio.wait_for(server, 10)
