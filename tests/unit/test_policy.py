"""The agent's local policy file: defaults, precedence, and loud errors for mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from backline.agent.consent import NoAsker, TerminalAsker, question
from backline.agent.policy import DEFAULTS, PolicyError, from_table, load_policy
from tests.unit.test_wstunnel import run_async


def test_defaults_when_there_is_no_file(tmp_path: Path) -> None:
    policy = load_policy(tmp_path, environ={})
    assert policy.source == "defaults"
    assert policy.decision("info") == "allow"
    assert policy.decision("diagnostics") == "allow"
    assert policy.decision("shell") == "deny"
    assert policy.decision("sftp") == "deny"
    assert policy.decision("fix") == "ask"
    assert policy.decision("something-new") == "deny"  # unknown: never allowed


def test_file_in_state_dir_then_env_then_flag(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text('[capabilities]\ndiagnostics = "deny"\n')
    assert load_policy(tmp_path, environ={}).decision("diagnostics") == "deny"
    env_file = tmp_path / "env.toml"
    env_file.write_text('[capabilities]\ndiagnostics = "ask"\n[ask]\ntimeout_s = 5\n')
    policy = load_policy(tmp_path, environ={"BACKLINE_AGENT_POLICY": str(env_file)})
    assert policy.decision("diagnostics") == "ask" and policy.ask_timeout_s == 5
    flag = tmp_path / "flag.toml"
    flag.write_text('[capabilities]\ninfo = "deny"\n')
    policy = load_policy(tmp_path, flag, environ={"BACKLINE_AGENT_POLICY": str(env_file)})
    assert policy.decision("info") == "deny" and policy.decision("diagnostics") == "allow"
    assert policy.source == str(flag)


@pytest.mark.parametrize(("table", "words"), [
    ({"capabilities": {"info": "yes"}}, "must be one of allow, ask, deny"),
    ({"capabilities": {"Info": "allow"}}, "is not a capability name"),
    ({"capabilities": {"info": True}}, "must be one of"),
    ({"capabilites": {}}, "unknown table"),
    ({"capabilities": []}, "must be tables"),
    ({"ask": {"timeout_s": 0}}, "from 1 to 3600"),
    ({"ask": {"timeout_s": True}}, "from 1 to 3600"),
    ({"ask": {"timeout": 5}}, "knows only timeout_s"),
])
def test_mistakes_are_errors_not_silent_grants(table: dict[str, object], words: str) -> None:
    with pytest.raises(PolicyError) as err:
        from_table(table, "p.toml")
    assert words in str(err.value) and "p.toml" in str(err.value)


def test_unreadable_or_missing_named_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path, tmp_path / "nope.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[capabilities\n")
    with pytest.raises(PolicyError, match=r"broken\.toml"):
        load_policy(tmp_path, broken, environ={})


def test_defaults_cover_every_known_capability() -> None:
    assert set(DEFAULTS) == {"info", "diagnostics", "shell", "fix", "cobrowse", "sftp"}
    assert from_table({}).summary() == dict(sorted(DEFAULTS.items()))


def test_question_drops_control_characters() -> None:
    q = question("mallory\x1b[2J\r\nroot", "fix", "urgent\x07")
    assert "\x1b" not in q and "\n" not in q and "\x07" not in q
    assert q.startswith("Technician mallory[2Jroot asks to use 'fix'")


@run_async
async def test_terminal_asker_reads_a_line_and_fails_closed(tmp_path: Path) -> None:
    import io

    out = io.StringIO()
    yes = TerminalAsker(io.StringIO("y\n"), out)
    assert (await yes.ask("Allow?", 5)).allowed
    no = TerminalAsker(io.StringIO("whatever\n"), out)
    assert (await no.ask("Allow?", 5)).how == "customer_declined"
    closed = TerminalAsker(io.StringIO(""), out)
    assert (await closed.ask("Allow?", 5)).how == "no_way_to_ask"
    assert (await NoAsker().ask("Allow?", 5)).how == "no_way_to_ask"
    assert "Allow? [y/N]" in out.getvalue()
