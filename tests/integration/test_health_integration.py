"""Acceptance, with real processes: an agent whose disk threshold is set low pushes a
``health`` alert on its schedule; the relay stores it for the agent list and calls a
signed webhook; ``backline-agent diagnose`` on the enrolled machine checks the relay
with its pinned certificate and measures the clock against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from backline.relay.webhooks import verify
from tests.harness import AgentProcess, RelayProcess, admin_api, audit_actions, wait_for
from tests.integration.test_webhooks import SECRET, Receiver


def test_health_alert_reaches_agent_list_and_webhook(tmp_path: Path) -> None:
    with Receiver([500]) as rx:  # the first delivery fails: the retry must carry it
        relay = RelayProcess(tmp_path, {"BACKLINE_WEBHOOK_URL": rx.url,
                                        "BACKLINE_WEBHOOK_SECRET": SECRET}).start()
        agent = AgentProcess(tmp_path, "host-health")
        try:
            api = admin_api(relay)
            r = agent.enroll(relay.token())
            assert r.returncode == 0, r.stderr
            (agent.state_dir / "agent.toml").write_text(
                "[diagnostics]\nhealth_interval_s = 1\n"
                "[thresholds]\ndisk_used_pct = 1\ndisk_critical_pct = 100\n"
                # Only the staged finding: a loaded test machine is not "high load".
                "load_per_cpu = 1000\nmemory_used_pct = 101\nswap_used_pct = 101\n")
            agent.start()

            def health() -> list[dict[str, Any]]:
                row = api.get(f"/api/v1/agents/{agent.agent_id}").json()
                return list(row.get("health") or [])

            alerts = wait_for(health, 30, "the agent's health alert in the agent list")
            assert [a["id"] for a in alerts] == ["disk-almost-full"]
            assert alerts[0]["severity"] == "warning"

            def hooks() -> list[dict[str, Any]]:
                return [r for r in rx.requests
                        if r["headers"].get("X-Backline-Event") == "agent.health"]

            wait_for(lambda: len(hooks()) >= 2, 30, "the webhook, retried once")
            delivered = hooks()[-1]
            assert verify(SECRET, delivered["body"],
                          delivered["headers"]["X-Backline-Signature"])
            event = json.loads(delivered["body"])
            assert event["data"]["agent_id"] == agent.agent_id
            assert event["data"]["hostname"] == "host-health"
            assert [a["id"] for a in event["data"]["alerts"]] == ["disk-almost-full"]

            result = agent.cmd("diagnose", "--json")
            assert result.returncode == 0, result.stderr
            report = json.loads(result.stdout)
            sections = {s["name"]: s for s in report["sections"]}
            relay_check = sections["endpoints"]["data"]["checks"][0]
            assert relay_check["target"] == relay.url + "/healthz"
            assert relay_check["pinned"] is True and relay_check["http_status"] == 200
            clock = sections["clock"]["data"]
            assert clock["known"] is True and clock["source"] == "relay-http"
            assert clock["abs_offset_s"] < 2
            found = {f["rule_id"] for f in report["findings"]}
            assert "relay-certificate-mismatch" not in found
            assert "endpoint-unreachable" not in found
            api.close()
        finally:
            agent.stop()
            relay.stop()
    assert "webhook.failed" not in [e["action"] for e in audit_actions(relay)]
