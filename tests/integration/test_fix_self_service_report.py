"""A customer's own fix runs reach the relay's trail (issue 14), with real processes: a
relay, a real agent that ran an approved fix in a session (so it kept it), and the
customer's ``backline-agent fix run`` beside it.

Offline: the agent is stopped, the customer runs the fix, the report waits in the
agent's outbox; when the agent runs again it is recorded once (``fix.self_service.ended``)
and forgotten; the same report put back (as if the agent had died before forgetting it)
is answered ``duplicate`` and writes nothing. Online: a run is recorded at once. An
alert that cleared while the agent was offline is ``agent.health.cleared`` when it
reconnects (the relay compares with the health it stored).

Hostile, as an enrolled agent speaking for itself on its own control socket: a forged
digest or a fix the relay never had is refused ``unknown_version``; a malformed or
padded report is a protocol error (the socket closed), audited as a refused report; a
flood of reports is cut at the burst and the refusals aggregated; a report before
signing in is refused like any stranger's frame. Each refusal is in the trail.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from backline.agent.localcontrol import request
from backline.common import keys, protocol
from backline.relay.fixes import self_service
from tests.harness import AgentProcess, Api, RelayProcess, admin_api, audit_actions, wait_for
from tests.integration.test_fix_relay import manifest_toml
from tests.integration.test_fix_relay_e2e import approve
from tests.integration.test_hostile_refusals import aggregated, sign_in, ws
from tests.integration.test_management_reports import CRITICAL, WARNING
from tests.integration.test_sessions import make_user, open_session, start_agent

WINDOW_S = 6
POLICY = '[capabilities]\ninfo = "allow"\nfix = "allow"\n\n[fix]\ndecision = "allow"\n'


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    alice: Api
    bob: Api
    agent: AgentProcess
    fix: str  # "ID@1", kept by the agent
    digest: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          initialised_relay: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("selfservice")
    relay = RelayProcess(root, {"BACKLINE_AUDIT_FLOOD_WINDOW_S": str(WINDOW_S)},
                         template=initialised_relay).start()
    admin = admin_api(relay)
    alice = make_user(admin, relay, "alice", "technician", ("default",))
    bob = make_user(admin, relay, "bob", "approver")
    agent = None
    try:
        agent = start_agent(root, relay, admin, "pc-self", policy=POLICY)
        r = alice.post("/api/v1/fixes", json={"manifest_toml": manifest_toml(
            "self-clean", script="echo cleaned")})
        assert r.status_code == 201, r.text
        assert approve(bob, "self-clean", 1).status_code == 200
        fix, digest = "self-clean@1", alice.get("/api/v1/fixes/self-clean/1").json()["digest"]
        # A technician runs it once: the agent keeps it for its customer.
        s = open_session(alice, agent.agent_id, reason="keep it")
        r = alice.post(f"/api/v1/sessions/{s['id']}/channels/fix", json={"fix": fix})
        assert r.status_code == 200, r.text
        assert alice.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
        yield World(root, relay, admin, alice, bob, agent, fix, digest)
    finally:
        if agent is not None:
            agent.stop()
        for api in (alice, bob, admin):
            api.close()
        relay.stop()


def trail(world: World, action: str, target: str | None = None) -> list[dict[str, Any]]:
    return [e for e in audit_actions(world.relay) if e["action"] == action
            and (target is None or e["target"] == target)]


def activity(agent: AgentProcess) -> list[dict[str, Any]]:
    path = agent.state_dir / "activity.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def outbox(agent: AgentProcess) -> list[Path]:
    where = agent.state_dir / "fix-reports"
    return sorted(where.glob("sr_*.json")) if where.exists() else []


def recorded(world: World, run_id: str) -> list[dict[str, Any]]:
    return [e for e in trail(world, "fix.self_service.ended") if e["details"]["run"] == run_id]


def test_an_offline_run_is_recorded_once_when_the_agent_runs_again(world: World) -> None:
    agent = world.agent
    agent.stop()
    try:
        ran = agent.cmd("fix", "run", "self-clean")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout == "cleaned\n"
        ended = [e for e in activity(agent) if e["event"] == "fix.ended"][-1]
        run_id = ended["run_id"]
        assert run_id.startswith("sr_") and ended["mode"] == "self-service"
        kept = outbox(agent)
        assert [p.name for p in kept] == [f"{run_id}.json"]  # waiting, on disk
        assert kept[0].stat().st_mode & 0o777 == 0o600
        saved = kept[0].read_bytes()
        time.sleep(1)
        assert recorded(world, run_id) == []  # the relay knows nothing yet
    finally:
        agent.start()
    events = wait_for(lambda: recorded(world, run_id), 30, "the offline run in the trail")
    wait_for(lambda: not outbox(agent), 10, "the outbox emptied")
    assert len(events) == 1
    e = events[0]
    d = e["details"]
    assert e["actor"] == e["target"] == f"agent:{agent.agent_id}"
    assert d["fix"] == world.fix and d["digest"] == world.digest == ended["digest"]
    assert d["exit_status"] == 0 and d["ok"] is True and d["verify_passed"] is None
    assert d["output_sha256"] == ended["output_sha256"]
    assert abs(d["clock_offset_s"]) < 5  # the same machine's clock
    # Run while offline: the run ended well before the relay heard of it.
    assert d["started_at_relay"] <= d["ended_at_relay"] < e["time"] - 0.5
    reported = [x for x in activity(agent) if x["event"] == "fix.reported"]
    assert reported[-1]["run_id"] == run_id and reported[-1]["status"] == "recorded"

    # The agent died after the relay recorded it, before it forgot the file: it comes
    # back, is sent again, and is a duplicate. Nothing twice.
    (agent.state_dir / "fix-reports" / f"{run_id}.json").write_bytes(saved)
    wait_for(lambda: (agent.state_dir / "control.sock").exists(), 10, "the control socket")
    assert request(agent.state_dir, {"op": "fix_reports"})["ok"] is True
    wait_for(lambda: any(x["event"] == "fix.reported" and x["run_id"] == run_id
                         and x["status"] == "duplicate" for x in activity(agent)), 20,
             "the duplicate answered")
    assert not outbox(agent)
    assert len(recorded(world, run_id)) == 1

    # Online: the command pokes the running agent, which sends it at once.
    started = time.monotonic()
    assert agent.cmd("fix", "run", "self-clean").returncode == 0
    second = [x for x in activity(agent) if x["event"] == "fix.ended"][-1]["run_id"]
    wait_for(lambda: recorded(world, second), 10, "the online run in the trail")
    assert time.monotonic() - started < 10
    assert len({e["details"]["run"] for e in trail(world, "fix.self_service.ended")}) == len(
        trail(world, "fix.self_service.ended"))


def test_an_alert_that_cleared_while_the_agent_was_offline_is_cleared_at_reconnect(
        world: World) -> None:
    """The relay compares an agent's first health report after it reconnects with the
    one it stored: compared with nothing, the clear was never audited and the alert's
    incident stayed open in the trail (and in the reports) for good."""
    agent = world.agent
    target = f"agent:{agent.agent_id}"
    (agent.state_dir / "agent.toml").write_text(CRITICAL)
    agent.stop()  # the agent reads agent.toml (its 1 s health interval) when it starts
    agent.start()
    wait_for(lambda: trail(world, "agent.health.alert", target), 90, "the alert")
    agent.stop()
    cleared = len(trail(world, "agent.health.cleared", target))
    (agent.state_dir / "agent.toml").write_text(WARNING)  # the customer fixed it, offline
    agent.start()
    wait_for(lambda: len(trail(world, "agent.health.cleared", target)) > cleared, 90,
             "the clear, at reconnect")
    assert len(trail(world, "agent.health.alert", target)) == 1
    (agent.state_dir / "agent.toml").unlink()


# --- hostile: an agent speaking for itself -----------------------------------------------


def forger(world: World, name: str) -> tuple[AgentProcess, keys.PrivateKey]:
    """An enrolled agent that never runs: the test speaks with its key."""
    agent = AgentProcess(world.root, name)
    assert agent.enroll(world.relay.token()).returncode == 0
    return agent, keys.load_private(agent.state_dir / "identity_key")


def report(world: World, **change: Any) -> dict[str, Any]:
    now = time.time()
    body: dict[str, Any] = {
        "v": protocol.VERSION, "type": "fix_report",
        "run_id": "sr_" + secrets.token_urlsafe(16),
        "fix": "self-clean", "version": 1, "digest": world.digest, "exit_status": 0,
        "timed_out": False, "verify": "none", "output_sha256": "0" * 64,
        "started_at": round(now - 10, 3), "ended_at": round(now - 5, 3),
        "sent_at": round(now, 3)}
    body.update(change)
    return {k: v for k, v in body.items() if v is not None}


def ack(sock: Any) -> dict[str, Any]:
    msg: dict[str, Any] = json.loads(sock.recv(10))
    assert msg["type"] == "fix_report_ack", msg
    return msg


def closed_with(sock: Any, frame: str) -> dict[str, Any]:
    """Send ``frame``: an ``error``, then the socket closed with 4400."""
    sock.send(frame)
    reply: dict[str, Any] = json.loads(sock.recv(10))
    assert reply["type"] == "error", reply
    with pytest.raises(ConnectionClosed) as closed:
        sock.recv(10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    return reply


def test_forged_malformed_and_padded_reports_are_refused_and_audited(world: World) -> None:
    agent, key = forger(world, "pc-forger")
    target = f"agent:{agent.agent_id}"
    with ws(world.relay, "/agent/connect") as sock:
        sign_in(world.relay, sock, agent, key)
        forged = report(world, digest="sha256:" + "ab" * 32)
        sock.send(json.dumps(forged))
        assert ack(sock) == {"v": 1, "type": "fix_report_ack", "run_id": forged["run_id"],
                             "status": "refused", "reason": "unknown_version"}
        unknown = report(world, fix="never-approved")
        sock.send(json.dumps(unknown))
        assert ack(sock)["reason"] == "unknown_version"
        # The agent chooses the gap between its run and its report: over 30 days is
        # refused (else it could place a run anywhere in the past)
        long_ago = time.time() - self_service.MAX_AGE_S - 60
        old = report(world, started_at=round(long_ago, 3), ended_at=round(long_ago + 5, 3))
        sock.send(json.dumps(old))
        assert ack(sock)["reason"] == "too_old"
        # An honest agent whose clock is an hour behind: the run lands where it happened
        now = time.time()
        skewed = report(world, started_at=round(now - 3610, 3), ended_at=round(now - 3605, 3),
                        sent_at=round(now - 3600, 3))
        sock.send(json.dumps(skewed))
        assert ack(sock)["status"] == "recorded"
        good = report(world)
        sock.send(json.dumps(good))
        assert ack(sock)["status"] == "recorded"
        sock.send(json.dumps(good))  # again: recorded once
        assert ack(sock)["status"] == "duplicate"
    assert len(recorded(world, good["run_id"])) == 1
    assert recorded(world, forged["run_id"]) == recorded(world, unknown["run_id"]) == []
    assert recorded(world, old["run_id"]) == []
    placed = recorded(world, skewed["run_id"])[0]["details"]
    assert abs(placed["clock_offset_s"] - 3600) < 60
    assert abs(placed["started_at_relay"] - (now - 10)) < 60

    padded = json.dumps(report(world)) + " " * 4000  # valid, but padded
    assert len(padded) > self_service.MAX_BYTES
    bad_frames = [
        ("unknown_field", json.dumps(report(world, agent="ag_someone_else_0000"))),
        ("bad_field", json.dumps(report(world, run_id="../../etc/passwd"))),
        ("missing_field", json.dumps({k: v for k, v in report(world).items()
                                      if k != "digest"})),
        ("bad_field", json.dumps(report(world, started_at=time.time() + 100))),  # after end
        ("bad_field", json.dumps(report(world, signal="SIGKILL"))),  # and exit_status 0
        ("too_large", padded),
    ]
    for want, frame in bad_frames:
        with ws(world.relay, "/agent/connect") as sock:
            sign_in(world.relay, sock, agent, key)
            reply = closed_with(sock, frame)
            assert reply["code"] == want, (want, reply)
            assert "fix_report" in reply["message"]

    def refusals() -> tuple[list[dict[str, Any]], int] | None:
        single, count = aggregated(trail(world, "fix.self_service.refused", target))
        return (single, count) if len(single) + count == 3 + len(bad_frames) else None

    single, count = wait_for(refusals, WINDOW_S * 3, "every refusal in the trail")
    # The first five one by one (then counted: a broken agent can repeat them at will).
    assert [r["details"]["reason"] for r in single] == [
        "unknown_version", "unknown_version", "too_old", "unknown_field", "bad_field"]
    assert count == len(bad_frames) - 2
    first = single[0]["details"]
    assert first["reason"] == "unknown_version" and first["run"] == forged["run_id"]
    assert first["digest"] == forged["digest"] and "another digest" in first["detail"]
    # Nothing of them reached the report's input, and the relay still serves.
    assert trail(world, "agent.protocol_error", target) == []
    assert world.relay.healthy()


def test_a_report_before_signing_in_is_a_strangers_frame(world: World) -> None:
    before = len(trail(world, "agent.protocol_error"))
    with ws(world.relay, "/agent/connect") as sock:
        sock.recv(5)  # the challenge
        closed_with(sock, json.dumps(report(world)))
    wait_for(lambda: len(trail(world, "agent.protocol_error")) > before, 10,
             "the refusal audited")
    assert trail(world, "agent.protocol_error")[-1]["actor"].startswith("anonymous@")


def test_a_flood_of_reports_is_cut_at_the_burst(world: World) -> None:
    agent, key = forger(world, "pc-flood")
    target = f"agent:{agent.agent_id}"
    sent = self_service.BURST + 15
    with ws(world.relay, "/agent/connect") as sock:
        sign_in(world.relay, sock, agent, key)
        started = time.monotonic()
        for i in range(sent):
            sock.send(json.dumps(report(world, output_sha256=f"{i:064x}")))
        answers = [ack(sock)["status"] for _ in range(sent)]
        took = time.monotonic() - started
    assert answers.count("recorded") == self_service.BURST, answers
    assert answers.count("refused") == sent - self_service.BURST
    assert took < self_service.REFILL_S  # (so no token came back meanwhile)
    ended = trail(world, "fix.self_service.ended", target)
    assert len(ended) == self_service.BURST

    def summed() -> tuple[list[dict[str, Any]], int] | None:
        single, count = aggregated(trail(world, "fix.self_service.refused", target))
        return (single, count) if len(single) + count == sent - self_service.BURST else None

    single, count = wait_for(summed, WINDOW_S * 3, "the aggregated refusals")
    assert len(single) == 5 and count == sent - self_service.BURST - 5  # not a row each
    assert {r["details"]["reason"] for r in single} == {"rate_limited"}
    assert world.relay.healthy()


def test_an_unusable_outbox_file_is_set_aside_not_sent_forever(world: World) -> None:
    agent = world.agent
    where = agent.state_dir / "fix-reports"
    where.mkdir(exist_ok=True)
    bad = where / "sr_AAAAAAAAAAAAAAAAAAAAAA.json"
    bad.write_text('{"run_id": "sr_AAAAAAAAAAAAAAAAAAAAAA", "fix": "self-clean"}')
    shutil.copy(bad, where / "sr_BBBBBBBBBBBBBBBBBBBBBB.json.tmp")  # a write cut short
    assert request(agent.state_dir, {"op": "fix_reports"})["ok"] is True
    wait_for(lambda: (where / "sr_AAAAAAAAAAAAAAAAAAAAAA.bad").exists(), 10, "set aside")
    assert agent.proc is not None and agent.proc.poll() is None
    assert recorded(world, "sr_AAAAAAAAAAAAAAAAAAAAAA") == []
