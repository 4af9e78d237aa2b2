"""Self-service (acceptance point 5): ``backline-agent fix run ID`` in a subprocess runs
a cached approved fix and refuses a revoked one; ``fix list`` says which may run; an
edited cache file, hostile parameters, a failing fix and a fix that asks for consent
without a terminal each get their exit status; ``diagnose`` offers cached fixes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from backline.agent.exit_codes import EXIT_DECLINED, EXIT_FIX_FAILED, EXIT_REFUSED, EXIT_USAGE
from backline.agent.fix_cli import suggestions
from backline.agent.fixes import cache, revocations
from backline.agent.state import StateDir
from tests.harness import AGENT
from tests.unit.test_fix_agent_trust import Signer, enrolled, fix


def agent(state: StateDir, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENT, "--state-dir", str(state.root), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def activity(state: StateDir) -> list[dict[str, object]]:
    path = state.root / "activity.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_cached_fix_runs_and_a_revoked_one_is_refused(tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path / "state", [relay.public])
    m = fix()
    cache.store(state.root, m, [relay.sign(m)])
    failing = fix(id="fails-fix", script="echo trying; exit 3\n", verify=None)
    cache.store(state.root, failing, [relay.sign(failing)])

    listed = agent(state, "fix", "list")
    assert listed.returncode == 0, listed.stderr
    assert "test-fix@1  Say hello  (risk low)" in listed.stdout
    ran = agent(state, "fix", "run", "test-fix", "--param", "NAME=Carol")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout == "hello Carol\n"
    assert "verify passed" in ran.stderr
    ended = [e for e in activity(state) if e["event"] == "fix.ended"]
    assert ended and ended[-1]["mode"] == "self-service" and ended[-1]["exit_status"] == 0

    hostile = agent(state, "fix", "run", "test-fix", "--param", "NAME=a\nb")
    assert hostile.returncode == EXIT_REFUSED and "params" in hostile.stderr
    assert hostile.stdout == ""
    assert agent(state, "fix", "run", "fails-fix").returncode == EXIT_FIX_FAILED
    assert agent(state, "fix", "run", "no-such-fix").returncode == EXIT_USAGE

    # The relay revokes it: the kept list says so, and the cached copy no longer runs.
    assert revocations.receive(state.root, relay.revocations(1, m, reason="broke printers"),
                               (relay.public,)).outcome == "adopted"
    refused = agent(state, "fix", "run", "test-fix")
    assert refused.returncode == EXIT_REFUSED, refused.stderr
    assert "refused (revoked)" in refused.stderr and "broke printers" in refused.stderr
    assert refused.stdout == ""
    assert "[cannot run: revoked]" in agent(state, "fix", "list").stdout
    last = [e for e in activity(state) if e["event"] == "fix.refused"][-1]
    assert last["reason"] == "revoked" and last["fix"] == "test-fix"


def test_an_edited_cache_entry_and_a_consent_fix_without_a_terminal(tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path / "state", [relay.public])
    m = fix()
    cache.store(state.root, m, [relay.sign(m)])
    path = state.root / "fixes" / "test-fix@1.json"
    body = json.loads(path.read_text())
    body["manifest"]["script"] = f"touch {tmp_path / 'X'}\n"
    path.write_text(json.dumps(body))
    edited = agent(state, "fix", "run", "test-fix")
    assert edited.returncode == EXIT_REFUSED and "bad_signature" in edited.stderr
    assert not (tmp_path / "X").exists()

    asks = fix(id="asks-fix", consent=True)
    cache.store(state.root, asks, [relay.sign(asks)])
    declined = agent(state, "fix", "run", "asks-fix")
    assert declined.returncode == EXIT_DECLINED and declined.stdout == ""
    assert agent(state, "fix", "run", "asks-fix", "--yes").returncode == 0
    # The policy's [fix] section applies to self-service too.
    (state.root / "policy.toml").write_text('[fix]\ndecision = "deny"\n')
    denied = agent(state, "fix", "run", "asks-fix", "--yes")
    assert denied.returncode == EXIT_REFUSED and "policy" in denied.stderr


def test_diagnose_offers_the_cached_fixes_for_its_findings(tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path / "state", [relay.public])
    m, other = fix(rules=["dns.resolver_slow"]), fix(id="other-fix", rules=["disk.full"])
    cache.store(state.root, m, [relay.sign(m)])
    cache.store(state.root, other, [relay.sign(other)])
    assert suggestions(state.root, {"dns.resolver_slow"}) == [
        ("dns.resolver_slow", "test-fix@1", "Say hello")]
    assert suggestions(state.root, set()) == []
    revocations.receive(state.root, relay.revocations(1, m), (relay.public,))
    assert suggestions(state.root, {"dns.resolver_slow"}) == []  # revoked: not offered


def test_the_diagnose_command_offers_a_cached_fix_for_its_finding(tmp_path: Path) -> None:
    import os

    from tests.harness import free_port, staged_diagnostics

    relay = Signer()
    state = enrolled(tmp_path / "state", [relay.public])
    m = fix(id="clear-old-files", title="Clear old files", rules=["disk-almost-full"])
    cache.store(state.root, m, [relay.sign(m)])
    config = tmp_path / "staged.toml"
    config.write_text(staged_diagnostics(free_port()))
    done = subprocess.run([AGENT, "--state-dir", str(state.root), "diagnose", "--config",
                           str(config)], capture_output=True, text=True, timeout=60,
                          env={**os.environ})
    assert done.returncode == 0, done.stderr
    assert "Approved fixes you can run yourself:" in done.stdout
    assert ("Clear old files (for disk-almost-full): backline-agent fix run clear-old-files "
            "--version 1") in done.stdout
