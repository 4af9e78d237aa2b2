"""The fix room's reading of the agent's lines, in-process: what a hostile or broken
agent can send is bounded, checked, and audited; the kept output is the decoded
``output`` chunks, and its SHA-256 is held to the agent's ``end.output_sha256``.
(The whole path, on real processes: tests/integration/test_fix_relay_e2e.py.)"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from backline.relay import audit_events
from backline.relay.blobs import BlobStore
from backline.relay.capabilities import fix as room
from backline.relay.capabilities.base import RequestRefused
from backline.relay.fixes import store
from backline.relay.schema import metadata


class FakeRelay:
    def __init__(self, root: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{root / 'db.sqlite'}")
        metadata.create_all(self.engine)
        self.blobs = BlobStore(root / "blobs")
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        self.events.append((action, audit_events.checked(action, details)))


def make_run(relay: FakeRelay) -> room.Run:
    version = store.Version("tmp-clean", 1, "sha256:" + "a" * 64,
                            {"timeout_s": 30}, "alice", 0.0)
    session = SimpleNamespace(id="ss_1", principal="ag_1", technician="alice",
                              reason="", ticket="", capabilities=("fix",))
    run = room.Run("fr_1", version, session, "user:alice", None)  # type: ignore[arg-type]
    store.new_run(relay.engine, {
        "id": "fr_1", "fix_id": "tmp-clean", "version": 1, "digest": version.digest,
        "session_id": "ss_1", "agent_id": "ag_1", "technician": "alice", "params": "{}",
        "status": "requested", "started_at": 0.0})
    return run


def line(**msg: Any) -> bytes:
    return json.dumps(msg).encode() + b"\n"


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRelay:
    monkeypatch.setenv(audit_events.STRICT_ENV, "1")
    return FakeRelay(tmp_path)


def test_a_whole_run_is_kept_and_its_hash_checked(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    chunks = [b"hello ", b"\x00\xff binary ", b"world\n"]
    kept = b"".join(chunks)
    for msg in ([line(type="checked", digest=run.digest, signers=["SHA256:x"]),
                 line(type="consent", answer="yes"), line(type="start", pid=42)]
                + [line(type="output", fd=1, b64=base64.b64encode(c).decode()) for c in chunks]
                + [line(type="end", exit_status=0, signal=None, timed_out=False,
                        cancelled=False, duration_ms=12, output_bytes=len(kept),
                        kept_bytes=len(kept), output_sha256=hashlib.sha256(kept).hexdigest()),
                   line(type="verify", passed=True, exit_status=0, output_b64="")]):
        assert follower.line(msg) is not None
    values = follower.finish(0)
    assert values["output_ok"] is True and values["status"] == "ended"
    assert relay.blobs.get(values["output_sha256"]) == kept
    actions = [a for a, _ in relay.events]
    assert actions == ["fix.run.consent", "fix.run.started", "fix.run.ended"]
    ended = relay.events[-1][1]
    assert ended["output_sha256"] == hashlib.sha256(kept).hexdigest()
    assert ended["verify_passed"] is True and ended["digest"] == run.digest
    assert store.get_run(relay.engine, "fr_1")["verify_passed"] is True
    assert [x["type"] for x in run.lines] == ["checked", "consent", "start", "end", "verify"]


def test_an_end_that_lies_about_the_output_is_a_mismatch(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=False)
    follower.line(line(type="output", fd=1, b64=base64.b64encode(b"real").decode()))
    follower.line(line(type="end", exit_status=0, signal=None, timed_out=False,
                       cancelled=False, duration_ms=1, output_bytes=4, kept_bytes=4,
                       output_sha256=hashlib.sha256(b"fake").hexdigest()))
    values = follower.finish(0)
    assert values["output_ok"] is False
    failed = [d for a, d in relay.events if a == "fix.run.failed"]
    assert failed and failed[0]["reason"] == "output_mismatch"


@pytest.mark.parametrize("raw", [
    b"not json\n", b"[1, 2]\n", line(type="rm -rf /"), b"{" + b'"x":"' + b"a" * 70000 + b'"}\n',
    line(type="output", fd=1, b64="!!!not base64"),
    line(type="output", fd=1, b64=base64.b64encode(b"x" * 20000).decode()),
    line(type="output", fd=1),
])
def test_lines_that_break_the_contract_are_refused_and_audited(relay: FakeRelay,
                                                               raw: bytes) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    result = follower.line(raw)
    failed = [d for a, d in relay.events if a == "fix.run.failed"]
    assert failed and failed[0]["reason"] == "protocol"
    assert result is None or result.get("type") == "output"
    assert follower.writer.size == 0
    assert follower.finish(None)["status"] == "failed"


def test_an_agent_refusal_is_audited_with_its_reason(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    follower.line(line(type="refused", reason="digest_mismatch", detail="x" * 5000))
    follower.line(line(type="refused", reason="made-up", detail=""))
    refused = [d for a, d in relay.events if a == "fix.run.refused"]
    assert [d["reason"] for d in refused] == ["digest_mismatch", "other"]
    assert all(d["side"] == "agent" and len(d["detail"]) <= 200 for d in refused)
    assert follower.finish(77)["status"] == "refused"


def test_kept_output_is_bounded_by_the_cap(relay: FakeRelay) -> None:
    run = make_run(relay)
    run.max_output = 10
    follower = room.Follower(relay, run, keep_lines=False)
    for _ in range(5):
        follower.line(line(type="output", fd=1, b64=base64.b64encode(b"abcd").decode()))
    assert follower.writer.size == 10 and run.output_seen == 20


@pytest.mark.parametrize("asked", [
    {"fix": "x"}, {"fix": "Bad@1"}, {"fix": "ok-fix@1", "sections": ["dns"]},
    {"fix": "ok-fix@1", "params": {"A": object()}}, {"fix": "ok-fix@1", "params": [1]},
    {"fix": "ok-fix@1", "params": {f"P{i}": 1 for i in range(17)}},
    {"fix": "ok-fix@1", "params": {"A": "x" * 5000}},
    {"fix": "ok-fix@1", "finding": "Bad Rule"}, {"fix": 5},
])
def test_what_is_asked_is_checked(asked: dict[str, Any]) -> None:
    with pytest.raises(RequestRefused):
        room.parse_asked(asked)


def test_a_good_ask() -> None:
    a = room.parse_asked({"fix": "ok-fix@12", "params": {"A": "x", "B": 3, "C": True},
                          "finding": "disk-almost-full", "sections": None})
    assert (a.fix_id, a.version, a.finding) == ("ok-fix", 12, "disk-almost-full")
