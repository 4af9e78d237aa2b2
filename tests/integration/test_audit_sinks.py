"""Checkpoint sinks (relay/audit_sinks.py) and ``audit verify --against``: someone with
write access to the database rewrites history consistently (alters an event, recomputes
the chain and the Merkle tree, drops the checkpoints it can no longer match): plain
``audit verify`` finds nothing, the checkpoints the sink kept outside the database catch
it. Also: a trail from before the tree (migration 0008) gets its tree on the next start."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from backline.common import keys
from backline.relay import audit, audit_note, audit_tree, config
from backline.relay.audit_sinks import FileSink, read_sink_file
from backline.relay.store import open_store
from tests.harness import RELAY

EVENTS = 250  # checkpoints at 100 and 200


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One trail for the module, copied by each test (``make_trail``)."""
    root = tmp_path_factory.mktemp("sink-template")
    sink = root / "outside" / "checkpoints.jsonl"
    store = open_store(config.load(overrides={
        "data_dir": root / "relay", "audit_checkpoint_sinks": [f"file:{sink}"]}, environ={}))
    store.audit.append_many([(f"user:u{i % 5}", "test.event", f"thing:{i}", {"n": i})
                             for i in range(EVENTS)])
    store.engine.dispose()
    return root


@pytest.fixture
def make_trail(template: Path) -> Any:
    def make(root: Path) -> Path:
        for part in ("relay", "outside"):
            shutil.copytree(template / part, root / part)
        return root / "outside" / "checkpoints.jsonl"

    return make


def cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    return subprocess.run([RELAY, "audit", *args, "--data-dir", str(root / "relay")],
                          env=env, capture_output=True, text=True, timeout=60)


def rewrite_history(root: Path, seq: int, keep_upto: int | None = None) -> None:
    """Alter event ``seq`` and make everything after it agree: the chain recomputed, the
    tree rebuilt, the checkpoints from ``seq`` on deleted (they no longer match and the
    attacker cannot sign new ones); ``keep_upto``: also cut the trail there."""
    db = sqlite3.connect(root / "relay" / "relay.db")
    db.row_factory = sqlite3.Row
    with db:
        db.execute("UPDATE audit_events SET details = ? WHERE seq = ?",
                   (json.dumps({"n": -1}, separators=(",", ":")), seq))
        if keep_upto is not None:
            db.execute("DELETE FROM audit_events WHERE seq > ?", (keep_upto,))
        prev = db.execute("SELECT hash FROM audit_events WHERE seq = ?", (seq - 1,)
                          ).fetchone()[0]
        tree = audit_tree.MemoryTree()
        rows = db.execute("SELECT * FROM audit_events ORDER BY seq").fetchall()
        for r in rows:
            row: dict[str, Any] = dict(r)
            if row["seq"] >= seq:
                row["prev_hash"] = prev
                row["hash"] = audit.event_hash(row["seq"], row["time"], row["actor"],
                                               row["action"], row["target"], row["details"],
                                               prev)
                db.execute("UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?",
                           (row["prev_hash"], row["hash"], row["seq"]))
                prev = row["hash"]
            tree.append(audit_tree.leaf_hash(audit.row_body(row)))
        db.execute("UPDATE audit_head SET seq = ?, hash = ?", (rows[-1]["seq"], prev))
        db.execute("DELETE FROM audit_tree")
        db.executemany("INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)",
                       [(lv, ix, h) for (lv, ix), h in tree.nodes.items()])
        db.execute("DELETE FROM audit_checkpoints WHERE seq >= ?", (seq,))
        db.execute("DELETE FROM audit_notes WHERE size >= ?", (seq,))
    db.close()


def test_the_sink_holds_every_checkpoint_note(tmp_path: Path, make_trail: Any) -> None:
    sink = make_trail(tmp_path)
    notes = read_sink_file(sink)
    assert [audit_note.parse_checkpoint(audit_note.split(n)[0]).size for n in notes] == [
        100, 200]
    assert oct(sink.stat().st_mode & 0o777) == "0o600"
    r = cli(tmp_path, "verify", "--against", str(sink))
    assert r.returncode == 0, r.stderr
    assert "2 external checkpoints reproduced" in r.stdout


def test_a_rewritten_database_passes_verify_but_not_against_the_sink(
        tmp_path: Path, make_trail: Any) -> None:
    sink = make_trail(tmp_path)
    rewrite_history(tmp_path, 137)
    plain = cli(tmp_path, "verify")
    assert plain.returncode == 0, plain.stderr  # what the database alone cannot show
    r = cli(tmp_path, "verify", "--against", str(sink))
    assert r.returncode == 1, r.stdout
    assert "BROKEN at record #200" in r.stderr, r.stderr
    assert "external checkpoint #2 (size 200) is not the root" in r.stderr
    assert "rewritten" in r.stderr


def test_a_rewritten_and_cut_database_is_caught_against_the_sink(
        tmp_path: Path, make_trail: Any) -> None:
    sink = make_trail(tmp_path)
    rewrite_history(tmp_path, 120, keep_upto=150)
    assert cli(tmp_path, "verify").returncode == 0
    r = cli(tmp_path, "verify", "--against", str(sink))
    assert r.returncode == 1
    assert "cut off" in r.stderr and "#200" in r.stderr, r.stderr


def test_a_forged_sink_line_is_refused(tmp_path: Path, make_trail: Any) -> None:
    sink = make_trail(tmp_path)
    forged = audit_note.sign(audit_note.checkpoint_text("backline-relay/x", 5, b"\0" * 32),
                             "backline-relay/x", keys.generate())
    FileSink(sink).write(forged)
    r = cli(tmp_path, "verify", "--against", str(sink))
    assert r.returncode == 1 and "external checkpoint #3 is not this relay's" in r.stderr
    (tmp_path / "junk.jsonl").write_text("not json\n")
    r = cli(tmp_path, "verify", "--against", str(tmp_path / "junk.jsonl"))
    assert r.returncode == 2 and "not a checkpoint record" in r.stderr


def test_a_tampered_tree_node_is_named(tmp_path: Path, make_trail: Any) -> None:
    make_trail(tmp_path)
    db = sqlite3.connect(tmp_path / "relay" / "relay.db")
    with db:
        db.execute("UPDATE audit_tree SET hash = ? WHERE level = 2 AND idx = 3", (b"\1" * 32,))
    db.close()
    r = cli(tmp_path, "verify")
    assert r.returncode == 1 and "node (2, 3) differs from the events" in r.stderr, r.stderr


def test_a_trail_from_before_the_tree_gets_it_on_start(tmp_path: Path,
                                                      make_trail: Any) -> None:
    make_trail(tmp_path)
    db = sqlite3.connect(tmp_path / "relay" / "relay.db")
    with db:
        db.execute("DELETE FROM audit_tree")
        db.execute("DELETE FROM audit_notes")
    db.close()
    seen: list[tuple[int, int]] = []
    store = open_store(config.load(overrides={"data_dir": tmp_path / "relay"}, environ={}))
    assert store.audit.ensure_tree() == 0  # open_store built it already
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_tree")
    assert store.audit.ensure_tree(progress=lambda d, t: seen.append((d, t)), chunk=100) == 250
    assert seen == [(100, 250), (200, 250), (250, 250)]
    tree = audit_tree.MemoryTree()
    for row in store.audit.rows(list(range(1, EVENTS + 1))):
        tree.append(audit_tree.leaf_hash(audit.row_body(row)))
    assert store.audit.root(EVENTS) == tree.root()
    assert store.audit.inclusion_proof(42, EVENTS) == tree.inclusion(41, EVENTS)
    assert store.audit.consistency_proof(100, EVENTS) == tree.consistency(100, EVENTS)
    # The migrated trail's head has the chain's checkpoint (#200 is not the head: 250
    # is, with none): a checkpoint now adds the note, and the chain's too.
    note = store.audit.checkpoint_now()
    assert note is not None and note["size"] == EVENTS
    assert store.audit.checkpoint_now() == note  # nothing new: the same note
    store.audit.append("user:x", "test.after", "", {})
    assert store.audit.root(EVENTS) == tree.root()
    store.engine.dispose()
    assert cli(tmp_path, "verify").returncode == 0


def test_the_syslog_sink_sends_each_note() -> None:
    import socket
    import threading

    from backline.relay.audit_sinks import SyslogSink

    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(10)
    port = server.getsockname()[1]
    got: list[bytes] = []

    def receive() -> None:
        conn, _ = server.accept()
        conn.settimeout(10)
        while b"checkpoint" not in b"".join(got):
            chunk = conn.recv(65536)
            if not chunk:
                break
            got.append(chunk)
        conn.close()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    note = audit_note.sign(audit_note.checkpoint_text("o", 1, b"\0" * 32), "o",
                           keys.generate())
    SyslogSink(f"syslog+tcp://127.0.0.1:{port}").write(note)
    thread.join(15)
    server.close()
    assert b"checkpoint" in b"".join(got) and b"o\n1\n" in b"".join(got)


def test_the_stored_tree_matches_the_rfc_at_every_size(tmp_path: Path) -> None:
    """Appends in uneven batches (the frontier cached across them, and read again after
    another writer's append): every root, and proofs at every size, as in memory."""
    store = open_store(config.load(overrides={"data_dir": tmp_path / "relay"}, environ={}))
    other = audit.AuditLog(store.engine, store.audit.signing_key)
    tree = audit_tree.MemoryTree()
    size = 0
    for batch in (1, 2, 3, 1, 7, 16, 1, 5, 30):
        log = other if batch == 1 else store.audit
        log.append_many([("user:t", "test.event", "", {"b": batch, "i": i})
                         for i in range(batch)])
        for row in store.audit.rows(list(range(size + 1, size + batch + 1))):
            tree.append(audit_tree.leaf_hash(audit.row_body(row)))
        size += batch
    for n in range(1, size + 1):
        assert store.audit.root(n) == tree.root(n), n
        assert store.audit.inclusion_proof(n, size) == tree.inclusion(n - 1, size)
        assert store.audit.inclusion_proof(1, n) == tree.inclusion(0, n)
        assert store.audit.consistency_proof(n, size) == tree.consistency(n, size)
    store.engine.dispose()


def test_checkpoint_now_survives_appends_racing_it(tmp_path: Path) -> None:
    """An event appended between signing the checkpoint and reading its note must not
    make ``checkpoint_now`` answer None ("the trail is empty"): once forced right in that
    gap, then with a thread appending while the main one asks."""
    import threading

    store = open_store(config.load(overrides={"data_dir": tmp_path / "relay"}, environ={}))
    log = store.audit
    log.checkpoint_every = 10_000  # no checkpoint of the appends' own
    log.append("user:a", "test.event", "thing:0", {"n": 0})
    signed = log.checkpoint

    def checkpoint_then_append() -> int | None:
        seq = signed()
        log.append("user:a", "test.event", "thing:gap", {})
        return seq

    log.checkpoint = checkpoint_then_append  # type: ignore[method-assign]
    note = log.checkpoint_now()
    assert note is not None and note["size"] == 1
    log.checkpoint = signed  # type: ignore[method-assign]
    stop = threading.Event()

    def appender() -> None:
        for i in range(400):
            if stop.is_set():
                return
            log.append("user:b", "test.event", f"thing:{i}", {"n": i})

    thread = threading.Thread(target=appender)
    thread.start()
    try:
        sizes = []
        for _ in range(40):
            got = log.checkpoint_now()
            assert got is not None
            sizes.append(got["size"])
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sizes == sorted(sizes) and sizes[-1] >= 2
    store.engine.dispose()


def test_the_syslog_sink_takes_a_ca_file_and_refuses_other_options(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from backline.relay import audit_sinks

    made: list[tuple[str, str | None]] = []

    class Recorder:
        def __init__(self, url: str, ca_file: str | None = None) -> None:
            made.append((url, ca_file))

    monkeypatch.setattr(audit_sinks, "SyslogSink", Recorder)
    audit_sinks.open_sinks(["syslog+tls://127.0.0.1:6514?ca_file=/etc/backline/ca.pem",
                            "syslog+tcp://127.0.0.1:514"])
    assert made == [("syslog+tls://127.0.0.1:6514", "/etc/backline/ca.pem"),
                    ("syslog+tcp://127.0.0.1:514", None)]
    for bad in ("syslog+tls://h:1?verify=no", "syslog+tls://h:1?ca_file=",
                "syslog+tls://h:1?ca_file=a&x=b"):
        with pytest.raises(ValueError, match="the only option is"):
            audit_sinks.open_sinks([bad])


def test_a_failing_sink_is_counted_and_reported(tmp_path: Path) -> None:
    """Without a relay (the CLI) a failing sink is counted; with one, handed to it."""
    broken = tmp_path / "a-directory"
    broken.mkdir()
    store = open_store(config.load(overrides={
        "data_dir": tmp_path / "relay", "audit_checkpoint_sinks": [f"file:{broken}"],
        "audit_checkpoint_every": 1}, environ={}))
    store.audit.append("user:a", "test.event", "thing:1", {})
    assert store.audit.sink_failures == 1
    seen: list[tuple[str, str, str]] = []
    store.audit.on_sink_failure = lambda *args: seen.append(args)
    store.audit.append("user:a", "test.event", "thing:2", {})
    assert store.audit.sink_failures == 2
    assert seen and seen[0][:2] == (f"file:{broken}", "write_failed")
    assert "Is a directory" in seen[0][2]
    store.engine.dispose()
