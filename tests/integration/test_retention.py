"""Retention and legal holds against a real relay: an old recording's content is
deleted (its row, digest and the trail stay, `audit verify` still holds, serving it
answers 410, a search no longer finds its words), held ones (by session, agent and
group: the group the session was in, not the agent's current one) are kept, a lifted
hold lets the next pass delete; a report past its age goes the same way. Then, on
the store itself: a hold placed during a pass keeps what it covers, and a deletion is
audited before its blob is removed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from backline.relay import config as relay_config
from backline.relay import retention, term_index, users
from backline.relay.blobs import BlobStore
from backline.relay.schema import agents, diagnostics_reports, recordings, support_sessions
from backline.relay.store import open_store
from tests.harness import RelayProcess, admin_api

DAY = 86400.0
RETENTION_TOML = "[retention]\nrecordings_days = 30\nreports_days = 30\ninterval_minutes = 60\n"


def _cast(word: str) -> bytes:
    """A small asciicast whose output prints ``word`` (what the text index reads)."""
    return (b'{"version": 2, "width": 80, "height": 24}\n'
            + json.dumps([0.5, "o", f"$ echo {word}\r\n{word}\r\n"]).encode() + b"\n")


def word_of(name: str) -> str:
    return "zq" + name.replace("_", "")


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
        # The session was in the held group; its agent has been moved out since.
        "moved_out": ("se_moved_out", "ag_moved_out", legal, 40),
        # The session was not; its agent has been moved into the held group since.
        "moved_in": ("se_moved_in", "ag_grp", default, 40),
    }
    out: dict[str, dict[str, Any]] = {}
    events: list[tuple[str, str, str, dict[str, Any] | None]] = []
    with engine.begin() as conn:
        for agent_id, group in (("ag_free", default), ("ag_held", default),
                                ("ag_grp", legal), ("ag_moved_out", default)):
            conn.execute(agents.insert().values(
                id=agent_id, group_id=group, public_key=b"k" * 32, hostname=agent_id,
                os="linux", os_version="6", arch="x86_64", version="1", label="",
                enrolled_at=now - 50 * DAY, enroll_token_id="et_x"))
        for name, (session, agent, group, age) in items.items():
            content = _cast(word_of("young") if name in ("young", "shares_young_blob")
                            else word_of(name))
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
    for item in out.values():
        if item["id"].startswith("rc_"):
            term_index.index_recording(engine, blobs, recording_id=item["id"],
                                       session_id=item["session"], sha256=item["sha256"],
                                       keystrokes=False)
    store.engine.dispose()
    return out


def _found(api: Any, word: str) -> list[str]:
    r = api.get("/api/v1/session-search", params={"text": word})
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["sessions"]]


def _lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_retention_deletes_old_content_and_keeps_held(tmp_path: Path,
                                                      initialised_relay: Path) -> None:
    relay = RelayProcess(tmp_path, template=initialised_relay)
    # The relay's own first pass comes 5 minutes after its start, after this test.
    (relay.data_dir / "relay.toml").write_text(RETENTION_TOML)
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
                         "report:dr_old", "recording:rc_moved_in"}
        assert held == {"recording:rc_session_held", "recording:rc_agent_held",
                        "recording:rc_group_held", "recording:rc_lifted",
                        "recording:rc_moved_out"}
        assert api.get("/api/v1/recordings/rc_free").status_code == 200, "dry run deleted"
        assert _found(api, word_of("free")) == ["se_free"], "the index was not seeded"

        run = relay.cli("retention", "run")
        assert "deleted 4, kept 5 under a legal hold" in run.stderr, run.stderr
        # What is deleted is no longer found by its words; what is kept still is.
        for name in ("free", "moved_in"):
            assert _found(api, word_of(name)) == [], name
        assert _found(api, word_of("young")) == ["se_young"]
        assert _found(api, word_of("moved_out")) == ["se_moved_out"]
        blobs = BlobStore(relay.data_dir / "blobs")
        gone = api.get("/api/v1/recordings/rc_free")
        assert gone.status_code == 410, gone.text
        assert "deleted by the retention policy" in gone.json()["detail"]
        assert seeded["free"]["sha256"] in gone.json()["detail"]
        assert not blobs._path(seeded["free"]["sha256"]).exists()
        # A blob another kept row names stays; the deleted row still answers 410.
        assert api.get("/api/v1/recordings/rc_shares_young_blob").status_code == 410
        assert api.get("/api/v1/recordings/rc_young").status_code == 200
        for name in ("session_held", "agent_held", "group_held", "lifted", "moved_out"):
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
        assert "deleted 1, kept 4" in relay.cli("retention", "run").stderr
        assert api.get("/api/v1/recordings/rc_lifted").status_code == 410

        # Through the API (each CLI command starts a Python and opens the relay: seconds).
        verified = api.get("/api/v1/audit/verify").json()
        assert verified["ok"], verified
        trail = _lines(api.get("/api/v1/audit/export").text)
        deleted = {e["target"]: e["details"] for e in trail
                   if e["action"] == "retention.deleted"}
        assert set(deleted) == {"recording:rc_free", "recording:rc_shares_young_blob",
                                "report:dr_old", "recording:rc_lifted",
                                "recording:rc_moved_in"}
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


@pytest.fixture
def seeded_store(tmp_path: Path, initialised_relay: Path) -> Any:
    """The seeded data set in a relay's data directory, opened as a store (no relay
    process: these tests drive retention's functions directly)."""
    relay = RelayProcess(tmp_path, template=initialised_relay)
    (relay.data_dir / "relay.toml").write_text(RETENTION_TOML)
    seeded = _seed(relay.data_dir)
    config = relay_config.load(None, {"data_dir": relay.data_dir}, environ={})
    store = open_store(config)
    yield store, config, BlobStore(relay.data_dir / "blobs"), seeded
    store.engine.dispose()


def _deleted_at(store: Any, rid: str) -> float | None:
    with store.engine.connect() as conn:
        return conn.execute(sa.select(recordings.c.deleted_at)
                            .where(recordings.c.id == rid)).scalar()


def test_hold_placed_during_a_pass_keeps_what_it_covers(seeded_store: Any) -> None:
    """plan() read the holds before this one was placed; delete() must not trust it."""
    store, config, blobs, seeded = seeded_store
    now = time.time()
    result = retention.plan(store.engine, config, now)
    planned = {i.target: i for i in result.due}
    assert "recording:rc_free" in planned and "recording:rc_moved_in" in planned
    retention.place_hold(store.engine, "session", "se_free", "matter 43", "admin")
    retention.place_hold(store.engine, "group", "default", "matter 44", "admin")
    events: list[str] = []
    outcomes = {target: retention.delete(store.engine, blobs, item,
                                         lambda *a, **k: events.append(a[2]), now)
                for target, item in planned.items() if target.startswith("recording:")}
    # Both held now: by the session hold, and by the group hold on the group the
    # session was in (moved_in's session was in "default").
    assert outcomes["recording:rc_free"] == "held"
    assert outcomes["recording:rc_moved_in"] == "held"
    assert _deleted_at(store, "rc_free") is None
    assert blobs._path(seeded["free"]["sha256"]).exists()
    assert "recording:rc_free" not in events
    # Those of the group "legal" (held by nothing now) went, and only those.
    assert {t for t, o in outcomes.items() if o == "deleted"} == {
        "recording:rc_group_held", "recording:rc_moved_out"} == set(events)
    # A whole pass now keeps the rest, and says why.
    again = retention.run(store.engine, blobs, config, lambda *a, **k: None, trigger="test")
    assert again.deleted == 0
    assert {i.target for i in again.held} == set(planned) - set(events)


def test_deletion_is_audited_before_its_blob_goes(seeded_store: Any) -> None:
    store, config, blobs, seeded = seeded_store
    now = time.time()
    item = next(i for i in retention.plan(store.engine, config, now).due
                if i.id == "rc_free")
    path = blobs._path(seeded["free"]["sha256"])
    seen: list[bool] = []

    def failing(*args: Any, **details: Any) -> None:
        seen.append(path.exists())
        raise RuntimeError("the trail is not writable")

    # Hostile: the audit write fails. The content must still be there.
    with pytest.raises(RuntimeError):
        retention.delete(store.engine, blobs, item, failing, now)
    assert seen == [True], "the blob was removed before the deletion was audited"
    assert path.exists()
    # Undone: not marked, searchable again, so the next pass tries again.
    assert _deleted_at(store, "rc_free") is None
    assert term_index.hits(store.engine, [word_of("free")]) != {}
    assert retention.delete(store.engine, blobs, item, lambda *a, **k: None,
                            now) == "deleted"
    assert not path.exists() and term_index.hits(store.engine, [word_of("free")]) == {}
    # A normal deletion records while the blob is still there, then removes it.
    other = next(i for i in retention.plan(store.engine, config, now).due
                 if i.id == "rc_moved_in")
    other_path = blobs._path(seeded["moved_in"]["sha256"])
    recorded: list[bool] = []
    assert retention.delete(store.engine, blobs, other,
                            lambda *a, **k: recorded.append(other_path.exists()),
                            now) == "deleted"
    assert recorded == [True] and not other_path.exists()
