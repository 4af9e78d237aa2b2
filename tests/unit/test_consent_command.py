"""Consent in a child process (``[ask] command``, and the desktop dialog built on it):
the program gets the question and who asks; a yes that keeps running is the indicator,
ended by the agent when the channel ends and ending the channel when it exits first;
no, silence and a broken program all mean no. And the words: who, what and why."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from backline.agent.capabilities import SessionContext
from backline.agent.consent import CommandAsker, question
from backline.agent.policy import PolicyError, from_table
from tests.unit.test_wstunnel import run_async

HOLDER = """
import os, sys, time
open(sys.argv[1], "w").write(sys.argv[-1] + "|" + os.environ["BACKLINE_TECHNICIAN"] + "|"
                             + os.environ["BACKLINE_TICKET"])
print("yes", flush=True)
time.sleep(float(sys.argv[2]))
"""


def ctx() -> SessionContext:
    from backline.agent.activity import ActivityLog
    from backline.agent.policy import Policy

    return SessionContext(session_id="ss_test000000001", principal="ag_x", technician="alice",
                          mode="managed", policy=Policy(), log=ActivityLog(None),
                          reason="printer", ticket="T-1")


@run_async
async def test_a_yes_that_keeps_running_is_the_indicator(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    asker = CommandAsker([sys.executable, "-c", HOLDER, str(seen), "30"])
    answer = await asker.ask_and_hold("May alice open a terminal?", 20, ctx(), "shell")
    assert answer.allowed and answer.held is not None
    assert seen.read_text() == "May alice open a terminal?|alice|T-1"
    assert not answer.held.ended.is_set()
    started = time.monotonic()
    await answer.held.close()  # the channel ended first: the indicator goes
    assert time.monotonic() - started < 5

    quick = CommandAsker([sys.executable, "-c", HOLDER, str(seen), "0.2"])
    answer = await quick.ask_and_hold("Again?", 20, ctx(), "shell")
    assert answer.held is not None
    await asyncio.wait_for(answer.held.ended.wait(), 10)  # the customer closed it


@run_async
async def test_no_silence_and_broken_programs_mean_no() -> None:
    no = await CommandAsker([sys.executable, "-c", "raise SystemExit(1)"]).ask("?", 10)
    assert (no.allowed, no.how) == (False, "customer_declined")
    yes = await CommandAsker([sys.executable, "-c", "raise SystemExit(0)"]).ask("?", 10)
    assert (yes.allowed, yes.how) == (True, "customer_allowed")
    silent = await CommandAsker([sys.executable, "-c", "import time; time.sleep(30)"]
                                ).ask("?", 1)
    assert (silent.allowed, silent.how) == (False, "no_answer")
    broken = await CommandAsker([sys.executable, "-c", "raise SystemExit(9)"]).ask("?", 10)
    assert (broken.allowed, broken.how) == (False, "no_way_to_ask")
    missing = await CommandAsker(["/nonexistent/ask"]).ask("?", 10)
    assert (missing.allowed, missing.how) == (False, "no_way_to_ask")


@run_async
async def test_on_the_join_terminal_the_indicator_is_two_lines() -> None:
    import io

    from backline.agent.consent import TerminalAsker

    out = io.StringIO()
    asker = TerminalAsker(stdin=io.StringIO("y\n"), out=out)
    answer = await asker.ask_and_hold("May alice open a terminal?", 10, ctx(), "shell")
    assert answer.allowed and answer.held is not None
    assert "shell open for alice" in out.getvalue()
    await answer.held.close()
    assert out.getvalue().endswith("[backline] shell closed.\n")


def test_the_question_says_who_what_and_why() -> None:
    assert question("alice", "shell", "printer jams", "T-7") == (
        "Technician alice asks to open a terminal on this machine, where they can run any "
        "command you could (printer jams) [ticket T-7]. Allow?")
    assert question("alice", "shell", account="support") == (
        "Technician alice asks to open a terminal on this machine, where they can run any "
        "command as the user support. Allow?")
    assert question("bob\x1b[2J", "fix", "why\r\n") == (
        "Technician bob[2J asks to use 'fix' on this machine (why). Allow?")


def test_policy_shell_account_and_ask_command() -> None:
    policy = from_table({"shell": {"account": "support"},
                         "ask": {"command": ["/usr/bin/ask", "--yes-no"]}})
    assert policy.shell_account == "support" and policy.decision("shell") == "deny"
    assert policy.ask_command == ("/usr/bin/ask", "--yes-no")
    for bad in ({"shell": {"account": "../root"}}, {"shell": {"user": "x"}},
                {"ask": {"command": "/usr/bin/ask"}}, {"ask": {"command": [""]}}):
        with pytest.raises(PolicyError):
            from_table(bad)
