"""Every playback and every export is an audit event, and every piece of evidence is
served only when it is what the trail recorded (issue 14), on the paths that did neither:

- ``GET /api/v1/fix-runs/{id}/output`` and ``GET /api/v1/reports/{id}``: audited
  ``evidence.viewed`` on the session (as the timeline's evidence path is), and checked
  against the digest the trail recorded: a blob altered on disk (same length) is 409
  ``digest_mismatch``, audited ``evidence.refused``;
- ``backline-relay audit export`` (``audit.export``) and ``report show``
  (``report.exported``), recorded into the trail beside the running relay;
- the management report as the console shows and prints it (``report.viewed``).

A real relay and agent: a session runs an approved fix and a diagnostics run, so the
evidence is what the relay itself kept and the digests are those its trail recorded.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness import AgentProcess, Api, RelayProcess, admin_api, audit_actions
from tests.integration.test_fix_relay import manifest_toml
from tests.integration.test_management_reports import POLICY
from tests.integration.test_sessions import make_user, open_session, start_agent

CLI = f"cli:{getpass.getuser()}"
DAY = 86400.0


@dataclass
class World:
    relay: RelayProcess
    admin: Api
    alice: Api  # the technician who ran the session
    agent: AgentProcess
    session: str
    run: dict[str, Any]  # the fix run's record
    report: dict[str, Any]  # the diagnostics report's row


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          initialised_relay: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("evidence")
    relay = RelayProcess(root, template=initialised_relay).start()
    admin = admin_api(relay)
    alice = make_user(admin, relay, "alice", "technician", ("default",))
    bob = make_user(admin, relay, "bob", "approver")
    agent = None
    try:
        agent = start_agent(root, relay, admin, "pc-evidence", policy=POLICY)
        text = manifest_toml("ev-output", script="echo evidence line one\necho two\n")
        assert alice.post("/api/v1/fixes", json={"manifest_toml": text}).status_code == 201
        shown = bob.get("/api/v1/fixes/ev-output/1").json()
        assert bob.post("/api/v1/fixes/ev-output/1/approve",
                        json={"digest": shown["digest"]}).status_code == 200
        session = open_session(alice, agent.agent_id, reason="evidence", ticket="T-EV",
                               capabilities=["info", "diagnostics", "fix"])
        sid = session["id"]
        try:
            ran = alice.post(f"/api/v1/sessions/{sid}/channels/fix",
                             json={"fix": "ev-output@1", "params": {}})
            assert ran.status_code == 200, ran.text
            assert ran.json()["status"] == "ended", ran.json()
            diag = alice.post(f"/api/v1/sessions/{sid}/channels/diagnostics",
                              json={"sections": ["system", "disk"]})
            assert diag.status_code == 200, diag.text
        finally:
            alice.request("DELETE", f"/api/v1/sessions/{sid}")
        run = alice.get(f"/api/v1/fix-runs/{ran.json()['run_id']}").json()
        assert run["output_sha256"], run
        reports = admin.get(f"/api/v1/agents/{agent.agent_id}/reports").json()["reports"]
        report = next(r for r in reports if r["id"] == diag.json()["report"])
        yield World(relay, admin, alice, agent, sid, run, report)
    finally:
        if agent is not None:
            agent.stop()
        for api in (alice, bob, admin):
            api.close()
        relay.stop()


def blob(relay: RelayProcess, sha256: str) -> Path:
    return relay.data_dir / "blobs" / sha256[:2] / sha256


def last(relay: RelayProcess, action: str) -> dict[str, Any]:
    found = [e for e in audit_actions(relay) if e["action"] == action]
    assert found, f"no {action} in the trail"
    return found[-1]


def trail_digest(relay: RelayProcess, action: str, field: str, ident: str,
                 digest_field: str) -> tuple[int, str]:
    """(seq, digest) of the event that stored ``ident``, as the trail says."""
    ev = next(e for e in audit_actions(relay)
              if e["action"] == action and e["details"].get(field) == ident)
    return ev["seq"], ev["details"][digest_field]


class altered:
    """The blob of ``sha256`` on the relay's disk, one byte changed (same length), for
    the duration; put back after."""

    def __init__(self, relay: RelayProcess, sha256: str) -> None:
        self.path = blob(relay, sha256)

    def __enter__(self) -> str:
        self.original = self.path.read_bytes()
        changed = bytearray(self.original)
        changed[len(changed) // 2] ^= 0x01
        assert len(changed) == len(self.original) and bytes(changed) != self.original
        self.path.chmod(0o600)
        self.path.write_bytes(bytes(changed))
        return hashlib.sha256(bytes(changed)).hexdigest()

    def __exit__(self, *exc: object) -> None:
        self.path.write_bytes(self.original)


# --- fix output ------------------------------------------------------------------------


def test_fix_output_is_checked_against_the_trail_and_audited(world: World) -> None:
    run = world.run
    seq, recorded = trail_digest(world.relay, "fix.run.ended", "run", run["id"], "blob")
    assert recorded == run["output_sha256"]
    r = world.alice.get(f"/api/v1/fix-runs/{run['id']}/output")
    assert r.status_code == 200, r.text
    assert r.content == b"evidence line one\ntwo\n"
    assert r.headers["x-content-sha256"] == recorded and r.headers["x-trail-seq"] == str(seq)
    ev = last(world.relay, "evidence.viewed")
    assert (ev["actor"], ev["target"]) == ("user:alice", f"session:{world.session}")
    assert ev["details"] == {"evidence": run["id"], "kind": "fix_output", "sha256": recorded,
                             "bytes": len(r.content), "address": "127.0.0.1"}


def test_an_altered_fix_output_is_refused_409_and_audited(world: World) -> None:
    run = world.run
    with altered(world.relay, run["output_sha256"]) as actual:
        r = world.alice.get(f"/api/v1/fix-runs/{run['id']}/output")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "digest_mismatch"
        assert run["output_sha256"] in r.json()["detail"] and actual in r.json()["detail"]
        assert "evidence line" not in r.text
    ev = last(world.relay, "evidence.refused")
    assert (ev["actor"], ev["target"]) == ("user:alice", f"session:{world.session}")
    assert ev["details"] == {"reason": "digest_mismatch", "method": "GET",
                             "address": "127.0.0.1", "evidence": run["id"],
                             "trail_sha256": run["output_sha256"], "actual_sha256": actual}
    # Put back, it is served again.
    assert world.alice.get(f"/api/v1/fix-runs/{run['id']}/output").status_code == 200


def test_a_fix_run_row_pointed_at_another_blob_is_refused_row_altered(world: World) -> None:
    """Someone who can write the database points the run at other bytes the store holds
    (the diagnostics report's): the relay served them before; now the trail says no."""
    run, other = world.run, world.report["sha256"]
    db = sqlite3.connect(world.relay.data_dir / "relay.db", timeout=30)
    try:
        with db:
            db.execute("UPDATE fix_runs SET output_sha256 = ? WHERE id = ?", (other, run["id"]))
        r = world.alice.get(f"/api/v1/fix-runs/{run['id']}/output")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "row_altered"
        assert run["output_sha256"] in r.json()["detail"] and other in r.json()["detail"]
    finally:
        with db:
            db.execute("UPDATE fix_runs SET output_sha256 = ? WHERE id = ?",
                       (run["output_sha256"], run["id"]))
        db.close()
    ev = last(world.relay, "evidence.refused")
    assert ev["details"]["reason"] == "row_altered" and ev["details"]["evidence"] == run["id"]
    assert ev["details"]["trail_sha256"] == run["output_sha256"]
    assert ev["details"]["actual_sha256"] == other


# --- diagnostics report ----------------------------------------------------------------


def test_a_diagnostics_report_is_checked_against_the_trail_and_audited(world: World) -> None:
    rep = world.report
    seq, recorded = trail_digest(world.relay, "diagnostics.report", "report", rep["id"],
                                 "sha256")
    assert recorded == rep["sha256"]
    r = world.admin.get(f"/api/v1/reports/{rep['id']}")
    assert r.status_code == 200, r.text
    assert {s["name"] for s in r.json()["report"]["sections"]} >= {"system", "disk"}
    assert r.headers["x-content-sha256"] == recorded and r.headers["x-trail-seq"] == str(seq)
    ev = last(world.relay, "evidence.viewed")
    assert (ev["actor"], ev["target"]) == ("user:admin", f"session:{world.session}")
    assert ev["details"] == {"evidence": rep["id"], "kind": "diagnostics", "sha256": recorded,
                             "bytes": rep["size"], "address": "127.0.0.1"}


def test_an_altered_diagnostics_report_is_refused_409_and_audited(world: World) -> None:
    rep = world.report
    with altered(world.relay, rep["sha256"]) as actual:
        r = world.admin.get(f"/api/v1/reports/{rep['id']}")
        assert r.status_code == 409, r.text
        assert r.json()["error"] == "digest_mismatch"
        assert rep["sha256"] in r.json()["detail"] and actual in r.json()["detail"]
    ev = last(world.relay, "evidence.refused")
    assert (ev["actor"], ev["target"]) == ("user:admin", f"session:{world.session}")
    assert ev["details"] == {"reason": "digest_mismatch", "method": "GET",
                             "address": "127.0.0.1", "evidence": rep["id"],
                             "trail_sha256": rep["sha256"], "actual_sha256": actual}
    # The timeline shows the refusal among the session's events.
    shown = world.admin.get(f"/api/v1/sessions/{world.session}/timeline",
                            params={"limit": 1000}).json()["events"]
    assert any(e["action"] == "evidence.refused" and e["details"]["evidence"] == rep["id"]
               for e in shown)
    assert world.admin.get(f"/api/v1/reports/{rep['id']}").status_code == 200


# --- the CLI, beside the running relay ----------------------------------------------------


def test_cli_audit_export_is_audited_in_the_export_itself(world: World,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "trail.jsonl"
    done = world.relay.cli("audit", "export", "-o", str(out))
    assert "wrote " in done.stderr, done.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    ev = lines[-1]  # recorded before the first line was written: the export holds it
    assert (ev["actor"], ev["action"], ev["target"]) == (CLI, "audit.export", "audit")
    assert ev["details"] == {"since": None, "output": str(out)}
    assert last(world.relay, "audit.export")["seq"] == ev["seq"]
    # --checkpoints to standard output, --since: each its own event.
    world.relay.cli("audit", "export", "--checkpoints")
    ev = last(world.relay, "audit.export")
    assert ev["actor"] == CLI and ev["details"] == {"since": None, "checkpoints": True}
    world.relay.cli("audit", "export", "--since", "1700000000")
    assert last(world.relay, "audit.export")["details"] == {"since": 1700000000.0}
    # The relay appends after the CLI did; the chain and the tree still hold.
    assert world.admin.get("/api/v1/audit/verify").json()["ok"] is True
    # The API's export, for comparison: the same action, with the address.
    assert world.admin.get("/api/v1/audit/export").status_code == 200
    ev = last(world.relay, "audit.export")
    assert (ev["actor"], ev["details"]) == ("user:admin",
                                            {"since": None, "address": "127.0.0.1"})
    assert world.relay.cli("audit", "verify").returncode == 0


def test_cli_report_show_is_audited(world: World) -> None:
    shown = world.relay.cli("report", "show", "--days", "7", "--group", "default")
    report = json.loads(shown.stdout)
    ev = last(world.relay, "report.exported")
    assert (ev["actor"], ev["target"]) == (CLI, "report")
    assert ev["details"] == {"format": "json", "group": "default", "since": report["since"],
                             "until": report["until"]}
    assert report["until"] - report["since"] == pytest.approx(7 * DAY)


# --- management reports through the API ---------------------------------------------------


def test_management_reports_viewed_and_exported_are_audited(world: World) -> None:
    api, period = world.admin, {"since": 1_700_000_000, "until": 1_700_000_000 + 7 * DAY}
    r = api.get("/api/v1/management-reports", params=period)
    assert r.status_code == 200, r.text
    ev = last(world.relay, "report.viewed")
    assert (ev["actor"], ev["target"]) == ("user:admin", "report")
    assert ev["details"] == {"group": "", **period, "address": "127.0.0.1"}
    r = api.get("/api/v1/management-reports/members",
                params={**period, "metric": "sessions"})
    assert r.status_code == 200, r.text
    ev = last(world.relay, "report.viewed")
    assert ev["details"] == {"group": "", **period, "metric": "sessions", "key": "",
                             "address": "127.0.0.1"}
    r = api.get("/api/v1/management-reports/csv", params={**period, "group": "default"})
    assert r.status_code == 200, r.text
    ev = last(world.relay, "report.exported")
    assert (ev["actor"], ev["target"]) == ("user:admin", "report")
    assert ev["details"] == {"format": "csv", "group": "default", **period,
                             "address": "127.0.0.1"}
