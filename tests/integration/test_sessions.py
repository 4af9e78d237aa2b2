"""Support sessions with real processes: a relay, an enrolled agent, the API.

Open a session (dial, tunnel, SSH ready), run a capability through it, close it;
policy refusals audited on both sides; who may open, see, use and close sessions;
malformed requests; idle-out and the customer ending a session.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from backline.common.tlspin import client_context
from tests.databases import TestDatabase
from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
    free_port,
    staged_diagnostics,
    wait_for,
)

POLICY = """
[capabilities]
info = "allow"
diagnostics = "deny"
fix = "ask"
"""


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    agent: AgentProcess


def start_agent(root: Path, relay: RelayProcess, admin: Api, name: str,
                policy: str = POLICY, group: str = "default",
                agent: AgentProcess | None = None) -> AgentProcess:
    agent = agent or AgentProcess(root, name)
    r = agent.enroll(relay.token("--group", group))
    assert r.returncode == 0, r.stderr
    (agent.state_dir / "policy.toml").write_text(policy)
    agent.start()
    wait_for(lambda: admin.get(f"/api/v1/agents/{agent.agent_id}").json().get("online"), 60,
             f"{name} online")
    return agent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("sessions")
    relay = RelayProcess(root).start()
    admin = admin_api(relay)
    agent = None
    try:
        agent = start_agent(root, relay, admin, "pc-1")
        yield World(root, relay, admin, agent)
    finally:
        if agent is not None:
            agent.stop()
        admin.close()
        relay.stop()


def events(relay: RelayProcess, prefix: str, session_id: str | None = None
           ) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"].startswith(prefix)
            and (session_id is None or e["target"] == f"session:{session_id}")]


def activity(agent: AgentProcess) -> list[dict[str, Any]]:
    path = agent.state_dir / "activity.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def gauge(relay: RelayProcess) -> float:
    import httpx

    text = httpx.get(relay.url + "/metrics", verify=relay.tls(), timeout=5).text
    match = re.search(r"^backline_support_sessions_active (\S+)$", text, re.M)
    assert match, "no sessions gauge"
    return float(match.group(1))


def open_session(api: Api, agent_id: str, **body: Any) -> dict[str, Any]:
    r = api.post(f"/api/v1/agents/{agent_id}/sessions", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def make_user(admin: Api, relay: RelayProcess, name: str, role: str,
              groups: tuple[str, ...] = ()) -> Api:
    created = admin.post("/api/v1/users", json={"username": name, "role": role})
    assert created.status_code == 201, created.text
    ids = {g["name"]: g["id"] for g in admin.get("/api/v1/groups").json()["groups"]}
    for group in groups:
        assert admin.request("PUT", f"/api/v1/groups/{ids[group]}/grants/{name}"
                             ).status_code == 200
    api = Api(relay)
    otp = created.json()["one_time_password"]
    assert api.login(name, otp).status_code == 200
    assert api.post("/api/v1/auth/password", json={"current": otp,
                                                   "new": f"{name} password 123"}
                    ).status_code == 200
    return api


# --- (A) the whole path ----------------------------------------------------------------


def test_open_run_close(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    started = time.perf_counter()
    session = open_session(admin, agent.agent_id, reason="printer offline", ticket="T-42")
    took_ms = (time.perf_counter() - started) * 1000
    assert session["state"] == "ready" and session["mode"] == "managed"
    assert session["agent_id"] == agent.agent_id and session["technician"] == "admin"
    assert session["reason"] == "printer offline" and session["ticket"] == "T-42"
    assert 0 < session["setup_ms"] < took_ms
    assert gauge(relay) == 1
    # Command-line tools open the same relay state; they must not touch live sessions.
    assert relay.cli("audit", "verify").returncode == 0
    assert admin.get(f"/api/v1/sessions/{session['id']}").json()["state"] == "ready"

    r = admin.post(f"/api/v1/sessions/{session['id']}/channels/info")
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["exit_status"] == 0 and result["format"] == "json"
    assert result["output"]["session"] == {
        "id": session["id"], "principal": agent.agent_id, "mode": "managed",
        "technician": "admin", "capabilities": ["info", "diagnostics", "fix", "cobrowse"]}
    assert result["output"]["agent"]["hostname"]
    assert result["output"]["policy"]["capabilities"]["diagnostics"] == "deny"
    assert len(result["sha256"]) == 64

    listed = admin.get("/api/v1/sessions", params={"state": "open"}).json()["sessions"]
    assert [s["id"] for s in listed] == [session["id"]]

    r = admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert r.status_code == 200 and r.json()["state"] == "closed"
    assert r.json()["close_reason"] == "technician"
    assert gauge(relay) == 0
    assert admin.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 409

    trail = events(relay, "session.", session["id"])
    assert [e["action"] for e in trail] == ["session.open", "session.start", "session.channel",
                                            "session.end"]
    assert trail[0]["details"]["reason"] == "printer offline"
    assert trail[1]["details"]["setup_ms"] > 0 and trail[1]["details"]["cert_serial"]
    assert trail[2]["details"]["sha256"] == result["sha256"]
    assert trail[3]["details"]["reason"] == "technician"
    wait_for(lambda: [e["event"] for e in activity(agent)
                      if e.get("session_id") == session["id"]][-1:] == ["session.end"], 10,
             "the agent to log the end")
    mine = [e for e in activity(agent) if e.get("session_id") == session["id"]]
    assert [e["event"] for e in mine] == ["session.dial", "session.start", "channel.start",
                                          "channel.end", "session.end_requested", "session.end"]
    assert mine[1]["technician"] == "admin" and mine[2]["capability"] == "info"
    assert "relay" in mine[-1]["reason"]


def test_stream_socket_checks_origin_and_cookie(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["info"])
    url = relay.url.replace("https", "wss") + f"/api/v1/sessions/{session['id']}/stream/info"
    cookie = f"__Host-backline={admin.http.cookies.get('__Host-backline')}"
    try:
        with connect(url, ssl=client_context(), open_timeout=10,
                     additional_headers={"Origin": relay.url, "Cookie": cookie}) as ws:
            first = json.loads(ws.recv(10))
            assert first["type"] == "line"
            assert json.loads(first["line"])["session"]["id"] == session["id"]
            last = json.loads(ws.recv(10))
            assert last["type"] == "exit" and last["exit_status"] == 0
        with pytest.raises(InvalidStatus):  # a foreign page cannot drive it
            connect(url, ssl=client_context(), open_timeout=10,
                    additional_headers={"Origin": "https://evil.example", "Cookie": cookie})
        with pytest.raises(InvalidStatus):  # no cookie: refused before the upgrade
            connect(url, ssl=client_context(), open_timeout=10,
                    additional_headers={"Origin": relay.url})
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    streamed = events(relay, "session.channel", session["id"])
    assert streamed and streamed[-1]["details"]["streamed"] is True
    refused = [e["details"]["reason"] for e in audit_actions(relay)
               if e["action"] in ("websocket.refused", "session.stream.refused")]
    assert refused[-2:] == ["bad_origin", "unauthenticated"]


# --- (C) policy, permissions, malformed requests ----------------------------------------


def test_capability_denied_by_policy_is_refused_and_audited_on_both_sides(world: World
                                                                          ) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id)
    try:
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/diagnostics")
        assert r.status_code == 403 and r.json()["error"] == "refused_by_agent"
        # cobrowse is "ask", and a background agent without a display has nobody to ask.
        # (fix is "ask" too, but its room checks the request before any channel opens:
        # tests/integration/test_fix_relay.py.) A co-browse runs only on its socket.
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/cobrowse")
        assert r.status_code == 400 and r.json()["error"] == "stream_only", r.text
        with browser_socket(relay, admin,
                            f"/api/v1/sessions/{session['id']}/stream/cobrowse") as ws:
            ws.send(json.dumps({"type": "start", "url": None}))
            # The agent's room opens the channel, then refuses (nobody to ask).
            frames = []
            while not frames or frames[-1]["type"] not in ("error", "exit"):
                frames.append(json.loads(ws.recv(timeout=20)))
            said = frames[-1]
            assert said["type"] == "error" and said["error"] == "refused_by_agent", frames
            assert frames[0]["type"] == "ready" and len(frames) == 2, frames
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/sftp")
        assert r.status_code == 403 and r.json()["error"] == "not_in_session"
        # The session survives refusals.
        assert admin.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 200
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    refused = events(relay, "session.channel.refused", session["id"])
    assert [(e["details"]["capability"], e["details"]["reason"]) for e in refused] == [
        ("diagnostics", "refused_by_agent"), ("cobrowse", "agent_no_way_to_ask"),
        ("sftp", "not_in_session")]
    local = [e for e in activity(agent) if e.get("session_id") == session["id"]
             and e["event"] == "channel.refused"]
    assert [(e["capability"], e["reason"]) for e in local] == [
        ("diagnostics", "policy_deny"), ("cobrowse", "no_way_to_ask")]


def test_who_may_open_see_use_and_close(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    assert admin.post("/api/v1/groups", json={"name": "finance"}).status_code == 201
    outsider = make_user(admin, relay, "outsider", "technician")
    auditor = make_user(admin, relay, "auditor1", "auditor")
    tech = make_user(admin, relay, "tech1", "technician", ("default",))
    colleague = make_user(admin, relay, "tech2", "technician", ("default",))
    try:
        r = outsider.post(f"/api/v1/agents/{agent.agent_id}/sessions", json={})
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
        r = auditor.post(f"/api/v1/agents/{agent.agent_id}/sessions", json={})
        assert r.status_code == 403
        session = open_session(tech, agent.agent_id, reason="mine")
        assert session["technician"] == "tech1"
        # Visible to the group's colleagues and auditors, not to outsiders.
        assert colleague.get(f"/api/v1/sessions/{session['id']}").status_code == 200
        assert auditor.get(f"/api/v1/sessions/{session['id']}").status_code == 200
        assert outsider.get(f"/api/v1/sessions/{session['id']}").status_code == 403
        assert outsider.get("/api/v1/sessions").json()["sessions"] == []
        # Only the technician it names may use it; a colleague may not close it.
        r = colleague.post(f"/api/v1/sessions/{session['id']}/channels/info")
        assert r.status_code == 403
        assert colleague.request("DELETE", f"/api/v1/sessions/{session['id']}"
                                 ).status_code == 403
        assert auditor.request("DELETE", f"/api/v1/sessions/{session['id']}"
                               ).status_code == 403
        assert tech.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 200
        # An admin may close anyone's session.
        r = admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
        assert r.status_code == 200 and r.json()["close_reason"] == "technician"
    finally:
        for api in (outsider, auditor, tech, colleague):
            api.close()
    access = [e for e in audit_actions(relay) if e["action"] in
              ("agent.access.refused", "session.access.refused", "request.refused")]
    actors = {(e["actor"], e["action"]) for e in access}
    assert ("user:outsider", "agent.access.refused") in actors
    assert ("user:tech2", "session.access.refused") in actors
    assert ("user:outsider", "session.access.refused") in actors
    assert ("user:auditor1", "request.refused") in actors
    opened = events(relay, "session.open")
    assert all(e["actor"] in ("user:admin", "user:tech1") for e in opened)


def test_withdrawn_access_ends_live_sessions(world: World) -> None:
    relay, admin = world.relay, world.admin
    agent = start_agent(world.root, relay, admin, "pc-revoked")
    tech = make_user(admin, relay, "tech3", "technician", ("default",))
    try:
        mine = open_session(tech, agent.agent_id)
        default = next(g["id"] for g in admin.get("/api/v1/groups").json()["groups"]
                       if g["name"] == "default")
        assert admin.request("DELETE", f"/api/v1/groups/{default}/grants/tech3"
                             ).status_code == 200
        row = admin.get(f"/api/v1/sessions/{mine['id']}").json()
        assert row["state"] == "closed" and row["close_reason"] == "grant_withdrawn"
        theirs = open_session(admin, agent.agent_id)
        assert admin.request("DELETE", f"/api/v1/agents/{agent.agent_id}").status_code == 200
        row = admin.get(f"/api/v1/sessions/{theirs['id']}").json()
        assert row["state"] == "closed" and row["close_reason"] == "agent_revoked"
        assert gauge(relay) == 0
    finally:
        tech.close()
        agent.stop()


def test_malformed_requests_get_clean_errors(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    base = f"/api/v1/agents/{agent.agent_id}/sessions"
    cases = [
        (admin.post(base, content=b"{not json", headers={"content-type": "application/json"}),
         400, "bad_json"),
        (admin.post(base, content=b"{not json"), 415, "unsupported_media_type"),
        (admin.post(base, json=[1, 2]), 400, "bad_json"),
        (admin.post(base, json={"reason": "x" * 513}), 400, "bad_field"),
        (admin.post(base, json={"reason": 5}), 400, "bad_field"),
        (admin.post(base, json={"reason": "line\nbreak"}), 400, "bad_field"),
        (admin.post(base, json={"capabilities": ["root"]}), 400, "bad_field"),
        (admin.post(base, json={"capabilities": ["info", "info"]}), 400, "bad_field"),
        (admin.post(base, json={"capabilities": "info"}), 400, "bad_field"),
        (admin.post("/api/v1/agents/ag_nobody0000000/sessions", json={}), 404, "not_found"),
        (admin.get("/api/v1/sessions/ss_nothing00000000"), 404, "not_found"),
        (admin.get("/api/v1/sessions", params={"state": "bogus"}), 400, "bad_field"),
        (admin.get("/api/v1/sessions", params={"limit": "0"}), 400, "bad_field"),
        (admin.post("/api/v1/sessions/ss_nothing00000000/channels/info"), 404, "not_found"),
        (admin.post("/api/v1/session-codes", json={"capabilities": ["shell", 1]}), 400,
         "bad_field"),
    ]
    for response, status, code in cases:
        assert (response.status_code, response.json()["error"]) == (status, code), \
            response.text
    session = open_session(admin, agent.agent_id, capabilities=["info"])
    try:
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/Bad..Name")
        assert r.status_code == 400 and r.json()["error"] == "bad_field"
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    assert admin.request("DELETE", f"/api/v1/sessions/{session['id']}").status_code == 200

    wss = relay.url.replace("https", "wss")
    for first in ("not json", b"\x00\xff" * 10, '{"v":1,"type":"tunnel","token":"A"}'):
        with connect(f"{wss}/agent/tunnel/{session['id']}", ssl=client_context(),
                     open_timeout=10) as ws:
            ws.send(first)
            reply = json.loads(ws.recv(5))
            assert reply["type"] == "error" and reply["code"]
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (4400, 4401)
    refused = events(relay, "session.tunnel.refused")
    assert [e["details"]["reason"] for e in refused][-3:] == ["bad_json", "bad_encoding",
                                                             "bad_token"]
    assert relay.healthy()


def test_offline_agent_and_dial_failure(world: World) -> None:
    relay, admin = world.relay, world.admin
    idle = AgentProcess(world.root, "never-started")
    assert idle.enroll(relay.token()).returncode == 0
    r = admin.post(f"/api/v1/agents/{idle.agent_id}/sessions", json={})
    assert r.status_code == 409 and r.json()["error"] == "offline"
    # An agent whose policy file is broken refuses the dial and says why.
    broken = start_agent(world.root, relay, admin, "broken-policy", POLICY)
    try:
        (broken.state_dir / "policy.toml").write_text('[capabilities]\ninfo = "sure"\n')
        r = admin.post(f"/api/v1/agents/{broken.agent_id}/sessions", json={})
        assert r.status_code == 502 and r.json()["error"] == "dial_failed", r.text
    finally:
        broken.stop()
    failed = events(relay, "session.open.failed")
    assert failed[-1]["details"]["reason"] == "dial_failed"
    assert "policy" in failed[-1]["details"]["detail"]
    assert gauge(relay) == 0


# --- ending ------------------------------------------------------------------------------


def test_idle_out_customer_end_and_agent_stop(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, {"BACKLINE_SESSION_IDLE_MINUTES": "0.03"}).start()
    admin = admin_api(relay)
    agent = None
    try:
        agent = start_agent(tmp_path, relay, admin, "idler")
        session = open_session(admin, agent.agent_id)
        assert admin.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 200
        row = wait_for(lambda: (lambda s: s if s["state"] == "closed" else None)(
            admin.get(f"/api/v1/sessions/{session['id']}").json()), 15, "the idle-out")
        assert row["close_reason"] == "idle"
        assert gauge(relay) == 0

        second = open_session(admin, agent.agent_id)
        r = agent.cmd("end-sessions")
        assert r.returncode == 0, r.stderr
        row = wait_for(lambda: (lambda s: s if s["state"] == "closed" else None)(
            admin.get(f"/api/v1/sessions/{second['id']}").json()), 15, "the customer's end")
        assert row["close_reason"] == "customer"
        end = events(relay, "session.end", second["id"])[-1]
        assert end["actor"] == f"agent:{agent.agent_id}"
        assert agent.proc is not None and agent.proc.poll() is None  # the agent keeps running

        third = open_session(admin, agent.agent_id)
        assert agent.stop() == 0
        row = wait_for(lambda: (lambda s: s if s["state"] == "closed" else None)(
            admin.get(f"/api/v1/sessions/{third['id']}").json()), 15, "the agent's stop")
        assert row["close_reason"] == "agent_stopping"
    finally:
        if agent is not None:
            agent.stop()
        admin.close()
        relay.stop()


# --- the store -------------------------------------------------------------------------


def test_a_session_through_a_real_agent_on_each_database(tmp_path: Path,
                                                         database: TestDatabase) -> None:
    """The session's whole path on SQLite and on PostgreSQL: its row (reason and ticket at
    their longest, in non-ASCII), a channel, a diagnostics report kept, the end; then
    the trail verifies from the command line."""
    relay = RelayProcess(tmp_path, database.env).start()
    admin = admin_api(relay)
    agent = AgentProcess(tmp_path, "pc-store")
    try:
        agent.state_dir.mkdir(parents=True)
        (agent.state_dir / "agent.toml").write_text(staged_diagnostics(free_port()))
        start_agent(tmp_path, relay, admin, "pc-store", agent=agent,
                    policy='[capabilities]\ninfo = "allow"\ndiagnostics = "allow"\n')
        reason, ticket = "é" * 512, "T" * 128
        session = open_session(admin, agent.agent_id, reason=reason, ticket=ticket)
        assert session["reason"] == reason and session["ticket"] == ticket
        assert admin.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 200
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/diagnostics")
        assert r.status_code == 200, r.text
        report_id = r.json()["report"]
        kept = admin.get(f"/api/v1/reports/{report_id}").json()
        assert kept["session_id"] == session["id"] and kept["sha256"] == r.json()["sha256"]
        closed = admin.request("DELETE", f"/api/v1/sessions/{session['id']}").json()
        assert closed["state"] == "closed" and closed["closed_at"] >= closed["opened_at"]
        listed = admin.get("/api/v1/sessions", params={"agent": agent.agent_id}).json()
        assert [s["id"] for s in listed["sessions"]] == [session["id"]]
        assert [e["action"] for e in events(relay, "session.", session["id"])] == [
            "session.open", "session.start", "session.channel", "session.channel",
            "session.end"]
        verified = relay.cli("audit", "verify")
        assert verified.returncode == 0 and verified.stdout.startswith("OK"), verified.stderr
    finally:
        agent.stop()
        admin.close()
        relay.stop()
