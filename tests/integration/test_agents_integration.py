"""Acceptance: a relay and two agents enroll and connect; the relay is killed with
SIGKILL and restarted; both agents come back by themselves; the trail verifies."""

from __future__ import annotations

from pathlib import Path

from tests.harness import AgentProcess, Api, RelayProcess, audit_actions, wait_for


def online_ids(api: Api) -> set[str]:
    r = api.get("/api/v1/agents", params={"status": "online"})
    return {a["id"] for a in r.json()["agents"]} if r.status_code == 200 else set()


def test_two_agents_survive_relay_kill9(tmp_path: Path, relay: RelayProcess,
                                        admin: Api) -> None:
    token = relay.token("--uses", "2", "--ttl", "10m")
    agents = [AgentProcess(tmp_path, f"host-{i}") for i in range(2)]
    try:
        for a in agents:
            r = a.enroll(token)
            assert r.returncode == 0, r.stderr
            a.start()
        ids = {a.agent_id for a in agents}
        wait_for(lambda: online_ids(admin) == ids, 20, "both agents online")
        listed = {a["id"]: a for a in admin.get("/api/v1/agents").json()["agents"]}
        assert {listed[i]["hostname"] for i in ids} == {"host-0", "host-1"}

        relay.kill9()
        relay.start()
        # Same data dir: the session cookie still names a live session.
        wait_for(lambda: online_ids(admin) == ids, 30, "both agents back online", every=0.5)
        for a in agents:
            assert a.proc is not None and a.proc.poll() is None, "agent was restarted or died"
            status = a.cmd("status").stdout
            assert "connection: online" in status, status
    finally:
        codes = [a.stop() for a in agents]
    assert codes == [0, 0], "agents must exit cleanly on SIGTERM"
    verify = relay.cli("audit", "verify", check=False)
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith("OK")
    actions = [e["action"] for e in audit_actions(relay)]
    assert actions.count("agent.enroll") == 2
    assert actions.count("agent.connect") >= 4  # twice each: before and after the kill
    assert "agent.disconnect" in actions
