"""The relay's store on each database it supports (SQLite, PostgreSQL): migrations,
the audit chain with several writers, the TOTP step taken once, text and timestamps
kept as given. Two engines on one database stand for two relay nodes (or a
command-line tool and the server)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyotp
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from backline.common import keys
from backline.relay import agents, db, users
from backline.relay.audit import AuditLog
from backline.relay.schema import metadata
from backline.relay.schema import users as users_table
from tests.databases import TestDatabase


class Store:
    """Engines on one test database, each like a relay process's own."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engines: list[sa.Engine] = []

    def engine(self) -> sa.Engine:
        engine = db.make_engine(self.url)
        self.engines.append(engine)
        return engine


@pytest.fixture
def store(tmp_path: Path, database: TestDatabase) -> Iterator[Store]:
    s = Store(database.url_for(tmp_path))
    try:
        yield s
    finally:
        for engine in s.engines:
            engine.dispose()


def race(n: int, work: Callable[[int], Any]) -> list[Any]:
    """Run ``work(0..n-1)`` in ``n`` threads released at once; results (or exceptions)."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def run(i: int) -> None:
        barrier.wait(10)
        try:
            results[i] = work(i)
        except Exception as exc:  # reported by the assertion that reads it
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a racing writer hung"
    return results


def test_nodes_migrating_at_once_reach_the_models_schema(store: Store) -> None:
    """Three relay processes start at once on an empty database: all of them come up,
    every migration ran on this database, and what they built is what schema.py says
    (Alembic finds nothing to change: types, keys, indexes). Processes, not threads:
    Alembic's context is global to a process."""
    code = f"from backline.relay import db; db.migrate(db.make_engine({store.url!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    engine = store.engine()
    assert db.current_revision(engine) == db.HEAD_REVISION
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_two_nodes_appending_keep_one_chain(store: Store) -> None:
    """From an empty trail (no head row yet), writers on two engines append at once:
    every event lands, numbered without gap, and the chain verifies."""
    engine = store.engine()
    db.migrate(engine)
    key = keys.generate()
    logs = [AuditLog(store.engine(), key, checkpoint_every=10) for _ in range(4)]

    def append(i: int) -> None:
        for n in range(15):
            logs[i].append(f"node:{i}", "test.event", f"thing:{n}", {"n": n})

    assert race(4, append) == [None] * 4
    events = list(logs[0].export())
    assert [e["seq"] for e in events] == list(range(1, 61))
    assert sorted((e["actor"], e["details"]["n"]) for e in events) == sorted(
        (f"node:{i}", n) for i in range(4) for n in range(15))
    result = logs[0].verify()
    assert result.ok and result.events == 60 and result.checkpoint_seq == 60, result


def test_a_totp_code_is_accepted_once_under_a_race(store: Store) -> None:
    """check_totp's conditional UPDATE (``totp_last_step < step``): of writers racing
    with the same code, exactly one is let in, round after round."""
    engine = store.engine()
    db.migrate(engine)
    user = users.create_user(engine, "racer", "technician", "a long enough password")
    secret = pyotp.random_base32()
    with db.writing(engine) as conn:
        conn.execute(users_table.update().where(users_table.c.id == user.id)
                     .values(totp_secret=secret))
    engines = [store.engine() for _ in range(4)]
    for _ in range(3):
        code = pyotp.TOTP(secret).now()
        with db.writing(engine) as conn:
            conn.execute(users_table.update().where(users_table.c.id == user.id)
                         .values(totp_last_step=None))
        wins = race(4, lambda i, code=code: users.check_totp(engines[i], user, code))
        assert sorted(wins, key=str) == [False, False, False, True], wins
        assert not users.check_totp(engine, user, code)  # and never again


def test_text_and_timestamps_come_back_as_stored(store: Store) -> None:
    """Network input with NUL or a lone surrogate (PostgreSQL refuses NUL; neither
    stores a surrogate) is kept with U+FFFD in their place, on both databases, and the
    audit chain hashes what is stored. Timestamps keep their microseconds."""
    engine = store.engine()
    db.migrate(engine)
    log = AuditLog(engine, keys.generate())
    gid = users.group_id(engine, "default", create=True)
    assert gid is not None
    hostile = "pc\x00-1\ud800 ü"
    with db.writing(engine) as conn:
        agent_id = agents.register(conn, gid, b"k" * 32, {"hostname": hostile}, "t", "::1")
    row = agents.get_agent(engine, agents.Presence(), agent_id)
    assert row is not None and row["hostname"] == "pc\ufffd-1\ufffd ü"
    event = log.append("anonymous@::1", "request.refused", "/api/v1/\x00", {"path": hostile})
    stored = next(log.export())
    assert stored["target"] == "/api/v1/\ufffd" == event["target"]
    assert stored["details"] == {"path": "pc\x00-1\ufffd ü"}  # JSON escapes NUL itself
    assert stored["time"] == event["time"] and stored["time"] != int(stored["time"])
    assert log.verify().ok
    at = 1764590000.123457
    with db.writing(engine) as conn:
        conn.execute(users_table.insert().values(
            username="t", role="auditor", password_hash="x", must_change_password=False,
            totp_required=False, disabled=False, created_at=at))
    fetched = users.get_user(engine, username="t")
    assert fetched is not None and fetched.created_at == at


def test_audit_filters_are_exact_and_case_sensitive(store: Store) -> None:
    engine = store.engine()
    db.migrate(engine)
    log = AuditLog(engine, keys.generate())
    log.append_many([("user:a", "auth.login", "user:a", None),
                     ("user:a", "auth.login.failed", "user:a", None),
                     ("user:a", "auth_x", "User:A", None),
                     ("user:a", "group.create", "group:g", None)])
    assert [e["action"] for e in log.query(action="auth.login")] == [
        "auth.login.failed", "auth.login"]
    assert log.query(action="AUTH.") == []  # SQLite's LIKE ignored case
    assert [e["action"] for e in log.query(action="auth_")] == ["auth_x"]  # no wildcard
    assert log.query(target="user:A") == [] and len(log.query(target="User:A")) == 1
    now = time.time()
    assert len(log.query(since=now - 60, until=now + 60)) == 4
    # A page bound past the INTEGER column is no bound (PostgreSQL: out of range).
    assert [e["seq"] for e in log.query(before_seq=2**62)] == [4, 3, 2, 1]
    assert [e["seq"] for e in log.query(before_seq=3)] == [2, 1]
