"""The auditor's timeline lists a session's evidence from the trail (relay/timeline.py),
against a real relay: each piece a store event recorded is joined with its row and its
blob, so that what was removed from the relay's database or its blob store behind its
back is shown as missing ("in the trail, no record on the relay"), told apart from a
deletion the retention policy made and audited; intact pieces stay as they were.

The session's rows, blobs and trail events are seeded the way the relay writes them
(the store's own ``append_many``; a real ``retention.delete``), then the relay runs and
the test tampers with its database and blob store while it does, as an intruder with
write access to the data directory would."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from backline.relay import config as relay_config
from backline.relay import retention, users
from backline.relay.blobs import BlobStore
from backline.relay.schema import (
    agents,
    diagnostics_reports,
    fix_runs,
    recordings,
    support_sessions,
)
from backline.relay.store import open_store
from tests.harness import RelayProcess, admin_api, audit_actions

DAY = 86400.0
SID, AGENT = "se_tl", "ag_tl"


def _cast(text: str) -> bytes:
    return (b'{"version": 2, "width": 80, "height": 24}\n'
            + json.dumps([0.5, "o", text]).encode() + b"\n")


def _seed(data_dir: Path) -> dict[str, str]:
    """One closed session with evidence of every kind; returns each piece's SHA-256."""
    store = open_store(relay_config.load(None, {"data_dir": data_dir}, environ={}))
    blobs = BlobStore(data_dir / "blobs")
    now = time.time()
    sha: dict[str, str] = {}
    events: list[tuple[str, str, str, dict[str, Any]]] = []
    default = users.group_id(store.engine, "default")
    with store.engine.begin() as conn:
        conn.execute(agents.insert().values(
            id=AGENT, group_id=default, public_key=b"k" * 32, hostname="pc-tl", os="linux",
            os_version="6", arch="x86_64", version="1", label="", enrolled_at=now - 50 * DAY,
            enroll_token_id="et_x"))
        conn.execute(support_sessions.insert().values(
            id=SID, mode="agent", agent_id=AGENT, technician="admin", opened_by="user:admin",
            state="closed", created_at=now - 41 * DAY))
        # Recordings: intact; its row removed; its blob removed; marked deleted by hand;
        # deleted by retention (audited); and one the trail never stored.
        for n, (rid, capability) in enumerate((
                ("rc_intact", "shell"), ("rc_row_gone", "shell"), ("rc_blob_gone", "cobrowse"),
                ("rc_marked", "shell"), ("rc_retained", "shell"), ("rc_untrailed", "shell"))):
            content = _cast(f"{rid}\r\n")
            sha[rid] = blobs.put(content)
            conn.execute(recordings.insert().values(
                id=rid, session_id=SID, capability=capability, agent_id=AGENT,
                technician="admin", started_at=now - 40 * DAY + n, duration_s=1.5,
                bytes=len(content), sha256=sha[rid], keystrokes=False))
            if rid != "rc_untrailed":
                events.append(("user:admin", "recording.stored", f"session:{SID}",
                               {"recording": rid, "capability": capability,
                                "sha256": sha[rid], "bytes": len(content), "duration_s": 1.5,
                                "keystrokes": False}))
        # Fix runs: intact; its row removed; one whose output the relay could not keep.
        for n, rid in enumerate(("fr_intact", "fr_gone", "fr_notkept")):
            output = f"output of {rid}\n".encode()
            kept = rid != "fr_notkept"
            blob = blobs.put(output) if kept else ""
            sha[rid] = blob or hashlib.sha256(output).hexdigest()
            conn.execute(fix_runs.insert().values(
                id=rid, fix_id="clean-temp", version=1, digest="sha256:" + "d" * 64,
                session_id=SID, agent_id=AGENT, technician="admin", params="{}",
                status="succeeded" if kept else "failed", started_at=now - 39 * DAY + n,
                ended_at=now - 39 * DAY + n + 1, exit_status=0, kept_bytes=len(output),
                output_bytes=len(output), output_sha256=blob or None, output_ok=kept))
            events.append(("user:admin", "fix.run.ended", f"session:{SID}",
                           {"digest": "sha256:" + "d" * 64, "run": rid, "session": SID,
                            "agent": AGENT, "exit_status": 0,
                            "output_sha256": hashlib.sha256(output).hexdigest(),
                            "kept_bytes": len(output), "output_bytes": len(output),
                            "output_ok": kept, "blob": blob}))
        # Diagnostics reports (filed under the agent, with a ``session`` detail): intact;
        # its row removed.
        for n, rid in enumerate(("dr_intact", "dr_gone")):
            raw = json.dumps({"type": "end", "findings": [], "id": rid}).encode() + b"\n"
            sha[rid] = blobs.put(raw)
            conn.execute(diagnostics_reports.insert().values(
                id=rid, agent_id=AGENT, session_id=SID, technician="admin",
                created_at=now - 38 * DAY + n, sha256=sha[rid], size=len(raw), findings=0,
                worst="none"))
            events.append(("user:admin", "diagnostics.report", f"agent:{AGENT}",
                           {"report": rid, "session": SID, "sha256": sha[rid], "findings": 0,
                            "worst": "none"}))
    store.audit.append_many(events)
    # rc_retained goes the way retention deletes (row marked, event, blob removed).
    item = retention.Item("recording", "rc_retained", SID, AGENT, sha["rc_retained"],
                          now - 40 * DAY + 4, 30.0)

    def record(actor: str, action: str, target: str, **details: Any) -> None:
        store.audit.append_many([(actor, action, target, details)])

    assert retention.delete(store.engine, blobs, item, record, now) == "deleted"
    store.engine.dispose()
    return sha


def _evidence(api: Any) -> dict[str, dict[str, Any]]:
    r = api.get(f"/api/v1/sessions/{SID}/timeline", params={"limit": 1000})
    assert r.status_code == 200, r.text
    return {e["id"]: e for e in r.json()["evidence"]} | {"_events": r.json()["events"]}


@pytest.fixture
def seeded(tmp_path: Path, initialised_relay: Path) -> Any:
    relay = RelayProcess(tmp_path, template=initialised_relay)
    sha = _seed(relay.data_dir)
    relay.start()
    try:
        yield relay, sha
    finally:
        relay.stop()


def test_evidence_removed_behind_the_relays_back_is_flagged(seeded: Any) -> None:
    relay, sha = seeded
    api = admin_api(relay)
    try:
        before = _evidence(api)
        assert {k: v["state"] for k, v in before.items() if k != "_events"} == {
            "rc_intact": "stored", "rc_row_gone": "stored", "rc_blob_gone": "stored",
            "rc_marked": "stored", "rc_retained": "deleted", "rc_untrailed": "not_in_trail",
            "fr_intact": "stored", "fr_gone": "stored", "fr_notkept": "not_kept",
            "dr_intact": "stored", "dr_gone": "stored"}
        # A playback of rc_row_gone: an event of the session (target recording:ID).
        assert api.get("/api/v1/recordings/rc_row_gone").status_code == 200
        played = [e["seq"] for e in audit_actions(relay) if e["action"] == "recording.played"
                  and e["target"] == "recording:rc_row_gone"]
        assert played

        # The intruder: rows deleted, a blob removed, a row marked deleted by hand.
        db = sqlite3.connect(relay.data_dir / "relay.db", timeout=10)
        try:
            db.execute("DELETE FROM recordings WHERE id = 'rc_row_gone'")
            db.execute("DELETE FROM fix_runs WHERE id = 'fr_gone'")
            db.execute("DELETE FROM diagnostics_reports WHERE id = 'dr_gone'")
            db.execute("UPDATE recordings SET deleted_at = ? WHERE id = 'rc_marked'",
                       (time.time(),))
            db.commit()
        finally:
            db.close()
        BlobStore(relay.data_dir / "blobs")._path(sha["rc_blob_gone"]).unlink()

        after = _evidence(api)
        events = after.pop("_events")
        state = {k: v["state"] for k, v in after.items()}
        # Each removal is named, none is silently missing; the intact ones are as they were.
        assert state == {
            "rc_intact": "stored", "rc_row_gone": "no_record", "rc_blob_gone": "no_blob",
            "rc_marked": "unaudited_deletion", "rc_retained": "deleted",
            "rc_untrailed": "not_in_trail", "fr_intact": "stored", "fr_gone": "no_record",
            "fr_notkept": "not_kept", "dr_intact": "stored", "dr_gone": "no_record"}
        gone = after["rc_row_gone"]
        assert gone["has_row"] is False and gone["kind"] == "terminal"
        assert gone["trail_sha256"] == sha["rc_row_gone"] and gone["trail_action"] == \
            "recording.stored"
        assert "no record on the relay" in gone["state_text"]
        assert after["rc_blob_gone"]["kind"] == "cobrowse"  # from its row
        assert after["fr_gone"]["trail_sha256"] == sha["fr_gone"]
        assert after["dr_gone"]["trail_action"] == "diagnostics.report"
        # The retention deletion is the audited one, with its event.
        retained = after["rc_retained"]
        deletion = [e for e in audit_actions(relay) if e["action"] == "retention.deleted"]
        assert retained["deleted_seq"] == deletion[0]["seq"] and retained["has_row"]
        for intact in ("rc_intact", "fr_intact", "dr_intact"):
            assert after[intact] == before[intact], intact
            assert after[intact]["row_matches_trail"] and after[intact]["trail_sha256"] == \
                sha[intact]
        # The intact pieces are still served; the removed ones are not.
        assert api.get("/api/v1/recordings/rc_intact").status_code == 200
        assert api.get(f"/api/v1/sessions/{SID}/evidence/fr_intact").status_code == 200
        assert api.get(f"/api/v1/sessions/{SID}/evidence/dr_intact").status_code == 200
        assert api.get("/api/v1/recordings/rc_row_gone").status_code == 404
        assert api.get(f"/api/v1/sessions/{SID}/evidence/fr_gone").status_code == 404
        # The events about removed evidence are still the session's: the playback of
        # rc_row_gone, retention's deletion of rc_retained.
        seqs = {e["seq"] for e in events}
        assert set(played) <= seqs and deletion[0]["seq"] in seqs
        # What the auditor was shown as missing is in the record of the view.
        viewed = [e for e in audit_actions(relay) if e["action"] == "timeline.viewed"]
        assert viewed[0]["details"]["flagged"] == ["rc_untrailed"]
        assert sorted(viewed[-1]["details"]["flagged"]) == sorted(
            ["rc_row_gone", "rc_blob_gone", "rc_marked", "fr_gone", "dr_gone", "rc_untrailed"])
        # The evidence bundle, read from the trail as well, names the removed row's
        # recording (whose blob is still there) and the removed blob as absent.
        bundle = api.get(f"/api/v1/sessions/{SID}/bundle")
        assert bundle.status_code == 200, bundle.text
        blobs = {b["id"] for b in bundle.json()["blobs"]}
        absent = {a["id"]: a["reason"] for a in bundle.json()["absent"]}
        assert "rc_row_gone" in blobs and "missing" in absent["rc_blob_gone"]
        assert "retention" in absent["rc_retained"]
    finally:
        api.close()
