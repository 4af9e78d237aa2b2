"""The co-browse room's pure parts (relay/capabilities/cobrowse.py): what a console may
send (only the contract's messages, typed and bounded, normalised before they reach the
agent), what the agent may send (bounded JSON objects of known types), what the audit
trail keeps of a URL, and the catch-up a late watcher gets."""

from __future__ import annotations

import json

import pytest

from backline.relay.capabilities import cobrowse as cb


def test_the_contract_messages_pass_normalised() -> None:
    mouse = cb.parse_message(json.dumps({"type": "input", "kind": "mouse",
                                         "event": "mousePressed", "x": 10, "y": 2.5,
                                         "button": "left", "clicks": 1}))
    assert json.loads(mouse.model_dump_json()) == {
        "type": "input", "kind": "mouse", "event": "mousePressed", "x": 10.0, "y": 2.5,
        "button": "left", "clicks": 1}
    key = cb.parse_message('{"type":"input","kind":"key","event":"keyDown","key":"a",'
                           '"code":"KeyA","text":"a"}')
    assert isinstance(key, cb.Key)
    wheel = cb.parse_message('{"type":"input","kind":"wheel","x":1,"y":1,"dx":0,"dy":-120}')
    assert isinstance(wheel, cb.Wheel)
    for text, kind in [('{"type":"request_control"}', cb.RequestControl),
                       ('{"type":"release_control"}', cb.ReleaseControl),
                       ('{"type":"pointer","x":0,"y":0}', cb.Pointer),
                       ('{"type":"propose_url","url":"https://a.test/x?y=1"}', cb.ProposeUrl),
                       ('{"type":"screencast","on":true}', cb.Screencast),
                       ('{"type":"end"}', cb.End)]:
        assert isinstance(cb.parse_message(text), kind)
    start = cb.parse_start('{"type":"start","url":null,"reason":"ticket 1"}')
    assert start.url is None and start.screencast is False


@pytest.mark.parametrize("text", [
    "", "not json", "[1]", "null", '"input"', '{"type":"start"}',
    '{"type":"input","kind":"mouse","event":"mousePressed","x":-1,"y":0}',
    '{"type":"input","kind":"mouse","event":"click","x":1,"y":0}',
    '{"type":"input","kind":"mouse","event":"mousePressed","x":1,"y":0,"button":"middle"}',
    '{"type":"input","kind":"mouse","event":"mouseMoved","x":"1","y":0}',
    '{"type":"input","kind":"mouse","event":"mouseMoved","x":1,"y":0,"clicks":9}',
    '{"type":"input","kind":"key","event":"keyDown","key":""}',
    '{"type":"input","kind":"key","event":"keyDown","key":"a","code":"Key A"}',
    '{"type":"input","kind":"key","event":"char","key":"a","text":"' + "a" * 9 + '"}',
    '{"type":"input","kind":"touch","x":1,"y":1}',
    '{"type":"input","kind":"wheel","x":1,"y":1,"dx":Infinity,"dy":0}',
    '{"type":"pointer","x":1,"y":1,"extra":1}',
    '{"type":"propose_url","url":"file:///etc/passwd"}',
    '{"type":"propose_url","url":"https://a.test/ space"}',
    '{"type":"propose_url","url":"https://a.test/' + "x" * 2100 + '"}',
    '{"type":"screencast","on":1}',
    '{"type":"end"}' + " " * 5000,
])
def test_anything_else_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(cb.BadMessage) as err:
        cb.parse_message(text)
    assert "passwd" not in str(err.value) and len(str(err.value)) <= 200


@pytest.mark.parametrize("text", [
    '{"type":"start","url":"javascript:alert(1)"}',
    '{"type":"start","reason":"two\\nlines"}',
    '{"type":"start","technician":"someone else"}',
])
def test_a_bad_start_is_refused(text: str) -> None:
    with pytest.raises(cb.BadMessage):
        cb.parse_start(text)


def test_agent_lines_are_bounded_objects_of_known_types() -> None:
    ok = cb.parse_agent_line(b'{"type":"rrweb","events":[{"type":3}]}')
    assert ok["type"] == "rrweb"
    # The customer's answer to an address proposed without control is one of theirs.
    assert cb.parse_agent_line(b'{"type":"consent","what":"propose_url","answer":"no"}')
    for bad, why in [(b"not json", "not_json"), (b"[1]", "unknown_type"),
                     (b'{"type":"shell"}', "unknown_type"),
                     (b'{"type":"rrweb","events":{}}', "bad_events"),
                     (b'{"type":"rrweb","events":[' + b"{}," * 200 + b"{}]}", "bad_events"),
                     (b'{"type":"control","state":"mine"}', "bad_state"),
                     (b'{"type":"consent","what":"view","answer":"maybe"}', "bad_consent"),
                     (b'{"type":"nav","url":5}', "bad_url"),
                     (b'{"type":"nav","url":NaN}', "not_json"),
                     (b'{"type":"frame","b64":"' + b"A" * cb.MAX_LINE + b'"}', "too_large"),
                     (b'{"type":"nav","url":"\xff"}', "not_json")]:
        with pytest.raises(cb.BadLine) as err:
            cb.parse_agent_line(bad)
        assert str(err.value) == why, bad[:60]


def test_the_trail_keeps_no_query_of_a_url() -> None:
    assert cb.audited_url("https://shop.test/cart?token=s3cret#frag") == "https://shop.test/cart"
    assert len(cb.audited_url("https://a.test/" + "x" * 1000)) == 300
