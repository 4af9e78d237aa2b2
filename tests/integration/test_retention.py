"""Retention and legal holds against a real relay: an old recording's content is
deleted (its row, digest and the trail stay, `audit verify` still holds, serving it
answers 410), held ones (by session, agent and group) are kept, a lifted hold lets
the next pass delete; a report past its age goes the same way."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from backline.relay import config as relay_config
from backline.relay import users
from backline.relay.blobs import BlobStore
from backline.relay.schema import agents, diagnostics_reports, recordings, support_sessions
from backline.relay.store import open_store
from tests.harness import RelayProcess, admin_api

DAY = 86400.0


def _seed(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Sessions, agents and recordings as the relay would have kept them (rows, blobs,
    and the ``recording.stored`` events that carry their digests), some of them old."""
    store = open_store(relay_config.load(None, {"data_dir": data_dir}, environ={}))
    blobs = BlobStore(data_dir / "blobs")
    engine = store.engine
    now = time.time()
    default = users.group_id(engine, "default")
    legal = users.group_id(engine, "legal", create=True)
    items = {
        # name: (session, agent, group, age in days)
        "free": ("se_free", "ag_free", default, 40),
        "session_held": ("se_held", "ag_free", default, 40),
        "agent_held": ("se_agent", "ag_held", default, 40),
        "group_held": ("se_group", "ag_grp", legal, 40),
        "lifted": ("se_lift", "ag_free", default, 40),
        "young": ("se_young", "ag_free", default, 2),
        "shares_young_blob": ("se_share", "ag_free", default, 40),
    }
    out: dict[str, dict[str, Any]] = {}
    events: list[tuple[str, str, str, dict[str, Any] | None]] = []
    with engine.begin() as conn:
        for agent_id, group in (("ag_free", default), ("ag_held", default),
                                ("ag_grp", legal)):
            conn.execute(agents.insert().values(
                id=agent_id, group_id=group, public_key=b"k" * 32, hostname=agent_id,
                os="linux", os_version="6", arch="x86_64", version="1", label="",
                enrolled_at=now - 50 * DAY, enroll_token_id="et_x"))
        for name, (session, agent, group, age) in items.items():
            content = (b"young" if name in ("young", "shares_young_blob")
                       else f"recording of {name}".encode())
            sha = blobs.put(content)
            rid = f"rc_{name}"
            conn.execute(support_sessions.insert().values(
                id=session, mode="agent", agent_id=agent, group_id=group,
                technician="admin", opened_by="user:admin", state="closed",
                created_at=now - age * DAY))
            conn.execute(recordings.insert().values(
                id=rid, session_id=session, capability="terminal", agent_id=agent,
                technician="admin", started_at=now - age * DAY, duration_s=1.0,
                bytes=len(content), sha256=sha, keystrokes=False))
            events.append(("system", "recording.stored", f"session:{session}",
                               {"recording": rid, "capability": "terminal", "sha256": sha,
                                "bytes": len(content), "duration_s": 1.0,
                                "keystrokes": False}))
            out[name] = {"id": rid, "session": session, "agent": agent, "sha256": sha}
        report = blobs.put(b'{"type":"end"}\n')
        conn.execute(diagnostics_reports.insert().values(
            id="dr_old", agent_id="ag_free", session_id="se_free", technician="admin",
            created_at=now - 40 * DAY, sha256=report, size=15, findings=0, worst="ok"))
        out["report"] = {"id": "dr_old", "sha256": report}
    store.audit.append_many(events)
    store.engine.dispose()
    return out


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_retention_deletes_old_content_and_keeps_held(tmp_path: Path,
                                                      initialised_relay: Path) -> None:
    relay = RelayProcess(tmp_path, template=initialised_relay)
    (relay.data_dir / "relay.toml").write_text(
        # The relay's own first pass comes 5 minutes after its start, after this test.
        "[retention]\nrecordings_days = 30\nreports_days = 30\ninterval_minutes = 60\n")
    seeded = _seed(relay.data_dir)
    relay.start()
    api = admin_api(relay)
    try:
        holds = {}
        for scope, subject in (("session", "se_held"), ("agent", "ag_held"),
                               ("group", "legal"), ("session", "se_lift")):
            r = api.post("/api/v1/legal-holds",
                         json={"scope": scope, "subject": subject, "reason": "matter 42"})
            assert r.status_code == 201, r.text
            holds[subject] = r.json()["id"]
        # Hostile: a scope that is not one, a subject with a newline, an unknown hold.
        assert api.post("/api/v1/legal-holds", json={"scope": "user", "subject": "x",
                                                     "reason": "why not"}).status_code == 400
        assert api.post("/api/v1/legal-holds", json={"scope": "session", "subject": "a\nb",
                                                     "reason": "why not"}).status_code == 400
        assert api.post("/api/v1/legal-holds/lh_nope/lift",
                        json={"reason": "done"}).status_code == 404

        dry = _lines(relay.cli("retention", "run", "--dry-run").stdout)
        would = {d["would_delete"] for d in dry if "would_delete" in d}
        held = {d["held"] for d in dry if "held" in d}
        assert would == {"recording:rc_free", "recording:rc_shares_young_blob",
                         "report:dr_old"}
        assert held == {"recording:rc_session_held", "recording:rc_agent_held",
                        "recording:rc_group_held", "recording:rc_lifted"}
        assert api.get("/api/v1/recordings/rc_free").status_code == 200, "dry run deleted"

        run = relay.cli("retention", "run")
        assert "deleted 3, kept 4 under a legal hold" in run.stderr, run.stderr
        blobs = BlobStore(relay.data_dir / "blobs")
        gone = api.get("/api/v1/recordings/rc_free")
        assert gone.status_code == 410, gone.text
        assert "deleted by the retention policy" in gone.json()["detail"]
        assert seeded["free"]["sha256"] in gone.json()["detail"]
        assert not blobs._path(seeded["free"]["sha256"]).exists()
        # A blob another kept row names stays; the deleted row still answers 410.
        assert api.get("/api/v1/recordings/rc_shares_young_blob").status_code == 410
        assert api.get("/api/v1/recordings/rc_young").status_code == 200
        for name in ("session_held", "agent_held", "group_held", "lifted"):
            assert api.get(f"/api/v1/recordings/rc_{name}").status_code == 200, name
        assert api.get("/api/v1/reports/dr_old").status_code == 410
        listed = api.get("/api/v1/sessions/se_free/recordings").json()["recordings"]
        assert listed[0]["deleted_at"] and listed[0]["sha256"] == seeded["free"]["sha256"]
        # The auditor's timeline says so too, and will not serve what is gone.
        shown = {e["id"]: e for e in
                 api.get("/api/v1/sessions/se_free/timeline").json()["evidence"]}
        assert shown["rc_free"]["deleted_at"] and shown["dr_old"]["deleted_at"]
        assert shown["rc_free"]["trail_sha256"] == seeded["free"]["sha256"]
        assert api.get("/api/v1/sessions/se_free/evidence/dr_old").status_code == 410

        r = api.post(f"/api/v1/legal-holds/{holds['se_lift']}/lift",
                     json={"reason": "matter closed"})
        assert r.status_code == 200 and r.json()["lifted_by"] == "admin", r.text
        assert api.post(f"/api/v1/legal-holds/{holds['se_lift']}/lift",
                        json={"reason": "again"}).status_code == 404
        assert "deleted 1, kept 3" in relay.cli("retention", "run").stderr
        assert api.get("/api/v1/recordings/rc_lifted").status_code == 410

        # Through the API (each CLI command starts a Python and opens the relay: seconds).
        verified = api.get("/api/v1/audit/verify").json()
        assert verified["ok"], verified
        trail = _lines(api.get("/api/v1/audit/export").text)
        deleted = {e["target"]: e["details"] for e in trail
                   if e["action"] == "retention.deleted"}
        assert set(deleted) == {"recording:rc_free", "recording:rc_shares_young_blob",
                                "report:dr_old", "recording:rc_lifted"}
        stored = {e["details"]["recording"]: e["details"]["sha256"] for e in trail
                  if e["action"] == "recording.stored"}
        assert deleted["recording:rc_free"]["sha256"] == stored["rc_free"]
        assert deleted["recording:rc_free"]["session"] == "se_free"
        actions = [e["action"] for e in trail]
        assert actions.count("legal_hold.placed") == 4
        assert actions.count("legal_hold.lifted") == 1
        assert "legal_hold.refused" in actions
        refused = [e for e in trail if e["action"] == "recording.refused"]
        assert refused and refused[0]["details"]["reason"] == "deleted_by_retention"
    finally:
        api.close()
        relay.stop()
