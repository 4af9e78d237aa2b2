"""The customer sees what stays hidden, in the agent's own UI: the view question lists it,
the view's indicator says it, and ``backline-agent sessions`` shows it with the control
state while the co-browse runs (and no longer after). Real Chromium for the running part.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

import pytest

from backline.agent import session_commands
from backline.agent.capabilities.cobrowse import hidden_for, view_indicator, view_question
from backline.agent.policy import from_table
from backline.agent.sessions import Live
from tests.unit.test_agent_ssh import Kit
from tests.unit.test_cobrowse_agent import (  # noqa: F401 (fixtures)
    CHROMIUM,
    YES,
    ScriptedAsker,
    _capture_ctx,
    kit_for,
    open_cobrowse,
    server_ctx,
    site,
)
from tests.unit.test_wstunnel import run_async

POLICY = {"mask_selectors": [".account-number"], "block_selectors": ["#statement"],
          "private_urls": ["https://bank.example/*"]}
EVERY = ("all input values (masked)", "password fields", "card fields (cc-*)",
         "editable text (contenteditable)", "[data-backline-private]", ".account-number",
         "#statement",
         "pages https://bank.example/*", "canvas")


class Ctx:
    technician = "alice"
    reason = ""
    policy = from_table({"cobrowse": POLICY})


def test_the_view_question_and_indicator_list_everything_hidden() -> None:
    hidden = hidden_for(Ctx())  # type: ignore[arg-type]
    question = view_question(Ctx(), "https://shop.example/", "", hidden)  # type: ignore[arg-type]
    indicator = view_indicator(hidden)
    for item in EVERY:
        assert item in question and item in indicator, item
    assert question.endswith("Allow?")


def test_a_hostile_selector_cannot_break_the_question_lines() -> None:
    ctx = Ctx()
    text = view_question(ctx, None, "", ["a\nb\x1b[2J", "c"])  # type: ignore[arg-type]
    assert "\n" not in text and "\x1b" not in text


def test_sessions_lists_what_the_cobrowse_hides(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    live = Live("ss_test000000001", "alice", 0.0)
    live.notes["cobrowse"] = {"hidden": list(EVERY), "control": "paused"}
    monkeypatch.setattr("backline.agent.localcontrol.request",
                        lambda root, body: {"ok": True, "sessions": [live.describe()]})
    state: Any = argparse.Namespace(root=Path("/nonexistent"))
    assert session_commands.cmd_sessions(state, argparse.Namespace(json=False)) == 0
    out = capsys.readouterr().out
    assert "co-browse: control paused" in out and "#statement" in out and "canvas" in out


NOTES: dict[str, Any] = {}
SEEN: list[dict[str, Any]] = []


@pytest.fixture
def _notes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The session's notes, as the SessionRunner hands them to the room (ctx.extra)."""
    NOTES.clear()
    original = Kit.settings

    def settings(self: Kit, *a: Any, **k: Any) -> Any:
        made = original(self, *a, **k)
        made.session.extra["status_notes"] = NOTES
        return made

    monkeypatch.setattr(Kit, "settings", settings)


@pytest.mark.skipif(CHROMIUM is None, reason="needs a Chromium")
@run_async
async def test_a_running_cobrowse_shows_hidden_and_control(
        tmp_path: Path, site: dict[str, int], _notes: None) -> None:  # noqa: F811
    asker = ScriptedAsker(YES, YES)
    kit = kit_for(tmp_path, asker, **POLICY)
    conn, ch, server = await open_cobrowse(kit, f"http://127.0.0.1:{site['a']}/")
    async with conn:
        await ch.until(lambda: "TICK-1" in ch.text(), 60)
        question = asker.asked[0][0]
        for item in EVERY:
            assert item in question, item
        status = NOTES["cobrowse"]
        assert status["hidden"] == ch.of("hidden")[0]["what"] and status["control"] == "none"
        ch.send({"type": "request_control"})
        await ch.until(lambda: [m["state"] for m in ch.of("control")] == ["granted"])
        assert NOTES["cobrowse"]["control"] == "granted"
        ch.send({"type": "release_control"})
        await ch.until(lambda: ch.of("control")[-1]["state"] == "revoked")
        assert NOTES["cobrowse"]["control"] == "revoked"
        ch.send({"type": "end"})
        await asyncio.wait_for(ch.task, 30)
    assert "cobrowse" not in NOTES
    await asyncio.wait_for(server, 10)
