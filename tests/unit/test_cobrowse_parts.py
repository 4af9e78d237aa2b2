"""A full snapshot larger than a line: the agent splits it into ``rrweb_part`` lines
(agent/cobrowse/events.py), the relay checks them (relay/capabilities/cobrowse_parts.py:
bounded, in order, one at a time, within a time) and keeps them as the snapshot for a
watcher who joins later (the room's catch-up). Hostile cases next to the happy one."""

from __future__ import annotations

import json
from typing import Any

import pytest

from backline.agent.cobrowse import events as ev
from backline.relay.capabilities import cobrowse as cb
from backline.relay.capabilities import cobrowse_parts as cp


def snapshot_text(chars: int, filler: str = "n") -> str:
    return ev._dumps({"type": 2, "data": {"node": {"text": filler * chars}}, "timestamp": 1.0})


def split(text: str) -> list[str]:
    batcher = ev.Batcher()
    return batcher.add(ev._dumps({"type": 4, "data": {}, "timestamp": 1.0})) + batcher.add(text)


def test_a_large_event_goes_in_parts_that_join_back_and_fit_a_line() -> None:
    text = snapshot_text(3 * 1024 * 1024)
    lines = split(text)
    assert json.loads(lines[0])["type"] == "rrweb"  # what was batched goes first
    parts = [json.loads(x) for x in lines[1:]]
    assert len(parts) >= 6 and all(p["type"] == "rrweb_part" for p in parts)
    assert [p["index"] for p in parts] == list(range(len(parts)))
    assert {p["total"] for p in parts} == {len(parts)} and {p["event"] for p in parts} == {2}
    assert "".join(p["text"] for p in parts) == text
    assert all(len(x.encode()) <= cb.MAX_LINE for x in lines)
    for line in lines:  # the relay takes each
        cb.parse_agent_line(line.encode())


def test_escaping_never_makes_a_part_line_too_long() -> None:
    # Every character escaped to six bytes (a control character) or non-ASCII.
    for filler in ("\x01", "\u00e9", "\U0001f600"):
        lines = split(snapshot_text(600_000, filler))[1:]
        assert "".join(json.loads(x)["text"] for x in lines) == snapshot_text(600_000, filler)
        for x in lines:
            assert len(json.dumps(json.loads(x)).encode()) <= cb.MAX_LINE  # even as ASCII


def test_the_gate_lets_one_snapshot_over_the_burst_through_but_not_the_next() -> None:
    gate = ev.Gate()
    big = json.dumps([json.loads(snapshot_text(6 * 1024 * 1024))])
    assert len(gate.accept(big, now=100.0)) == 1
    assert gate.accept(big, now=100.5) == [] and gate.dropped_events == 1
    # Not a full snapshot: never over the burst.
    huge = json.dumps([{"type": 3, "timestamp": 1, "data": {"t": "m" * (5 * 1024 * 1024)}}])
    assert ev.Gate().accept(huge, now=0.0) == []


def part(index: int, total: int = 3, sid: str = "s1", text: str = "x", event: int = 2,
         **extra: Any) -> dict[str, Any]:
    return {"type": "rrweb_part", "id": sid, "index": index, "total": total, "event": event,
            "text": text, **extra}


@pytest.mark.parametrize("obj", [
    part(0, total=1), part(0, total=cp.MAX_PARTS + 1), part(3, total=3), part(-1),
    part(0, sid="bad id"), part(0, sid="x" * 33), part(0, text=""), part(0, event=7),
    {**part(0), "index": True}, {**part(0), "text": 5}, part(0, extra="field"),
    {**part(0), "index": 1.0},
])
def test_a_malformed_part_is_refused(obj: dict[str, Any]) -> None:
    with pytest.raises(cb.BadLine):
        cb.parse_agent_line(json.dumps(obj).encode())


def test_parts_in_order_make_a_whole() -> None:
    p = cp.Parts()
    assert p.part(part(0)) is None and p.part(part(1)) is None
    assert p.part(part(2)) == 2 and p.completed == 1 and p.open is None


def test_parts_out_of_order_abandon_the_assembly() -> None:
    p = cp.Parts()
    p.part(part(0))
    with pytest.raises(cp.BadPart, match="parts_out_of_order"):
        p.part(part(2))
    with pytest.raises(cp.BadPart, match="part_not_open"):  # the rest is dropped too
        p.part(part(1))
    assert p.abandoned == 1 and p.completed == 0
    p.part(part(0))
    p.part(part(1))
    with pytest.raises(cp.BadPart, match="parts_out_of_order"):  # a repeat
        p.part(part(1))
    p.part(part(0))
    with pytest.raises(cp.BadPart, match="parts_out_of_order"):  # a different count
        p.part(part(1, total=4))
    p.part(part(0))
    with pytest.raises(cp.BadPart, match="parts_out_of_order"):  # a different event
        p.part(part(1, event=3))


def test_a_part_without_its_first_is_dropped() -> None:
    with pytest.raises(cp.BadPart, match="part_not_open"):
        cp.Parts().part(part(1))


def test_interleaved_snapshots_keep_one_assembly_at_a_time() -> None:
    p = cp.Parts()
    p.part(part(0, sid="a"))
    p.part(part(0, sid="b"))  # replaces a
    assert p.abandoned == 1
    with pytest.raises(cp.BadPart, match="part_not_open"):
        p.part(part(1, sid="a"))
    assert p.part(part(1, sid="b")) is None and p.part(part(2, sid="b")) == 2
    # Any other rrweb line interrupts an open assembly.
    p.part(part(0, sid="c"))
    p.interrupted()
    with pytest.raises(cp.BadPart, match="part_not_open"):
        p.part(part(1, sid="c"))
    assert p.abandoned == 2


def test_parts_too_large_in_all_are_dropped() -> None:
    p = cp.Parts()
    piece = "y" * (1024 * 1024 - 200)
    p.part(part(0, total=cp.MAX_PARTS, text=piece))
    with pytest.raises(cp.BadPart, match="parts_too_large"):
        for i in range(1, cp.MAX_PARTS):
            p.part(part(i, total=cp.MAX_PARTS, text=piece))
    assert p.open is None and p.abandoned == 1


def test_an_assembly_never_finished_is_abandoned() -> None:
    now = [0.0]
    p = cp.Parts(clock=lambda: now[0])
    p.part(part(0))
    now[0] = cp.ASSEMBLY_WAIT_S + 1
    with pytest.raises(cp.BadPart, match="parts_too_slow"):
        p.part(part(1))
    assert p.abandoned == 1 and p.open is None
    assert p.part(part(0)) is None  # a new one may start


class _Room:
    """Just the room's catch-up (the real method, on a bare object)."""

    def __init__(self) -> None:
        self.catch_up: list[str] = []
        self.catch_up_bytes = 0
        self.catch_up_complete = False
        self.snapshot_from: int | None = None

    def line(self, obj: dict[str, Any], whole: int | None = None) -> None:
        cb.Room.keep_for_catch_up(self, obj, json.dumps(obj), whole)  # type: ignore[arg-type]


def rr(*types: int) -> dict[str, Any]:
    return {"type": "rrweb", "events": [{"type": t, "timestamp": 1, "data": {}} for t in types]}


def test_the_parts_count_as_the_snapshot_for_a_later_watcher() -> None:
    room = _Room()
    room.line(rr(4, 2))
    room.line(rr(3))
    assert room.catch_up_complete and len(room.catch_up) == 2
    # A new snapshot in parts: until it is whole, the old one and all after it stay.
    room.line(rr(4))
    room.line(part(0))
    room.line(part(1))
    assert room.catch_up_complete and len(room.catch_up) == 5
    room.line(part(2), whole=2)
    assert room.catch_up_complete
    assert [json.loads(f)["type"] for f in room.catch_up] == ["rrweb"] + ["rrweb_part"] * 3
    room.line(rr(3))
    assert len(room.catch_up) == 5
    # Parts of something not a full snapshot do not make a catch-up.
    fresh = _Room()
    fresh.line(part(0, event=3))
    fresh.line(part(2, event=3), whole=3)
    assert not fresh.catch_up_complete


class _Queues:
    """Just the room's fan-out to one console (the real method, on a bare object)."""

    def __init__(self) -> None:
        self.hung_up: list[str] = []

    def hang_up(self, viewer: Any, code: str = "", detail: str = "") -> None:
        self.hung_up.append(code)
        viewer.gone = True


def test_a_snapshot_in_parts_may_queue_past_the_bound_other_lines_may_not() -> None:
    room = _Queues()
    viewer = cb.Viewer(None, "u", "user:u", "watch")  # type: ignore[arg-type]
    part_frame = ('{"type":"agent","msg":'
                  + json.dumps(part(0, text="p" * 1_000_000), separators=(",", ":")) + "}")
    for _ in range(8):  # 8 MB of parts: over MAX_QUEUED, kept
        cb.Room._send(room, viewer, part_frame)  # type: ignore[arg-type]
    assert room.hung_up == [] and viewer.queued > cb.MAX_QUEUED
    cb.Room._send(room, viewer, '{"type":"agent","msg":{"type":"rrweb","events":[]}}')  # type: ignore[arg-type]
    assert room.hung_up == ["too_slow"]
    # A console that never reads is still hung up within one snapshot's parts.
    slow = cb.Viewer(None, "u", "user:u", "watch")  # type: ignore[arg-type]
    room.hung_up = []
    for _ in range(40):
        if slow.gone:
            break
        cb.Room._send(room, slow, part_frame)  # type: ignore[arg-type]
    assert room.hung_up == ["too_slow"] and slow.queued <= cb.MAX_QUEUED_PARTS
