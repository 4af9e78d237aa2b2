"""Approved fixes end to end, on real processes: a relay, real agents, the SSH tunnel.

Acceptance 1: an author submits, a different approver approves, a technician runs it on
an agent; the output streams live; the trail holds submit, approve, request, consent,
start and end with the manifest digest and the output SHA-256; the author approving
their own version is refused and audited. Acceptance 2 (the relay's part): one byte of
an approved script changed in the relay's database is refused by the agent and audited
on the relay; another version's manifest and signature swapped into a row is refused
``digest_mismatch``; an unsigned version forced through is refused ``unsigned``; one run
is read in both sides' logs (the agent's activity log, the relay's trail); a revoked
version the relay's database "forgot" is still refused by an agent that was sent the
revocation list. Also: cancel, a run from a finding that
re-checks it, and a bulk run over two agents.

These need the agent's fix room (``backline.agent.capabilities.fix``, fix-agent's). On a
branch without it the whole module is skipped, loudly.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backline.common import __version__, protocol
from backline.common.diagnostics.schema import report_from_lines
from backline.common.fixes.manifest import digest, parse_manifest
from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
    wait_for,
)
from tests.integration.test_fix_relay import manifest_toml
from tests.integration.test_sessions import make_user, open_session, start_agent

if importlib.util.find_spec("backline.agent.capabilities.fix") is None:
    pytest.skip("SKIPPED LOUDLY: the agent's fix room (backline.agent.capabilities.fix, "
                "fix-agent's branch) is not on this branch; these end-to-end tests of "
                "issue 12 run once it is merged", allow_module_level=True)

POLICY = """
[capabilities]
info = "allow"
diagnostics = "allow"
fix = "allow"

[fix]
decision = "ask"

[ask]
timeout_s = 20
command = ["/bin/true"]
"""

STAGED = "[thresholds]\ndisk_used_pct = 1\ndisk_critical_pct = 100\n"


def approve(client: Any, fix_id: str, version: object) -> Any:
    """Approve the version as shown: the body names the digest GET /fixes/{id}/{v} gave."""
    shown = client.get(f"/api/v1/fixes/{fix_id}/{version}").json()
    return client.post(f"/api/v1/fixes/{fix_id}/{version}/approve",
                       json={"digest": shown.get("digest")})


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    alice: Api  # technician: authors and runs
    bob: Api  # approver
    agent: AgentProcess
    second: AgentProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("fix-e2e")
    relay = RelayProcess(root).start()
    admin = admin_api(relay)
    alice = make_user(admin, relay, "alice", "technician", ("default",))
    bob = make_user(admin, relay, "bob", "approver")
    agents: list[AgentProcess] = []
    try:
        for name in ("pc-fix-1", "pc-fix-2"):
            agent = AgentProcess(root, name)
            agent.state_dir.mkdir(parents=True, exist_ok=True)
            (agent.state_dir / "agent.toml").write_text(STAGED)
            agents.append(start_agent(root, relay, admin, name, policy=POLICY, agent=agent))
        yield World(root, relay, admin, alice, bob, agents[0], agents[1])
    finally:
        for agent in agents:
            agent.stop()
        for api in (alice, bob, admin):
            api.close()
        relay.stop()


def approved(world: World, text: str) -> str:
    """Submit as alice, approve as bob; the digest."""
    r = world.alice.post("/api/v1/fixes", json={"manifest_toml": text})
    assert r.status_code == 201, r.text
    m = parse_manifest(text)
    a = approve(world.bob, f"{m.id}", f"{m.version}")
    assert a.status_code == 200, a.text
    return digest(m)


def trail(relay: RelayProcess, run_id: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in audit_actions(relay):
        if e["details"].get("run") == run_id:
            out.setdefault(e["action"], []).append(e)
    return out


def stream_run(world: World, sid: str, first: dict[str, Any], cancel_after_start: bool = False,
               timeout: float = 90) -> list[tuple[float, dict[str, Any]]]:
    frames: list[tuple[float, dict[str, Any]]] = []
    with browser_socket(world.relay, world.alice, f"/api/v1/sessions/{sid}/stream/fix") as ws:
        ws.send(json.dumps(first))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=deadline - time.monotonic()))
            frames.append((time.monotonic(), frame))
            if frame["type"] == "line" and cancel_after_start and \
                    json.loads(frame["line"]).get("type") == "start":
                ws.send(json.dumps({"type": "cancel"}))
            if frame["type"] in ("error",):
                break
            if frame["type"] == "exit" and not first.get("finding"):
                break
            if frame["type"] == "recheck":
                break
    return frames


def agent_holds_revocation(agent: AgentProcess, fix_id: str) -> bool:
    """Whether the agent's kept revocation list (its state dir) names ``fix_id``."""
    try:
        entries = json.loads((agent.state_dir / "fix_revocations.json").read_text())["entries"]
    except (OSError, ValueError, KeyError):
        return False
    return any(e["id"] == fix_id for e in entries)


def agent_lines(frames: list[tuple[float, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [json.loads(f["line"]) for _, f in frames if f["type"] == "line"]


# --- acceptance 1 -------------------------------------------------------------------------


def test_submit_approve_run_stream_and_the_trail(world: World) -> None:
    script = "echo step one\nsleep 1.5\necho step two >&2\necho done\n"
    text = manifest_toml("e2e-hello", script=script, consent=True,
                         extra='verify = "exit 0"\n')
    r = world.alice.post("/api/v1/fixes", json={"manifest_toml": text})
    assert r.status_code == 201
    expected = digest(parse_manifest(text))
    own = approve(world.alice, "e2e-hello", 1)
    assert own.status_code == 403  # a technician holds no fixes:approve at all
    admin_own = world.admin.post("/api/v1/fixes", json={
        "manifest_toml": manifest_toml("e2e-admin")})
    assert admin_own.status_code == 201
    refused = approve(world.admin, "e2e-admin", 1)
    assert refused.status_code == 403 and refused.json()["error"] == "self_approval"
    assert approve(world.bob, "e2e-hello", 1).status_code == 200

    session = open_session(world.alice, world.agent.agent_id, reason="disk full", ticket="T-1")
    try:
        frames = stream_run(world, session["id"], {"fix": "e2e-hello@1", "params": {},
                                                   "finding": None})
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
    kinds = [f["type"] for _, f in frames]
    assert kinds[0] == "run" and kinds[-1] == "exit", kinds
    run_id = frames[0][1]["run_id"]
    lines = agent_lines(frames)
    types = [x["type"] for x in lines]
    assert types[0] == "checked" and "consent" in types and "start" in types
    assert types.index("end") > types.index("start")
    exit_frame = frames[-1][1]
    assert exit_frame["status"] == "ended" and exit_frame["exit_status"] == 0
    assert exit_frame["verify_passed"] is True and exit_frame["output_ok"] is True
    # live: the first output line reached the browser well before the end
    first_out = next(t for t, f in frames if f["type"] == "line"
                     and json.loads(f["line"])["type"] == "output")
    end_at = next(t for t, f in frames if f["type"] == "line"
                  and json.loads(f["line"])["type"] == "end")
    assert end_at - first_out > 1.0

    output = world.alice.get(f"/api/v1/fix-runs/{run_id}/output")
    assert output.status_code == 200
    assert b"step one" in output.content and b"step two" in output.content
    sha = hashlib.sha256(output.content).hexdigest()
    end = next(x for x in lines if x["type"] == "end")
    assert end["output_sha256"] == sha
    record = world.alice.get(f"/api/v1/fix-runs/{run_id}").json()
    assert record["digest"] == expected and record["output_sha256"] == sha
    assert record["exit_status"] == 0 and record["verify_passed"] is True

    t = trail(world.relay, run_id)
    for action in ("fix.run.requested", "fix.run.consent", "fix.run.started",
                   "fix.run.ended"):
        assert t.get(action), (action, sorted(t))
        assert all(e["details"]["digest"] == expected for e in t[action])
    ended = t["fix.run.ended"][0]["details"]
    assert ended["output_sha256"] == sha and ended["output_ok"] is True
    assert ended["verify_passed"] is True and ended["exit_status"] == 0
    everything = audit_actions(world.relay)
    assert any(e["action"] == "fix.submitted" and e["details"]["digest"] == expected
               for e in everything)
    assert any(e["action"] == "fix.approved" and e["details"]["digest"] == expected
               and e["details"]["approver"] == "bob" for e in everything)
    assert any(e["action"] == "fix.approve.refused" and e["target"] == "fix:e2e-admin@1"
               and e["details"]["reason"] == "self_approval" for e in everything)


# --- acceptance 2, the relay's part ---------------------------------------------------


def test_one_byte_changed_in_the_relays_database_is_refused_by_the_agent(world: World
                                                                          ) -> None:
    expected = approved(world, manifest_toml("e2e-tamper", script="echo harmless"))
    db = sqlite3.connect(world.relay.data_dir / "relay.db")
    try:
        (text,) = db.execute("SELECT manifest FROM fix_versions WHERE fix_id='e2e-tamper'"
                             ).fetchone()
        changed = json.dumps({**json.loads(text), "script": "echo harmlesS"}, sort_keys=True)
        db.execute("UPDATE fix_versions SET manifest=? WHERE fix_id='e2e-tamper'", (changed,))
        db.commit()
    finally:
        db.close()
    session = open_session(world.alice, world.agent.agent_id, reason="tamper test")
    try:
        r = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/fix",
                             json={"fix": "e2e-tamper@1", "params": {}})
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert r.status_code == 200, r.text
    result = r.json()
    refusal = next(x for x in result["output"] if x["type"] == "refused")
    assert refusal["reason"] in ("digest_mismatch", "bad_signature")
    assert not any(x["type"] == "start" for x in result["output"])
    t = trail(world.relay, result["run_id"])
    assert t["fix.run.refused"][0]["details"]["side"] == "agent"
    requested = t["fix.run.requested"][0]["details"]
    assert requested["digest"] == expected and requested["sent_digest"] != expected
    # the relay saw the damage too, before sending (review 12b SHOULD-FIX 6), and said
    # so on its side; it still sent the row unchanged: the agent is the authority, and
    # it is the agent's refusal (above) that stops the run
    damaged = t["fix.run.damaged"][0]["details"]
    assert damaged["digest"] == expected and damaged["reason"] == "damaged"
    assert "digest" in damaged["detail"]


def test_a_revoked_version_stays_refused_by_the_agent_when_the_relay_forgets(world: World
                                                                               ) -> None:
    # this release's agents are sent the list (an older agent would refuse the type)
    assert protocol.takes_fix_revocations(__version__), (__version__,
                                                        protocol.FIX_REVOCATIONS_SINCE)
    approved(world, manifest_toml("e2e-revoked"))
    r = world.bob.post("/api/v1/fixes/e2e-revoked/1/revoke", json={"reason": "bad"})
    assert r.status_code == 200
    # The push goes over the control socket: wait until the agent keeps it (a fixed
    # second was not enough on a loaded machine: the agent adopted it 1.95 s later).
    wait_for(lambda: agent_holds_revocation(world.agent, "e2e-revoked"), 30,
             "the agent to adopt the pushed revocation")
    db = sqlite3.connect(world.relay.data_dir / "relay.db")
    try:
        db.execute("DELETE FROM fix_revocations WHERE fix_id='e2e-revoked'")
        db.commit()
    finally:
        db.close()
    session = open_session(world.alice, world.agent.agent_id, reason="revoked test")
    try:
        result = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/fix",
                                  json={"fix": "e2e-revoked@1"}).json()
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
    refusal = next(x for x in result["output"] if x["type"] == "refused")
    assert refusal["reason"] == "revoked"


# --- cancel, recheck, bulk ------------------------------------------------------------


def test_cancel_a_long_fix(world: World) -> None:
    approved(world, manifest_toml("e2e-long", script="echo started\nsleep 60\necho never\n"))
    session = open_session(world.alice, world.agent.agent_id, reason="cancel test")
    try:
        started = time.monotonic()
        frames = stream_run(world, session["id"], {"fix": "e2e-long@1"},
                            cancel_after_start=True)
        assert time.monotonic() - started < 30
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
    end = next(x for x in agent_lines(frames) if x["type"] == "end")
    assert end["cancelled"] is True
    t = trail(world.relay, frames[0][1]["run_id"])
    assert t["fix.run.cancelled"] and t["fix.run.ended"][0]["details"]["cancelled"] is True


def test_a_run_from_a_finding_rechecks_it(world: World) -> None:
    agent = world.agent
    config = agent.state_dir / "agent.toml"
    config.write_text(STAGED)
    session = open_session(world.alice, agent.agent_id, reason="recheck test")
    try:
        report = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/diagnostics")
        assert report.status_code == 200
        found = {f.rule_id for f in report_from_lines(
            [json.dumps(x) for x in report.json()["output"]]).findings}
        assert "disk-almost-full" in found, found
        text = manifest_toml("e2e-unstage", script=': > "$BACKLINE_PARAM_FILE"\n',
                             rules=("disk-almost-full",),
                             extra='\n[parameters.FILE]\ntype = "string"\nrequired = true\n'
                                   "description = \"the agent's config\"\n"
                                   "pattern = '^[A-Za-z0-9/._-]+$'\nmax_length = 400\n")
        approved(world, text)
        frames = stream_run(world, session["id"], {
            "fix": "e2e-unstage@1", "params": {"FILE": str(config)},
            "finding": "disk-almost-full"})
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
        config.write_text(STAGED)
    recheck = frames[-1][1]
    assert recheck == {"type": "recheck", "finding": "disk-almost-full", "cleared": True}


def test_bulk_over_a_groups_online_agents(world: World) -> None:
    approved(world, manifest_toml("e2e-bulk", script="hostname; echo ok\n"))
    r = world.alice.post("/api/v1/fixes/e2e-bulk/1/bulk",
                         json={"group": "default", "params": {}, "concurrency": 2})
    assert r.status_code == 202, r.text
    bulk_id = r.json()["bulk_id"]

    def done() -> dict[str, Any] | None:
        body = world.alice.get(f"/api/v1/fix-bulks/{bulk_id}").json()
        return body if body["status"] == "done" else None

    body = wait_for(done, 90, "the bulk run to end")
    assert body["total"] >= 2 and body["done"] == body["total"]
    ours = {r["agent_id"]: r for r in body["results"]}
    for agent in (world.agent, world.second):
        assert ours[agent.agent_id]["status"] == "ended", ours[agent.agent_id]
        assert ours[agent.agent_id]["exit_status"] == 0
    actions = [e for e in audit_actions(world.relay) if e["target"] == f"fix_bulk:{bulk_id}"]
    assert actions[0]["action"] == "fix.bulk.started" and actions[-1]["action"] == \
        "fix.bulk.ended"
    per_agent = [e for e in actions if e["action"] == "fix.bulk.agent"]
    assert sorted(e["details"]["agent"] for e in per_agent) == sorted(ours)  # one each
    assert all(e["details"]["ok"] for e in per_agent
               if e["details"]["agent"] in (world.agent.agent_id, world.second.agent_id))
    runs = [e for e in audit_actions(world.relay) if e["action"] == "fix.run.ended"
            and e["details"].get("bulk") == bulk_id]
    assert len(runs) == body["total"]


def run_rest(world: World, body: dict[str, Any]) -> dict[str, Any]:
    session = open_session(world.alice, world.agent.agent_id, reason="hostile test")
    try:
        r = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/fix", json=body)
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def refused_by_agent(world: World, result: dict[str, Any]) -> str:
    refusal = next(x for x in result["output"] if x["type"] == "refused")
    assert not any(x["type"] == "start" for x in result["output"])
    t = trail(world.relay, result["run_id"])
    assert t["fix.run.refused"][0]["details"]["side"] == "agent"
    assert t["fix.run.refused"][0]["details"]["reason"] == refusal["reason"]
    return str(refusal["reason"])


def activity(agent: AgentProcess, run_id: str) -> dict[str, list[dict[str, Any]]]:
    """The agent's own record of a run: its activity log (``activity.jsonl`` in its state
    dir, agent/activity.py), by event."""
    path = agent.state_dir / "activity.jsonl"
    out: dict[str, list[dict[str, Any]]] = {}
    for row in path.read_text().splitlines() if path.exists() else []:
        entry = json.loads(row)
        if entry.get("run_id") == run_id:
            out.setdefault(entry["event"], []).append(entry)
    return out


def in_db(world: World, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(world.relay.data_dir / "relay.db")
    try:
        for sql, args in statements:
            db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def test_one_run_is_in_both_sides_logs_with_the_same_digest(world: World) -> None:
    """Acceptance 2: the agent's activity log and the relay's trail tell the same run."""
    expected = approved(world, manifest_toml("e2e-both", script="echo both; exit 3"))
    result = run_rest(world, {"fix": "e2e-both@1"})
    run_id = result["run_id"]
    assert result["status"] == "ended" and result["exit_status"] == 3, result
    relay_side = trail(world.relay, run_id)
    agent_side = activity(world.agent, run_id)
    for action in ("fix.run.requested", "fix.run.started", "fix.run.ended"):
        assert [e["details"]["digest"] for e in relay_side[action]] == [expected], action
    for event in ("fix.started", "fix.ended"):
        assert [e["digest"] for e in agent_side.get(event, [])] == [expected], (
            event, sorted(agent_side))
    assert "fix.refused" not in agent_side
    ended_relay = relay_side["fix.run.ended"][0]["details"]
    ended_agent = agent_side["fix.ended"][0]
    assert ended_agent["exit_status"] == ended_relay["exit_status"] == 3
    assert ended_agent["session_id"] == relay_side["fix.run.requested"][0]["details"]["session"]


def test_another_versions_manifest_and_signature_swapped_in_is_digest_mismatch(
        world: World) -> None:
    """A database write puts B's manifest and B's (valid) signature in A's row: the agent
    verifies B, but the relay asks for A's digest, so it refuses digest_mismatch; both
    sides record it under A's digest."""
    a = approved(world, manifest_toml("e2e-swap-a", script="echo harmless"))
    b = approved(world, manifest_toml("e2e-swap-b", script="echo something else"))
    b_manifest = json.dumps(world.alice.get("/api/v1/fixes/e2e-swap-b/1").json()["manifest"],
                            sort_keys=True)
    b_signature = world.alice.get("/api/v1/fixes/e2e-swap-b/1").json()["signatures"][0]
    in_db(world, ("UPDATE fix_versions SET manifest=? WHERE fix_id='e2e-swap-a'",
                  (b_manifest,)),
          ("UPDATE fix_signatures SET signature=? WHERE fix_id='e2e-swap-a'", (b_signature,)))
    result = run_rest(world, {"fix": "e2e-swap-a@1"})
    assert refused_by_agent(world, result) == "digest_mismatch"
    t = trail(world.relay, result["run_id"])
    assert t["fix.run.refused"][0]["details"]["digest"] == a
    assert t["fix.run.requested"][0]["details"]["sent_digest"] == b
    agent_side = activity(world.agent, result["run_id"])
    assert [e["reason"] for e in agent_side["fix.refused"]] == ["digest_mismatch"]
    assert "fix.started" not in agent_side


def test_an_unsigned_version_forced_to_the_agent_is_refused_unsigned(world: World) -> None:
    """The relay's database says approved but holds no signature any more: the relay
    sends none, and the agent refuses ``unsigned`` (audited on both sides)."""
    approved(world, manifest_toml("e2e-unsigned"))
    in_db(world, ("UPDATE fix_signatures SET signature='' WHERE fix_id='e2e-unsigned'", ()))
    result = run_rest(world, {"fix": "e2e-unsigned@1"})
    assert refused_by_agent(world, result) == "unsigned"
    assert [e["reason"] for e in activity(world.agent, result["run_id"])["fix.refused"]] == [
        "unsigned"]


def forge_approval(world: World, fix_id: str, version: int, signature: str) -> None:
    """What a compromised relay database can do: say a version is approved."""
    db = sqlite3.connect(world.relay.data_dir / "relay.db")
    try:
        (dig,) = db.execute("SELECT digest FROM fix_versions WHERE fix_id=? AND version=?",
                            (fix_id, version)).fetchone()
        db.execute("INSERT INTO fix_signatures (fix_id, version, digest, kind, approver, key, "
                   "signature, at) VALUES (?, ?, ?, 'relay', 'mallory', 'SHA256:forged', ?, 0)",
                   (fix_id, version, dig, signature))
        db.commit()
    finally:
        db.close()


def test_an_approval_replayed_onto_another_version_is_refused_by_the_agent(world: World
                                                                           ) -> None:
    approved(world, manifest_toml("e2e-replay", 1, "echo one"))
    good = world.alice.get("/api/v1/fixes/e2e-replay/1").json()["signatures"][0]
    r = world.alice.post("/api/v1/fixes", json={"manifest_toml": manifest_toml(
        "e2e-replay", 2, "echo two")})
    assert r.status_code == 201
    forge_approval(world, "e2e-replay", 2, good)
    assert refused_by_agent(world, run_rest(world, {"fix": "e2e-replay@2"})) in (
        "bad_signature", "digest_mismatch")


def test_a_signature_by_a_key_the_agent_did_not_pin_is_refused(world: World) -> None:
    from backline.common.fixes import signing as fix_signing
    from backline.common.fixes.manifest import canonical_bytes

    text = manifest_toml("e2e-unpinned")
    assert world.alice.post("/api/v1/fixes", json={"manifest_toml": text}).status_code == 201
    private, _ = fix_signing.generate_key("mallory")
    forge_approval(world, "e2e-unpinned", 1,
                   fix_signing.sign(canonical_bytes(parse_manifest(text)), private))
    assert refused_by_agent(world, run_rest(world, {"fix": "e2e-unpinned@1"})) == \
        "unpinned_key"


def test_a_fix_for_another_platform_is_refused_by_the_agent(world: World) -> None:
    approved(world, manifest_toml("e2e-windows", platforms=("windows",)))
    assert refused_by_agent(world, run_rest(world, {"fix": "e2e-windows@1"})) == "platform"


def test_hostile_parameters_reach_the_script_inert(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "X"
    text = manifest_toml("e2e-echo", script='printf "%s\\n" "$BACKLINE_PARAM_TEXT"\n',
                         extra='\n[parameters.TEXT]\ntype = "string"\nrequired = true\n'
                               'description = "any text"\nmax_length = 200\n')
    approved(world, text)
    for value in (f"; touch {marker}", f"$(touch {marker})", f"`touch {marker}`",
                  f"' ; touch {marker}; '", f"\" && touch {marker} && \""):
        result = run_rest(world, {"fix": "e2e-echo@1", "params": {"TEXT": value}})
        assert result["status"] == "ended" and result["exit_status"] == 0, result
        out = world.alice.get(f"/api/v1/fix-runs/{result['run_id']}/output").content
        assert out == value.encode() + b"\n"
        assert not marker.exists()
    # newlines, NUL, over-long values never reach the agent: the schema refuses them
    session = open_session(world.alice, world.agent.agent_id, reason="hostile test")
    try:
        for value in ("two\nlines", "nul\x00", "x" * 201):
            r = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/fix",
                                 json={"fix": "e2e-echo@1", "params": {"TEXT": value}})
            assert r.status_code == 400, value
    finally:
        world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")


def rss_kib(pid: int) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith("VmRSS:"):
            return int(row.split()[1])
    raise AssertionError("no VmRSS")


def agent_rss_kib(pid: int) -> int:
    """RSS of the agent process and of its Python descendants (a session's room may run
    in a child), not of the fix script itself (``head``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        with contextlib.suppress(OSError, AssertionError):
            if "python" in Path(f"/proc/{p}/comm").read_text() or p == pid or \
                    b"backline" in Path(f"/proc/{p}/cmdline").read_bytes():
                total += rss_kib(p)
    return total


def test_a_gigabyte_of_output_is_cut_at_the_cap_and_the_relay_stays_small(world: World
                                                                          ) -> None:
    import threading

    approved(world, manifest_toml("e2e-flood", script="head -c 1073741824 /dev/zero\n"
                                                      "echo after\n"))
    assert world.relay.proc is not None and world.agent.proc is not None
    pid = world.relay.proc.pid
    before = rss_kib(pid)
    peak = [before]
    agent_pid = world.agent.proc.pid
    agent_before = agent_rss_kib(agent_pid)
    agent_peak = [agent_before]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_kib(pid))
            with contextlib.suppress(OSError, AssertionError):
                agent_peak[0] = max(agent_peak[0], agent_rss_kib(agent_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_rest(world, {"fix": "e2e-flood@1"})
    finally:
        stop.set()
        sampler.join()
    cap = 16 * 1024 * 1024
    end = next(x for x in result["output"] if x["type"] == "end")
    assert any(x["type"] == "cut" for x in result["output"])
    assert end["kept_bytes"] == cap and end["output_bytes"] == 2**30 + len("after\n")
    assert result["output_ok"] is True and result["bytes"] == cap
    record = world.alice.get(f"/api/v1/fix-runs/{result['run_id']}").json()
    assert record["kept_bytes"] == cap
    grew_mib = (peak[0] - before) / 1024
    print(f"relay RSS {before / 1024:.1f} MiB before, peak {peak[0] / 1024:.1f} MiB "
          f"(+{grew_mib:.1f} MiB) while 1 GiB was cut at {cap >> 20} MiB")
    assert grew_mib < 64, grew_mib
    agent_grew = (agent_peak[0] - agent_before) / 1024
    print(f"agent RSS (its Python processes) {agent_before / 1024:.1f} MiB before, peak "
          f"{agent_peak[0] / 1024:.1f} MiB (+{agent_grew:.1f} MiB) at the default 16 MiB cap")
    assert agent_grew < 64, agent_grew


def test_an_agent_enrolled_without_fix_keys_learns_them_from_fix_trust(world: World) -> None:
    """An agent enrolled before the relay had a fix key (its enrollment has none) learns
    it from the signed GET /agent/fix-trust, and then runs an approved fix."""
    relay = world.relay
    agent = AgentProcess(world.root, "pc-old")
    assert agent.enroll(relay.token()).returncode == 0
    path = agent.state_dir / "enrollment.json"
    enrolled = json.loads(path.read_text())
    pinned = enrolled["fix_keys"]
    assert pinned
    enrolled["fix_keys"] = []
    enrolled.pop("fix_keys_serial", None)
    path.write_text(json.dumps(enrolled))
    (agent.state_dir / "policy.toml").write_text(POLICY)
    agent.start()
    try:
        wait_for(lambda: json.loads(path.read_text()).get("fix_keys") == pinned, 30,
                 "the agent to learn the fix keys from /agent/fix-trust")
        assert json.loads(path.read_text()).get("fix_keys_serial", 1) >= 1
        approved(world, manifest_toml("e2e-learned", script="echo learned"))
        wait_for(lambda: world.admin.get(f"/api/v1/agents/{agent.agent_id}").json()[
            "online"], 20, "pc-old online")
        session = open_session(world.alice, agent.agent_id, reason="trust test")
        try:
            r = world.alice.post(f"/api/v1/sessions/{session['id']}/channels/fix",
                                 json={"fix": "e2e-learned@1"})
        finally:
            world.alice.request("DELETE", f"/api/v1/sessions/{session['id']}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "ended" and r.json()["exit_status"] == 0, r.json()
    finally:
        agent.stop()


def test_a_list_too_long_for_one_frame_is_fetched_and_enforced(world: World) -> None:
    """MUST-FIX 1 (b) end to end: 150 revocations with long reasons no longer fit one
    control frame; the relay announces the list, the agent fetches it from
    GET /agent/fix-revocations, and refuses a version in it even after the relay's
    database forgets it."""
    from backline.agent.fixes import revocations as agent_revocations

    if not hasattr(agent_revocations, "FETCH_PATH"):
        pytest.skip("SKIPPED LOUDLY: this branch's agent does not fetch announced "
                    "revocation lists yet (fixround-agent's half of MUST-FIX 1)")
    approved(world, manifest_toml("e2e-fetched", script="echo should not run"))
    for i in range(150):
        fix_id = f"e2e-filler-{i:03d}"
        assert world.alice.post("/api/v1/fixes", json={
            "manifest_toml": manifest_toml(fix_id)}).status_code == 201
        assert world.bob.post(f"/api/v1/fixes/{fix_id}/1/revoke",
                              json={"reason": "r" * 300}).status_code == 200
    r = world.bob.post("/api/v1/fixes/e2e-fetched/1/revoke", json={"reason": "too big"})
    assert r.status_code == 200
    revoked = [e for e in audit_actions(world.relay) if e["action"] == "fix.revoked"
               and e["target"] == "fix:e2e-fetched@1"]
    assert revoked[-1]["details"]["delivery"] == "fetch"
    wait_for(lambda: agent_holds_revocation(world.agent, "e2e-fetched"), 30,
             "the agent to fetch the announced revocation list")
    in_db(world, ("DELETE FROM fix_revocations WHERE fix_id='e2e-fetched'", ()))
    assert refused_by_agent(world, run_rest(world, {"fix": "e2e-fetched@1"})) == "revoked"
