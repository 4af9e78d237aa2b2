"""A channel's hostile ends, with a real relay and a real agent process: output far past
the relay's 8 MiB bound is cut there, marked, audited and answered at once (not a 504
after 120 s); an agent killed in the middle of a channel is a clear 502 ``agent_gone``,
audited, and the session is closed, not left "ready" on a dead tunnel.

The agent is the real one with its ``info`` capability swapped for one that writes
64 MiB, or one that writes a line and waits (tests/bulky_agent.py): no collector of
the real diagnostics can be made to write 8 MiB, their output is bounded by design.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    audit_actions,
    browser_socket,
    wait_for,
)
from tests.integration.test_sessions import open_session, start_agent

POLICY = '[capabilities]\ninfo = "allow"\n'
REPO = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


class BulkyAgent(AgentProcess):
    """:class:`AgentProcess`, started as ``python -m tests.bulky_agent``."""

    def __init__(self, root: Path, name: str, mode: str) -> None:
        super().__init__(root, name)
        self.mode = mode
        self.mark = root / f"{name}.channel-open"

    def start(self) -> BulkyAgent:
        log = open(self.log_path, "a")
        env = {**os.environ, "BULKY_MODE": self.mode, "BULKY_MARK": str(self.mark)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bulky_agent", "--state-dir", str(self.state_dir),
             "run"], stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=str(REPO))
        return self


def channel_events(relay: RelayProcess, session_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay)
            if e["action"] == action and e["target"] == f"session:{session_id}"]


def test_output_past_the_bound_is_cut_marked_and_answered_at_once(
        tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    agent = BulkyAgent(tmp_path, "bulky", "flood")
    start_agent(tmp_path, relay, admin, "bulky", policy=POLICY, agent=agent)
    try:
        session = open_session(admin, agent.agent_id, capabilities=["info"])
        started = time.monotonic()
        r = admin.post(f"/api/v1/sessions/{session['id']}/channels/info")
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        result = r.json()
        assert took < 30, f"answered after {took:.1f} s"
        assert result["truncated"] is True
        assert result["bytes"] == result["bytes_kept"] == 8 * MiB
        assert result["limit"] == 8 * MiB and result["bytes_dropped"] > 0
        assert result["exit_status"] is None  # the relay closed the channel; no exit
        assert result["format"] in ("jsonl", "text")  # the cut may split the last line
        audited = channel_events(relay, session["id"], "session.channel")
        assert audited and audited[-1]["details"]["truncated"] is True
        assert audited[-1]["details"]["bytes_dropped"] == result["bytes_dropped"]
        assert audited[-1]["details"]["sha256"] == result["sha256"]
        # The session survives the cut: still open, closed on request.
        assert admin.get(f"/api/v1/sessions/{session['id']}").json()["state"] == "ready"
        closed = admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
        assert closed.status_code == 200 and closed.json()["state"] == "closed"
        assert relay.healthy()
    finally:
        agent.stop()


def test_agent_killed_during_a_channel_is_a_clear_502(
        tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    agent = BulkyAgent(tmp_path, "doomed", "hang")
    start_agent(tmp_path, relay, admin, "doomed", policy=POLICY, agent=agent)
    try:
        session = open_session(admin, agent.agent_id, capabilities=["info"])
        answer: dict[str, httpx.Response] = {}
        runner = Api(relay)
        runner.http.cookies = admin.http.cookies
        runner.csrf = admin.csrf

        def run() -> None:
            answer["r"] = runner.post(f"/api/v1/sessions/{session['id']}/channels/info")

        thread = threading.Thread(target=run)
        thread.start()
        wait_for(agent.mark.exists, 20, "the channel to open")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGKILL)
        agent.proc.wait(10)
        thread.join(30)
        assert not thread.is_alive(), "no answer 30 s after the agent died"
        r = answer["r"]
        assert r.status_code == 502, r.text
        body = r.json()
        assert body["error"] == "agent_gone" and body["detail"]
        failed = wait_for(lambda: channel_events(relay, session["id"],
                                                 "session.channel.failed"),
                          10, "the audited failure")
        assert failed[-1]["details"]["reason"] == "agent_gone"
        assert failed[-1]["details"]["capability"] == "info"
        row = wait_for(lambda: (lambda s: s if s["state"] == "closed" else None)(
            admin.get(f"/api/v1/sessions/{session['id']}").json()), 10, "the session closed")
        assert row["close_reason"] in ("agent_gone", "tunnel_lost")
        again = admin.post(f"/api/v1/sessions/{session['id']}/channels/info")
        assert again.status_code == 409, again.text
        assert relay.healthy()
    finally:
        agent.stop()


def test_agent_killed_during_a_streamed_channel_is_said_and_audited(
        tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    agent = BulkyAgent(tmp_path, "streamed", "hang")
    start_agent(tmp_path, relay, admin, "streamed", policy=POLICY, agent=agent)
    try:
        session = open_session(admin, agent.agent_id, capabilities=["info"])
        with browser_socket(relay, admin, f"/api/v1/sessions/{session['id']}/stream/info"
                            ) as ws:
            assert json.loads(ws.recv(20))["type"] == "line"  # the one line, then silence
            wait_for(agent.mark.exists, 20, "the channel to open")
            assert agent.proc is not None
            agent.proc.send_signal(signal.SIGKILL)
            agent.proc.wait(10)
            said = json.loads(ws.recv(20))
        assert said["type"] == "error" and said["error"] == "agent_gone", said
        failed = channel_events(relay, session["id"], "session.channel.failed")
        assert failed and failed[-1]["details"]["reason"] == "agent_gone"
        row = wait_for(lambda: (lambda s: s if s["state"] == "closed" else None)(
            admin.get(f"/api/v1/sessions/{session['id']}").json()), 10, "the session closed")
        assert row["close_reason"] in ("agent_gone", "tunnel_lost")
    finally:
        agent.stop()
