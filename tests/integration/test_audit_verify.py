"""``backline-relay audit verify`` on a real database, each tampering in its own test: it
must fail and name the first broken record. Every test runs on SQLite and on
PostgreSQL (the ``database`` fixture, tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backline.relay import config
from backline.relay.state import open_relay
from tests.databases import TestDatabase
from tests.harness import RELAY

EVENTS = 250  # checkpoints are signed at 100 and 200


@dataclass
class Trail:
    """A relay's data directory with its trail, in either database."""

    path: Path
    db: TestDatabase

    @property
    def env(self) -> dict[str, str]:
        bare = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
        return {**bare, **self.db.env}


def open_in(root: Path, db: TestDatabase) -> Any:
    return open_relay(config.load(overrides={"data_dir": root,
                                             "database_url": db.url or None}, environ={}))


@pytest.fixture
def data_dir(tmp_path: Path, database: TestDatabase) -> Trail:
    relay = open_in(tmp_path / "relay", database)
    # One transaction (checkpoints still fall at 100 and 200): a commit per event costs
    # a PostgreSQL server's disk flush each.
    relay.audit.append_many([(f"user:u{i % 7}", "test.event", f"thing:{i}", {"n": i, "ü": "ß"})
                             for i in range(EVENTS)])
    relay.engine.dispose()
    return Trail(tmp_path / "relay", database)


def verify(trail: Trail) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RELAY, "audit", "verify", "--data-dir", str(trail.path)],
                          env=trail.env, capture_output=True, text=True, timeout=60)


def tamper(trail: Trail, *statements: tuple[str, dict[str, object]]) -> None:
    """What someone with write access to the database does, in one transaction."""
    trail.db.execute(trail.path, *statements)


def test_intact_trail_verifies_with_its_checkpoint(data_dir: Trail) -> None:
    r = verify(data_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"OK: {EVENTS} events")
    assert "checkpoint at #200" in r.stdout


def test_altered_field_is_named(data_dir: Trail) -> None:
    details = json.dumps({"n": 999}, separators=(",", ":"))
    tamper(data_dir, ("UPDATE audit_events SET details = :d WHERE seq = 137", {"d": details}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #137" in r.stderr and "altered" in r.stderr


def test_altered_actor_is_named(data_dir: Trail) -> None:
    tamper(data_dir, ("UPDATE audit_events SET actor = 'user:nobody' WHERE seq = 3", {}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #3" in r.stderr


def test_deleted_event_is_named(data_dir: Trail) -> None:
    tamper(data_dir, ("DELETE FROM audit_events WHERE seq = 42", {}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #42" in r.stderr and "missing" in r.stderr


def test_deleted_event_with_renumbering_is_named(data_dir: Trail) -> None:
    tamper(data_dir,
           ("DELETE FROM audit_events WHERE seq = 42", {}),
           # In two steps: a key is unique at each row's update in PostgreSQL.
           ("UPDATE audit_events SET seq = 1 - seq WHERE seq > 42", {}),
           ("UPDATE audit_events SET seq = -seq WHERE seq < 0", {}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #42" in r.stderr


def test_swapped_events_are_named(data_dir: Trail) -> None:
    tamper(data_dir,
           ("UPDATE audit_events SET seq = -1 WHERE seq = 60", {}),
           ("UPDATE audit_events SET seq = 60 WHERE seq = 61", {}),
           ("UPDATE audit_events SET seq = 61 WHERE seq = -1", {}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #60" in r.stderr


def test_events_cut_off_after_a_checkpoint(data_dir: Trail) -> None:
    # Remove everything after #150 and make the chain head agree: only the signed
    # checkpoint at #200 still vouches for what was there.
    with data_dir.db.engine(data_dir.path).connect() as conn:
        head_hash = conn.exec_driver_sql(
            "SELECT hash FROM audit_events WHERE seq = 150").scalar()
    tamper(data_dir,
           ("DELETE FROM audit_events WHERE seq > 150", {}),
           ("UPDATE audit_head SET seq = 150, hash = :h", {"h": head_hash}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "BROKEN at record #151" in r.stderr and "cut off" in r.stderr
    assert "#200" in r.stderr


def test_tail_cut_off_beyond_last_checkpoint_is_caught_by_head(data_dir: Trail) -> None:
    tamper(data_dir, ("DELETE FROM audit_events WHERE seq > 240", {}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "cut off" in r.stderr and "#250" in r.stderr


def test_forged_checkpoint_signature(data_dir: Trail) -> None:
    tamper(data_dir, ("UPDATE audit_checkpoints SET hash = :h WHERE seq = 100", {"h": "0" * 64}))
    r = verify(data_dir)
    assert r.returncode == 1
    assert "bad signature" in r.stderr


def test_export_events_and_checkpoints_to_files(data_dir: Trail, tmp_path: Path) -> None:
    def export(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([RELAY, "audit", "export", "--data-dir", str(data_dir.path),
                               *args], env=data_dir.env, capture_output=True, text=True,
                              timeout=60)

    r = export("-o", str(tmp_path / "events.jsonl"))
    # The export is audited before it is written: the trail's events and its own.
    assert r.returncode == 0 and f"wrote {EVENTS + 1} events" in r.stderr
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["seq"] for e in events] == list(range(1, EVENTS + 2))
    assert events[-1]["action"] == "audit.export" and events[-1]["actor"].startswith("cli")
    assert events[-1]["details"] == {"since": None,
                                     "output": str(tmp_path / "events.jsonl")}
    r = export("--checkpoints", "-o", str(tmp_path / "checkpoints.jsonl"))
    assert r.returncode == 0, r.stderr
    marks = [json.loads(line)
             for line in (tmp_path / "checkpoints.jsonl").read_text().splitlines()]
    assert [m["seq"] for m in marks][:2] == [100, 200]
    assert all(m["hash"] == events[m["seq"] - 1]["hash"] and m["signature"] for m in marks)
    assert not list(tmp_path.glob("*.partial"))
    bad = export("--checkpoints", "--since", "1h")
    assert bad.returncode == 2 and "--since applies to events" in bad.stderr


def test_batched_events_keep_their_order(tmp_path: Path, database: TestDatabase) -> None:
    """record_soon batches agents' connects per loop turn; any record() in between
    writes the batch first, so the trail keeps the order things happened in."""
    import asyncio

    relay = open_in(tmp_path / "r", database)

    async def scenario() -> None:
        at = {"address": "192.0.2.1"}  # events as the catalogue declares them
        relay.record_soon("agent:a", "agent.connect", "agent:a", version="1", **at)
        relay.record_soon("agent:b", "agent.connect", "agent:b", version="1", **at)
        relay.record("user:x", "auth.login", "user:x", totp=False, **at)
        relay.record_soon("agent:a", "agent.disconnect", "agent:a", reason="closed", **at)
        await asyncio.sleep(0)  # the next turn writes the batch
        await asyncio.sleep(0)

    asyncio.run(scenario())
    actions = [(e["actor"], e["action"]) for e in relay.audit.export()]
    assert actions == [("agent:a", "agent.connect"), ("agent:b", "agent.connect"),
                       ("user:x", "auth.login"), ("agent:a", "agent.disconnect")]
    assert relay.audit.verify().ok
    relay.engine.dispose()


def test_records_from_worker_threads_are_written_by_the_loop(
        tmp_path: Path, database: TestDatabase) -> None:
    """A scheduled report's delivery and a retention pass record from worker threads,
    while the loop batches agents' connects (record_soon) and counts floods: those are
    the loop's own, unlocked. Each thread's event is written on the loop's thread, in
    full, before the thread goes on; and nothing of the loop's batch is lost or doubled."""
    import asyncio
    import threading

    relay = open_in(tmp_path / "r", database)
    at = {"address": "192.0.2.1"}
    writers: set[int] = set()
    append = relay.audit.append_many

    def watched(*args: Any, **kw: Any) -> Any:
        writers.add(threading.get_ident())
        return append(*args, **kw)

    relay.audit.append_many = watched  # type: ignore[method-assign]

    async def scenario() -> int:
        relay._loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def worker(n: int) -> None:
            for i in range(20):
                relay.record("relay", "report.delivery.failed", f"report:{n}-{i}",
                             via="webhook", detail="x")
                # The event is in the trail when record() returns.
                assert any(e["target"] == f"report:{n}-{i}" for e in relay.audit.export())

        threads = [asyncio.to_thread(worker, n) for n in range(3)]
        running = asyncio.gather(*threads)
        for i in range(200):
            relay.record_soon(f"agent:{i}", "agent.connect", f"agent:{i}", version="1", **at)
            await asyncio.sleep(0)
        await running
        await asyncio.sleep(0)
        relay.flush_records()
        return loop_thread

    loop_thread = asyncio.run(scenario())
    events = list(relay.audit.export())
    connects = [e["actor"] for e in events if e["action"] == "agent.connect"]
    failed = [e["target"] for e in events if e["action"] == "report.delivery.failed"]
    assert sorted(connects) == sorted(f"agent:{i}" for i in range(200))
    assert sorted(failed) == sorted(f"report:{n}-{i}" for n in range(3) for i in range(20))
    assert writers == {loop_thread}, "an audit write ran on a worker thread"
    assert relay.audit.verify().ok
    relay.engine.dispose()


def test_a_worker_that_gave_up_waiting_for_the_loop_was_told_the_truth(
        tmp_path: Path, database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop is stalled past the worker's wait: the worker gets TimeoutError, and
    the event is then never written (it would contradict what the worker was told: a
    retention pass that undid its deletion after the error, say)."""
    import asyncio
    import threading
    import time

    from backline.relay import state

    monkeypatch.setattr(state, "ON_LOOP_TIMEOUT_S", 0.2)
    relay = open_in(tmp_path / "r", database)
    stalled = threading.Event()
    outcome: list[str] = []

    async def scenario() -> None:
        relay._loop = asyncio.get_running_loop()

        def worker() -> None:
            assert stalled.wait(10)
            try:
                relay.record("relay", "report.delivery.failed", "report:late", via="webhook",
                             detail="x")
                outcome.append("written")
            except TimeoutError:
                outcome.append("timed out")

        running = asyncio.to_thread(worker)
        task = asyncio.ensure_future(running)
        await asyncio.sleep(0.05)
        stalled.set()
        time.sleep(0.6)  # noqa: ASYNC251 - the loop stalls; the worker gives up
        await task
        await asyncio.sleep(0.05)  # the queued write's turn comes: it does nothing

    asyncio.run(scenario())
    assert outcome == ["timed out"]
    assert not [e for e in relay.audit.export() if e["target"] == "report:late"]
    relay.engine.dispose()
