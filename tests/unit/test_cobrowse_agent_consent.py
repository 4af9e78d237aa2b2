"""The room's consent paths with a stand-in browser (agent/capabilities/cobrowse.py):
a proposed address navigates only under control, else it is the customer's question;
any asker, even one that never answers, is bounded by the room; no middle button."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from backline.agent.capabilities import cobrowse as room_mod
from backline.agent.capabilities.cobrowse import Room
from backline.agent.cobrowse.session import CoBrowse, InputRefused, Target
from backline.agent.consent import Answer
from backline.agent.policy import from_table
from tests.unit.test_wstunnel import run_async

YES = Answer(True, "customer_allowed")
NO = Answer(False, "customer_declined")


class Asker:
    available = True

    def __init__(self, *answers: Answer, never: bool = False) -> None:
        self.answers = list(answers)
        self.never = never
        self.asked: list[str] = []

    async def ask(self, question: str, timeout: float) -> Answer:
        self.asked.append(question)
        if self.never:
            await asyncio.Event().wait()  # an asker that ignores its own timeout
        return self.answers.pop(0)


class FakeCB:
    def __init__(self, control: bool = False, paused: bool = False) -> None:
        self.control, self.paused = control, paused
        self.went: list[str] = []

    def url_allowed(self, url: str) -> bool:
        return url.startswith("https://")

    async def navigate(self, url: str) -> None:
        self.went.append(url)

    async def set_control(self, granted: bool) -> None:
        self.control = granted


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, event: str, **fields: Any) -> None:
        self.events.append((event, fields))


def room_with(asker: Asker, cb: FakeCB) -> tuple[Room, list[dict[str, Any]]]:
    ctx = SimpleNamespace(session_id="s1", technician="tech", log=Log(),
                          extra={"asker": asker})
    room = Room(None, ctx)  # type: ignore[arg-type]
    room.cb = cb
    return room, []


def said(room: Room) -> list[dict[str, Any]]:
    out = []
    while not room.queue.empty():
        out.append(json.loads(room.queue.get_nowait()))
    return out


async def settle(room: Room) -> None:
    for task in (room.proposing, room.asking):
        if task is not None:
            await asyncio.wait_for(task, 5)


@run_async
async def test_a_watching_technician_only_proposes_and_a_no_is_refused() -> None:
    asker, cb = Asker(NO), FakeCB(control=False)
    room, _ = room_with(asker, cb)
    await room.handle({"type": "propose_url", "url": "https://bank.test/transfer"})
    await settle(room)
    assert cb.went == []
    assert asker.asked and "bank.test/transfer" in asker.asked[0]
    assert any(m.get("error") == "propose_refused" for m in said(room))


@run_async
async def test_a_proposal_the_customer_accepts_is_opened() -> None:
    asker, cb = Asker(YES), FakeCB(control=False)
    room, _ = room_with(asker, cb)
    await room.handle({"type": "propose_url", "url": "https://a.test/x"})
    await settle(room)
    assert cb.went == ["https://a.test/x"]


@run_async
async def test_under_control_a_proposal_navigates_but_not_while_paused() -> None:
    asker, cb = Asker(NO), FakeCB(control=True)
    room, _ = room_with(asker, cb)
    await room.handle({"type": "propose_url", "url": "https://a.test/x"})
    assert cb.went == ["https://a.test/x"] and asker.asked == []
    cb.paused = True
    await room.handle({"type": "propose_url", "url": "https://a.test/y"})
    await settle(room)
    assert cb.went == ["https://a.test/x"] and len(asker.asked) == 1


@run_async
async def test_an_asker_that_never_answers_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room_mod, "CONTROL_ASK_S", 0.2)
    monkeypatch.setattr(room_mod, "PROPOSE_ASK_S", 0.2)
    cb = FakeCB()
    room, _ = room_with(Asker(never=True), cb)
    await room.handle({"type": "request_control"})
    await room.handle({"type": "propose_url", "url": "https://a.test/x"})
    await settle(room)  # within 5 s, not never
    lines = said(room)
    assert {"type": "control", "state": "refused"} in lines
    assert {"type": "consent", "what": "control", "answer": "timeout"} in lines
    assert any(m.get("error") == "propose_refused" for m in lines)
    assert not cb.control and cb.went == []


class Conn:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session_id: str | None = None, timeout: float = 10) -> dict[str, Any]:
        self.sent.append((method, params or {}))
        return {"executionContextId": 1}


def stand_in() -> tuple[CoBrowse, Conn]:
    cb = CoBrowse(from_table({"capabilities": {"cobrowse": "ask"}}).cobrowse, lambda e: None)
    conn = Conn()
    cb.browser = SimpleNamespace(conn=conn)  # type: ignore[assignment]
    cb.targets = {"P": Target("P", "page", "t1"), "F": Target("F", "iframe", "t2")}
    cb.pages = ["P"]
    return cb, conn


@run_async
async def test_no_middle_button() -> None:
    cb, conn = stand_in()
    await cb.set_control(True)
    with pytest.raises(InputRefused):
        await cb.input({"kind": "mouse", "event": "mousePressed", "x": 1, "y": 1,
                        "button": "middle", "clicks": 1})
    assert not [m for m, _ in conn.sent if m == "Input.dispatchMouseEvent"]


@run_async
async def test_control_only_once_guarded_and_in_every_frame_target() -> None:
    cb, conn = stand_in()
    seen: list[bool] = []
    real = conn.send

    async def send(method: str, params: dict[str, Any] | None = None,
                   session_id: str | None = None, timeout: float = 10) -> dict[str, Any]:
        seen.append(cb.control)
        return await real(method, params, session_id, timeout)

    conn.send = send  # type: ignore[method-assign]
    await cb.set_control(True)
    guards = [(m, p) for m, p in conn.sent if m in ("Browser.setDownloadBehavior",
                                                    "Page.setInterceptFileChooserDialog")]
    assert len(guards) == 3  # downloads, and the page's and the frame's choosers
    assert not any(seen[:3])  # no control while a guard was not yet applied
    assert cb.control


@run_async
async def test_a_revoke_during_the_focus_check_stops_the_key() -> None:
    cb, conn = stand_in()
    await cb.set_control(True)

    async def focus(expression: str) -> str:
        await cb.set_control(False)  # revoked while the key waited
        return "ok"

    cb.evaluate_isolated = focus  # type: ignore[method-assign]
    with pytest.raises(InputRefused):
        await cb.input({"kind": "key", "event": "keyDown", "key": "a", "text": "a"})
    assert not [m for m, _ in conn.sent if m == "Input.dispatchKeyEvent"]


@run_async
async def test_frames_are_bounded_and_acked_only_once_queued() -> None:
    room, _ = room_with(Asker(), FakeCB())
    frame = {"type": "frame", "b64": "x" * 1000, "w": 1, "h": 1}
    kept = [room.emit(dict(frame)) for _ in range(10)]
    assert kept == [True] * room_mod.MAX_QUEUED_FRAMES + [False] * (
        10 - room_mod.MAX_QUEUED_FRAMES)
    assert room.emit({"type": "control", "state": "granted"})  # other lines still go

    cb, conn = stand_in()
    order: list[str] = []
    real = conn.send

    async def send(method: str, params: dict[str, Any] | None = None,
                   session_id: str | None = None, timeout: float = 10) -> dict[str, Any]:
        order.append(method)
        return await real(method, params, session_id, timeout)

    conn.send = send  # type: ignore[method-assign]
    cb.emit = lambda e: order.append("queued") or True  # type: ignore[assignment]
    cb.screencast_on = True
    await cb._frame("P", {"data": "abc", "sessionId": 1, "metadata": {}})
    assert order == ["queued", "Page.screencastFrameAck"]
