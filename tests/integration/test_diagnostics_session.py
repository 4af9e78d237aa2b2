"""Diagnostics through a real support session: relay and agent processes, the SSH
tunnel, every collector's section, findings the test stages on purpose, the report
kept on the relay, and the requests the relay and the agent refuse.

Staged on the agent (its ``agent.toml``): a name that cannot resolve, an endpoint
nobody listens on, and a disk threshold of 1 % so every mount is "almost full".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from backline.agent.diagnostics.engine import report_from_lines
from backline.common.diagnostics.schema import SECTIONS
from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
    free_port,
    staged_diagnostics,
)
from tests.integration.test_sessions import make_user, open_session, start_agent

POLICY = """
[capabilities]
info = "allow"
diagnostics = "allow"
"""

STAGED_RULES = {"dns-lookup-failed", "endpoint-unreachable", "disk-almost-full"}


@dataclass
class World:
    relay: RelayProcess
    admin: Api
    agent: AgentProcess
    closed_port: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("diag-session")
    relay = RelayProcess(root).start()
    admin = admin_api(relay)
    agent = None
    closed = free_port()
    try:
        agent = AgentProcess(root, "pc-diag")
        # Staged before the agent starts; the agent reads it for each run.
        agent.state_dir.mkdir(parents=True, exist_ok=True)
        (agent.state_dir / "agent.toml").write_text(staged_diagnostics(closed))
        agent = start_agent(root, relay, admin, "pc-diag", policy=POLICY, agent=agent)
        yield World(relay, admin, agent, closed)
    finally:
        if agent is not None:
            agent.stop()
        admin.close()
        relay.stop()


def test_full_run_has_every_section_and_the_staged_findings(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, reason="slow machine", ticket="T-7")
    try:
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/diagnostics")
        assert r.status_code == 200, r.text
        result = r.json()
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert result["exit_status"] == 0 and result["format"] == "jsonl"
    lines = [json.dumps(obj) for obj in result["output"]]
    report = report_from_lines(lines)
    assert {s.name for s in report.sections} == set(SECTIONS)
    broken = [s.name for s in report.sections if s.status == "error"]
    assert not broken, f"collectors failed: {broken}"
    found = {f.rule_id for f in report.findings}
    assert STAGED_RULES <= found, found
    unreachable = next(f for f in report.findings if f.rule_id == "endpoint-unreachable")
    assert f"127.0.0.1:{world.closed_port}" in unreachable.summary

    # Kept on the relay, under the agent, with the hash the audit trail records.
    report_id = result["report"]
    assert report_id and report_id.startswith("rp_")
    listed = admin.get(f"/api/v1/agents/{agent.agent_id}/reports").json()["reports"]
    assert report_id in [row["id"] for row in listed]
    kept = admin.get(f"/api/v1/reports/{report_id}").json()
    assert kept["session_id"] == session["id"] and kept["technician"] == "admin"
    assert kept["sha256"] == result["sha256"]
    assert {f["rule_id"] for f in kept["report"]["findings"]} == found
    assert kept["worst"] in ("critical", "warning")
    trail = [e for e in audit_actions(relay) if e["action"] == "diagnostics.report"]
    assert trail[-1]["details"]["report"] == report_id
    assert trail[-1]["details"]["sha256"] == result["sha256"]
    assert relay.cli("audit", "verify").returncode == 0


def test_streamed_run_of_some_sections(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id)
    path = f"/api/v1/sessions/{session['id']}/stream/diagnostics?sections=dns,endpoints"
    raw = b""
    try:
        with browser_socket(relay, admin, path) as ws:
            while True:
                msg = json.loads(ws.recv(30))
                if msg["type"] != "line":
                    break
                raw += msg["line"].encode()
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert msg["type"] == "exit" and msg["exit_status"] == 0, msg
    assert msg["sha256"] == hashlib.sha256(raw).hexdigest()
    report = report_from_lines(raw.decode().splitlines())
    assert sorted(s.name for s in report.sections) == ["dns", "endpoints"]
    assert {"dns-lookup-failed", "endpoint-unreachable"} <= {f.rule_id for f in report.findings}
    assert msg["report"], "a streamed run is kept too"


def test_streamed_run_with_a_bad_request_says_why(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id)
    path = f"/api/v1/sessions/{session['id']}/stream/diagnostics?sections=dns,,evil"
    try:
        with browser_socket(relay, admin, path) as ws:
            msg = json.loads(ws.recv(10))
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert msg["type"] == "error" and msg["error"] == "bad_request", msg
    assert "unknown section" in msg["detail"]
    assert any(e["action"] == "session.channel.refused"
               and e["target"] == f"session:{session['id']}" for e in audit_actions(relay))


def test_malformed_diagnostics_requests_get_clean_errors(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id)
    channel = f"/api/v1/sessions/{session['id']}/channels"
    try:
        cases = [
            (admin.post(f"{channel}/diagnostics", json={"sections": ["keylogger"]}),
             "bad_request", "unknown section"),
            (admin.post(f"{channel}/diagnostics", json={"sections": "dns"}),
             "bad_field", "sections"),
            (admin.post(f"{channel}/diagnostics", json={"sections": []}),
             "bad_request", "non-empty list"),
            (admin.post(f"{channel}/diagnostics", json={"sections": ["dns", "dns"]}),
             "bad_request", "twice"),
            (admin.post(f"{channel}/diagnostics", json={"run": "sh"}),
             "bad_field", "unknown fields"),
            (admin.post(f"{channel}/diagnostics", content=b"{nope",
                        headers={"content-type": "application/json"}), "bad_json", ""),
            (admin.post(f"{channel}/info", json={"sections": ["dns"]}),
             "bad_field", "no request body"),
        ]
        for response, code, words in cases:
            assert response.status_code == 400, response.text
            assert response.json()["error"] == code and words in response.json()["detail"]
        # The session still works afterwards.
        ok = admin.post(f"{channel}/diagnostics", json={"sections": ["system"]})
        assert ok.status_code == 200 and ok.json()["exit_status"] == 0
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    refused = [e for e in audit_actions(relay) if e["action"] == "session.channel.refused"
               and e["target"] == f"session:{session['id']}"]
    # The body's shape is the edge's to refuse (audited as request.refused); what the
    # sections mean is the session's (session.channel.refused).
    assert [e["details"]["reason"] for e in refused] == [
        "bad_request", "bad_request", "bad_request", "bad_field"]
    edge = [e["details"]["reason"] for e in audit_actions(relay)
            if e["action"] == "request.refused" and session["id"] in e["target"]]
    assert edge == ["bad_field", "bad_field", "bad_json"]
    assert relay.healthy()


def test_reports_follow_the_agents_grants(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    listed = admin.get(f"/api/v1/agents/{agent.agent_id}/reports").json()["reports"]
    assert listed, "an earlier test keeps a report"
    report_id = listed[0]["id"]
    outsider = make_user(admin, relay, "diag-outsider", "technician")
    auditor = make_user(admin, relay, "diag-auditor", "auditor")
    try:
        assert outsider.get(f"/api/v1/agents/{agent.agent_id}/reports").status_code in (403,
                                                                                         404)
        assert outsider.get(f"/api/v1/reports/{report_id}").status_code in (403, 404)
        assert auditor.get(f"/api/v1/reports/{report_id}").status_code == 200
        assert admin.get("/api/v1/reports/rp_nothing").status_code == 404
        bad = admin.get(f"/api/v1/agents/{agent.agent_id}/reports", params={"limit": "0"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_field"
    finally:
        outsider.close()
        auditor.close()
    refused = [e for e in audit_actions(relay) if e["actor"] == "user:diag-outsider"
               and e["action"].endswith(".refused")]
    assert len(refused) >= 2
