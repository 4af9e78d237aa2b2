"""The customer's side of a live session, with real processes: a relay, an enrolled
``backline-agent run``, and the agent's own commands. ``backline-agent sessions``
lists what is live, ``backline-agent end ID`` ends one at once (the relay closes it
with reason ``customer``); the local control socket is the owner's only (0600),
bounded and validated. An idle agent holds none of the capabilities' machinery
(asyncssh, the diagnostics collectors, psutil) until a session needs it."""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from backline.agent.localcontrol import MAX_REQUEST, SOCKET_NAME, request
from tests.harness import AgentProcess, Api, RelayProcess, admin_api, wait_for

pytestmark = pytest.mark.integration

POLICY = '[capabilities]\ninfo = "allow"\ndiagnostics = "allow"\n'
# The scheduled health check every second: it must not load the collectors either.
AGENT_CONFIG = "[diagnostics]\nhealth_interval_s = 1\n"


@dataclass
class World:
    relay: RelayProcess
    admin: Api
    agent: AgentProcess


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    relay = RelayProcess(tmp_path).start()
    admin = admin_api(relay)
    agent = AgentProcess(tmp_path, "pc-local")
    try:
        assert agent.enroll(relay.token()).returncode == 0
        (agent.state_dir / "policy.toml").write_text(POLICY)
        (agent.state_dir / "agent.toml").write_text(AGENT_CONFIG)
        agent.start()
        wait_for(lambda: admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"], 20,
                 "the agent online")
        wait_for(lambda: (agent.state_dir / SOCKET_NAME).exists(), 10, "the control socket")
        yield World(relay, admin, agent)
    finally:
        agent.stop()
        admin.close()
        relay.stop()


def closed(admin: Api, session_id: str) -> dict[str, object] | None:
    row: dict[str, object] = admin.get(f"/api/v1/sessions/{session_id}").json()
    return row if row["state"] == "closed" else None


def test_an_idle_agent_holds_no_capability_machinery_until_a_session_needs_it(
        world: World) -> None:
    agent, admin = world.agent, world.admin
    time.sleep(3)  # several scheduled health checks (in a child process each)
    status = request(agent.state_dir, {"op": "status"})
    assert status["ok"] and status["sessions"] == 0
    assert status["loaded"] == [], status  # no asyncssh, collectors, psutil, pty, crypto
    session = admin.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                         json={"reason": "check"}).json()
    assert admin.post(f"/api/v1/sessions/{session['id']}/channels/info").status_code == 200
    loaded = request(agent.state_dir, {"op": "status"})["loaded"]
    assert "asyncssh" in loaded and "backline.agent.sshserver" in loaded
    assert "cryptography" in loaded  # asyncssh's; signed in a child until then
    assert "backline.agent.diagnostics.collectors" not in loaded  # info needs none of it


def test_sessions_lists_what_is_live_and_end_ends_one_at_once(world: World) -> None:
    agent, admin, relay = world.agent, world.admin, world.relay
    r = agent.cmd("sessions")
    assert r.returncode == 0 and "no live support sessions" in r.stdout
    first = admin.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                       json={"reason": "printer jams", "ticket": "T-42"}).json()
    second = admin.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                        json={"reason": "second"}).json()
    r = agent.cmd("sessions", "--json")
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assert [s["id"] for s in listed] == [first["id"], second["id"]]
    assert listed[0]["technician"] == "admin" and listed[0]["reason"] == "printer jams"
    assert listed[0]["ticket"] == "T-42" and listed[0]["in_use"] == []
    assert abs(listed[0]["since"] - time.time()) < 60
    table = agent.cmd("sessions").stdout
    assert first["id"] in table and "printer jams [T-42]" in table

    r = agent.cmd("end", first["id"])
    assert r.returncode == 0, r.stderr
    row = wait_for(lambda: closed(admin, first["id"]), 15, "the customer's end")
    assert row["close_reason"] == "customer"
    assert closed(admin, second["id"]) is None  # the other session lives on
    wait_for(lambda: [s["id"] for s in json.loads(agent.cmd("sessions", "--json").stdout)]
             == [second["id"]], 10, "the ended session gone from the list")
    log = [json.loads(line) for line in
           (agent.state_dir / "activity.jsonl").read_text().splitlines()]
    assert any(e["event"] == "session.end_requested" and e["session_id"] == first["id"]
               for e in log)
    assert relay.proc is not None and relay.proc.poll() is None

    r = agent.cmd("end", "ss_doesnotexist000")
    assert r.returncode == 2 and "no live session" in r.stderr
    r = agent.cmd("end", "../../etc/passwd")
    assert r.returncode == 2 and "not a session id" in r.stderr
    r = agent.cmd("end-sessions")
    assert r.returncode == 0 and "ended 1 support session" in r.stdout
    wait_for(lambda: closed(admin, second["id"]), 15, "end-sessions")


def test_the_control_socket_is_the_owners_and_refuses_what_it_does_not_know(
        world: World) -> None:
    path = world.agent.state_dir / SOCKET_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(world.agent.state_dir.stat().st_mode) == 0o700

    def raw(data: bytes) -> dict[str, object]:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(data)
            answer = b""
            while not answer.endswith(b"\n"):
                chunk = sock.recv(4096)
                assert chunk
                answer += chunk
        result: dict[str, object] = json.loads(answer)
        return result

    assert raw(b"not json\n")["error"] == "malformed"
    assert raw(b'{"op": "shutdown"}\n')["error"] == "unknown_op"
    assert raw(b'{"op": "sessions", "extra": 1}\n')["error"] == "unknown_op"
    assert raw(b"x" * (MAX_REQUEST + 10))["error"] == "too_large"
    log = [json.loads(line) for line in
           (world.agent.state_dir / "activity.jsonl").read_text().splitlines()]
    reasons = [e["reason"] for e in log if e["event"] == "local.refused"]
    assert reasons == ["malformed", "unknown_op", "unknown_op", "too_large"]
    assert world.agent.proc is not None and world.agent.proc.poll() is None
