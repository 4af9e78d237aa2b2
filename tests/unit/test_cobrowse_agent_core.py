"""The co-browse agent's pure parts, hostile cases first: the DevTools framing, the
page-event gate and batcher, the [cobrowse] policy, URL globs and the room's line reader."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from backline.agent.capabilities.cobrowse import LineReader, _BadRequest, parse_start
from backline.agent.cobrowse import events as ev
from backline.agent.cobrowse.cdp import CDPCore, CDPProtocolError, Event, Response
from backline.agent.cobrowse.recorder import Privacy, glob_regex, injection, url_matches
from backline.agent.policy import CobrowsePolicy, PolicyError, from_table
from tests.unit.test_wstunnel import run_async


def test_cdp_core_frames_partial_and_many_messages() -> None:
    core = CDPCore()
    ident, data = core.command("Page.navigate", {"url": "x"}, "S1")
    assert data.endswith(b"\0") and json.loads(data[:-1]) == {
        "id": ident, "method": "Page.navigate", "params": {"url": "x"}, "sessionId": "S1"}
    assert core.receive(b'{"id":1,"result":{"a":1}}\0{"method":"E","params":{},"sess') == [
        Response(1, {"a": 1}, None, None)]
    assert core.receive(b'ionId":"S"}\0') == [Event("E", {}, "S")]


@pytest.mark.parametrize("junk", [b"not json\0", b"[1,2]\0", b'{"neither":1}\0',
                                  b"[" * 100000 + b"\0"])
def test_cdp_core_refuses_junk(junk: bytes) -> None:
    with pytest.raises(CDPProtocolError):
        CDPCore().receive(junk)


def test_cdp_core_skips_a_message_over_its_limit_and_goes_on() -> None:
    """An oversize message (a page's huge console.log) is skipped up to its NUL, counted,
    and the messages after it still arrive: it is not the end of the co-browse."""
    core = CDPCore(max_message=1000)
    assert core.receive(b'{"id":1,"result":{}}\0' + b"x" * 1001) == [
        Response(1, {}, None, None)]
    assert core.skipped == 1
    assert core.receive(b"y" * 5000) == []  # still inside it: dropped, not buffered
    assert len(core._buffer) == 0
    assert core.receive(b'zz\0{"id":2,"result":{}}\0') == [Response(2, {}, None, None)]
    # An oversize message that ends in the same chunk is skipped as well.
    assert core.receive(b'{"method":"' + b"a" * 2000 + b'"}\0{"id":3}\0') == [
        Response(3, None, None, None)]
    assert core.skipped == 2


def test_cdp_core_discards_console_events_unparsed() -> None:
    core = CDPCore()
    junk = b'{"method":"Runtime.consoleAPICalled","params":' + b"[" * 100000 + b"\0"
    thrown = b'{"method":"Runtime.exceptionThrown","params":{}}\0'
    # A returned value holding the same words is a response, and is kept.
    kept = b'{"id":4,"result":{"value":{"method":"Runtime.consoleAPICalled"}}}\0'
    assert core.receive(junk + thrown + kept) == [
        Response(4, {"value": {"method": "Runtime.consoleAPICalled"}}, None, None)]
    assert core.discarded == 2


def test_cdp_core_scans_each_byte_once() -> None:
    """A large message in small chunks is not rescanned from its start per chunk."""
    core = CDPCore()
    chunk = b"x" * 65536
    started = time.process_time()
    for _ in range(256):  # 16 MiB in 64 KiB reads
        assert core.receive(chunk) == []
    assert core._scanned == 256 * 65536
    assert time.process_time() - started < 2.0  # quadratic: about 256 * 8 MiB scanned
    core._buffer.clear()
    core._scanned = 0


def event(kind: int = 3, **data: Any) -> dict[str, Any]:
    return {"type": kind, "timestamp": 1.0, "data": data}


def test_gate_keeps_only_rrweb_events_and_their_three_fields() -> None:
    gate = ev.Gate()
    payload = json.dumps([event(2, node={}), {"type": 9, "timestamp": 1, "data": {}},
                          {"type": True, "timestamp": 1, "data": {}},
                          {"type": 3, "timestamp": "x", "data": {}},
                          {"type": 3, "timestamp": 1, "data": []}, "str", None,
                          {**event(), "extra": "dropped"}])
    kept = gate.accept(payload, now=time.monotonic())
    assert [e for e, _ in kept] == [event(2, node={}), event()]
    assert gate.malformed == 6


@pytest.mark.parametrize("payload", [None, 5, "{}", "nope", "[" * 50000,
                                     "x" * (ev.MAX_PAYLOAD_CHARS + 1)])
def test_gate_refuses_what_is_not_a_list_of_events(payload: object) -> None:
    gate = ev.Gate()
    assert gate.accept(payload, now=0) == []
    assert gate.malformed == 1


def test_gate_caps_rate_and_size_and_asks_for_a_snapshot_after() -> None:
    gate = ev.Gate()
    t = time.monotonic()
    big = json.dumps([event(text="y" * ev.MAX_EVENT_BYTES)])
    assert gate.accept(big, now=t) == [] and gate.dropped_events == 1
    many = json.dumps([event(i=i) for i in range(int(ev.EVENTS_BURST) + 500)])
    gate = ev.Gate()
    kept = gate.accept(many, now=t)
    assert len(kept) == int(ev.EVENTS_BURST) and gate.dropped_events == 500
    assert gate.needs_snapshot and not gate.recovered(now=t)
    assert gate.recovered(now=t + 10)
    gate.accept(json.dumps([event(2)]), now=t + 10)
    assert not gate.needs_snapshot


def test_batcher_bounds_lines() -> None:
    batcher = ev.Batcher()
    lines: list[str] = []
    for i in range(450):
        lines += batcher.add(json.dumps(event(i=i)))
    lines.append(batcher.flush())
    counts = [len(json.loads(line)["events"]) for line in lines]
    assert counts == [200, 200, 50]
    big = json.dumps(event(text="z" * 300_000))
    lines = batcher.add(json.dumps(event())) + batcher.add(big)
    assert len(batcher) == 0
    assert [len(json.loads(x)["events"]) for x in lines] == [1, 1]
    assert all(len(x) <= 1024 * 1024 for x in lines)


def test_policy_cobrowse_section_is_checked() -> None:
    policy = from_table({"cobrowse": {"browser": "/usr/bin/chromium", "headless": True,
                                      "mask_selectors": [".acct"], "screencast": True}})
    assert policy.cobrowse == CobrowsePolicy("/usr/bin/chromium", "true", (".acct",), (), (),
                                             (), True)
    assert from_table({}).cobrowse.screencast is False
    for bad in ({"nope": 1}, {"screencast": "yes"}, {"headless": "maybe"},
                {"mask_selectors": "x"}, {"block_selectors": ["a\nb"]},
                {"allowed_urls": ["x" * 301]}, {"private_urls": [1]}):
        with pytest.raises(PolicyError):
            from_table({"cobrowse": bad})


def test_url_globs() -> None:
    assert url_matches("https://a.example.com/x", ("https://*.example.com/*",))
    assert not url_matches("https://example.com.evil/x", ("https://*.example.com/*",))
    assert not url_matches("https://a.example.com/x", ("https://example.com/*",))
    assert glob_regex("a.b") == "^a\\.b$"


def test_the_injection_carries_the_privacy_options() -> None:
    policy = CobrowsePolicy(block_selectors=("#statement",), private_urls=("https://bank/*",))
    script = injection("__bltest", Privacy.from_policy(policy))
    assert '"blockSelector": "[data-backline-private], [data-backline-overlay], #statement"' \
        in script
    assert "maskAllInputs: true" in script and "recordCanvas: false" in script
    assert "rrwebRecord" in script and "__RRWEB__" not in script


class FakeStdin:
    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks

    async def read(self, n: int) -> str:
        return self.chunks.pop(0) if self.chunks else ""


class FakeProcess:
    def __init__(self, chunks: list[str]) -> None:
        self.stdin = FakeStdin(chunks)


@run_async
async def test_line_reader_bounds_lines() -> None:
    reader = LineReader(FakeProcess(['{"type":"end"}\n[1]\n', "x" * (1024 * 1024 + 10),
                                     "x\n", '{"a":', '1}']))
    assert await reader.next() == {"type": "end"}
    assert await reader.next() == {}  # not an object
    assert await reader.next() == {}  # over 1 MiB
    assert await reader.next() == {"a": 1}  # the last line, without its newline
    assert await reader.next() is None


def test_start_line_is_checked() -> None:
    assert parse_start({"type": "start", "url": None})["url"] is None
    for bad in (None, {"type": "input"}, {"type": "start", "url": 5},
                {"type": "start", "url": "x" * 5000}, {"type": "start", "screencast": 1},
                {"type": "start", "reason": "r" * 501}):
        with pytest.raises(_BadRequest):
            parse_start(bad)


@run_async
async def test_the_indicator_says_what_is_granted(tmp_path: Any) -> None:
    """A consent program that says yes and stays open is the indicator; its text for a
    co-browse is the co-browse's (not the terminal's), and closing it ends the grant."""
    import sys

    from backline.agent.consent import CommandAsker

    out = tmp_path / "argv.json"
    program = ("import json, sys, time\n"
               f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
               "print('yes', flush=True)\ntime.sleep(0.5)\n")
    asker = CommandAsker([sys.executable, "-c", program],
                         [sys.executable, "-c", program, "DEFAULT TEXT"])
    asker.hold_text = "DEFAULT TEXT"
    answer = await asker.ask_and_hold("May alice watch?", 20, None, "cobrowse",
                                      indicator="WATCHING")
    assert answer.allowed and answer.held is not None
    assert json.loads(out.read_text()) == ["WATCHING", "May alice watch?"]
    await asyncio.wait_for(answer.held.ended.wait(), 10)
