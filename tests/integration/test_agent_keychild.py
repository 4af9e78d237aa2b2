"""The running agent signs the control handshake in a child process (agent/keychild.py),
with real processes: it connects, reconnects after a relay restart, and holds no
cryptography meanwhile; a key that goes bad while it runs stops it at its next
connection with a clear error and a clean status, as an unusable key at the start does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backline.agent.localcontrol import SOCKET_NAME, request
from tests.harness import AgentProcess, RelayProcess, admin_api, wait_for

pytestmark = pytest.mark.integration


def test_the_agent_signs_in_a_child_and_stops_when_its_key_goes_bad(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path).start()
    admin = admin_api(relay)
    agent = AgentProcess(tmp_path, "pc-keychild")
    try:
        assert agent.enroll(relay.token()).returncode == 0
        agent.start()

        def online() -> bool:
            return bool(admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"])

        wait_for(online, 30, "the agent online")
        wait_for(lambda: (agent.state_dir / SOCKET_NAME).exists(), 10, "the control socket")
        assert "cryptography" not in request(agent.state_dir, {"op": "status"})["loaded"]
        relay.stop()
        admin.close()
        relay.start()
        admin = admin_api(relay)
        wait_for(online, 90, "the agent back after the relay's restart (a new signature)")
        assert "cryptography" not in request(agent.state_dir, {"op": "status"})["loaded"]

        (agent.state_dir / "identity_key").write_bytes(b"not a key\n")
        relay.stop()
        relay.start()
        assert agent.proc is not None
        assert agent.proc.wait(120) == 6
        log = agent.log_path.read_text()
        assert "identity key" in log and "cannot be used" in log and "Traceback" not in log
        status = json.loads((agent.state_dir / "status.json").read_text())
        assert status["state"] == "stopped" and "cannot be used" in status["last_error"]
    finally:
        agent.stop()
        admin.close()
        relay.stop()
