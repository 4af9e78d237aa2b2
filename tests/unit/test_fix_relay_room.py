"""The fix room's reading of the agent's lines, in-process: what a hostile or broken
agent can send is bounded, checked, and audited; the kept output is the decoded
``output`` chunks, and its SHA-256 is held to the agent's ``end.output_sha256``.
(The whole path, on real processes: tests/integration/test_fix_relay_e2e.py.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
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


def started(follower: room.Follower) -> room.Follower:
    """The lines every run that runs begins with."""
    for msg in (line(type="checked", digest=follower.run.digest, signers=["SHA256:x"]),
                line(type="start", pid=7)):
        assert follower.line(msg) is not None
    return follower


def test_an_end_that_lies_about_the_output_is_a_mismatch(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = started(room.Follower(relay, run, keep_lines=False))
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
    follower = started(room.Follower(relay, run, keep_lines=True))
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
    refused = [d for a, d in relay.events if a == "fix.run.refused"]
    assert [d["reason"] for d in refused] == ["digest_mismatch"]
    assert all(d["side"] == "agent" and len(d["detail"]) <= 200 for d in refused)
    assert follower.finish(77)["status"] == "refused"


def test_an_unknown_refusal_reason_is_other(relay: FakeRelay) -> None:
    follower = room.Follower(relay, make_run(relay), keep_lines=True)
    follower.line(line(type="refused", reason="made-up", detail=""))
    assert [d["reason"] for a, d in relay.events if a == "fix.run.refused"] == ["other"]


def test_output_up_to_the_cap_then_cut_then_end(relay: FakeRelay) -> None:
    run = make_run(relay)
    run.max_output = 12
    follower = started(room.Follower(relay, run, keep_lines=False))
    for _ in range(3):
        assert follower.line(line(type="output", fd=1,
                                  b64=base64.b64encode(b"abcd").decode())) is not None
    assert follower.line(line(type="cut", kept_bytes=12)) is not None
    assert follower.line(line(**{**END, "kept_bytes": 12})) is not None
    assert follower.writer.size == 12 and run.error is None


def test_kept_output_is_bounded_by_the_cap(relay: FakeRelay) -> None:
    """An agent that ignores the cap it was asked for breaks the contract: one protocol
    error, and nothing past the cap is kept."""
    run = make_run(relay)
    run.max_output = 10
    follower = started(room.Follower(relay, run, keep_lines=False))
    for _ in range(5):
        follower.line(line(type="output", fd=1, b64=base64.b64encode(b"abcd").decode()))
    assert follower.writer.size == 8 and run.error == "protocol"
    assert [d["reason"] for a, d in relay.events if a == "fix.run.failed"] == ["protocol"]


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


# --- once and in order (a hostile agent cannot flood the trail or the relay's memory) --

END = dict(type="end", exit_status=0, signal=None, timed_out=False, cancelled=False,
           duration_ms=1, output_bytes=0, kept_bytes=0, output_sha256=hashlib.sha256(b"")
           .hexdigest())


@pytest.mark.parametrize("script", [
    ["consent"],                        # nothing before checked
    ["start"],
    ["output"],
    ["end"],
    ["checked", "checked"],             # each step once
    ["checked", "consent", "consent"],
    ["checked", "start", "start"],
    ["checked", "start", "cut", "cut"],
    ["checked", "start", "end", "end"],
    ["checked", "start", "end", "verify", "verify"],
    ["checked", "start", "end", "output"],   # nothing after the end but verify
    ["checked", "start", "cut", "output"],   # past the cut the agent discards
    ["checked", "start", "empty"],           # an empty chunk
    ["checked", "start", "consent"],         # consent comes before start
    ["checked", "end"],                      # no end without a start
    ["refused", "refused"],                  # a refusal is the last word
    ["refused", "start"],
    ["checked", "start", "refused"],
])
def test_steps_out_of_order_or_twice_are_one_protocol_error(relay: FakeRelay,
                                                            script: list[str]) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    bodies: dict[str, dict[str, Any]] = {
        "checked": dict(type="checked", digest=run.digest, signers=[]),
        "consent": dict(type="consent", answer="yes"), "start": dict(type="start", pid=1),
        "output": dict(type="output", fd=1, b64="eA=="), "cut": dict(type="cut", kept_bytes=1),
        "end": END, "verify": dict(type="verify", passed=True, exit_status=0, output_b64=""),
        "refused": dict(type="refused", reason="policy", detail="no"),
        "empty": dict(type="output", fd=1, b64="")}
    results = [follower.line(line(**bodies[k])) for k in script]
    assert results[-1] is None and all(r is not None for r in results[:-1])
    failed = [d for a, d in relay.events if a == "fix.run.failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "protocol"
    assert failed[0]["digest"] == run.digest
    # the channel is closed after it; any further line is not believed, not audited again
    for _ in range(1000):
        assert follower.line(line(**bodies["consent"])) is None
    assert len([a for a, _ in relay.events if a == "fix.run.failed"]) == 1
    assert len([a for a, _ in relay.events if a == "fix.run.consent"]) <= 1
    assert len(run.lines) <= len(script)


@pytest.mark.parametrize("before", [["checked"], ["checked", "consent"]])
def test_a_cancel_before_the_start_ends_without_a_start(relay: FakeRelay,
                                                        before: list[str]) -> None:
    """The agent's answer to a cancel that came before the script started (executor's
    run_fix: ``end`` with ``cancelled: true`` and no ``start``) is the run's end, not a
    protocol error; an ``end`` without a start that is NOT cancelled still is one."""
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    bodies = {"checked": dict(type="checked", digest=run.digest, signers=[]),
              "consent": dict(type="consent", answer="yes")}
    for k in before:
        assert follower.line(line(**bodies[k])) is not None
    assert follower.line(line(**{**END, "cancelled": True})) is not None
    assert run.end is not None and run.end["cancelled"] is True
    assert not [a for a, _ in relay.events if a == "fix.run.failed"]
    values = follower.finish(0)
    assert values["status"] == "ended" and values["cancelled"] is True
    ended = [d for a, d in relay.events if a == "fix.run.ended"]
    assert len(ended) == 1 and ended[0]["cancelled"] is True
    assert not [a for a, _ in relay.events if a == "fix.run.failed"]


def test_a_cancelled_end_before_start_may_not_carry_output(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    follower.line(line(type="checked", digest=run.digest, signers=[]))
    assert follower.line(line(**{**END, "cancelled": True, "output_bytes": 5})) is None
    failed = [d for a, d in relay.events if a == "fix.run.failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "protocol"


def test_no_verify_after_an_end_that_had_no_start(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    follower.line(line(type="checked", digest=run.digest, signers=[]))
    follower.line(line(**{**END, "cancelled": True}))
    assert follower.line(line(type="verify", passed=True, exit_status=0,
                              output_b64="")) is None
    assert [d["reason"] for a, d in relay.events if a == "fix.run.failed"] == ["protocol"]


def test_a_flood_of_lines_is_bounded(relay: FakeRelay) -> None:
    """6,000 consent lines (the review's demo): one audit row, not 6,000; no growth."""
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    follower.line(line(type="checked", digest=run.digest, signers=[]))
    for _ in range(6000):
        follower.line(line(type="consent", answer="yes"))
    assert len(relay.events) <= 2 and len(run.lines) <= 2


def test_many_small_output_lines_are_fine(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = started(room.Follower(relay, run, keep_lines=True))
    for _ in range(3000):
        assert follower.line(line(type="output", fd=2, b64="eA==")) is not None
    assert follower.writer.size == 3000 and run.error is None


def test_a_checked_line_with_another_digest_is_audited_and_stops(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    assert follower.line(line(type="checked", digest="sha256:" + "b" * 64, signers=[])) is None
    failed = [d for a, d in relay.events if a == "fix.run.failed"]
    assert len(failed) == 1 and failed[0]["reason"] == "digest_mismatch"
    assert failed[0]["digest"] == run.digest and failed[0]["checked_digest"] == "sha256:" + "b" * 64
    assert follower.finish(0)["status"] == "failed"


def test_a_checked_line_with_the_digest_sent_passes(relay: FakeRelay) -> None:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    assert follower.line(line(type="checked", digest=run.digest, signers=[])) is not None
    assert run.status == "checked" and not relay.events


# --- a cancel the agent ignores: the wait is bounded ------------------------------------


class SilentProc:
    """An agent channel that takes the request and the cancel, then says nothing."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = list(lines)
        self.written: list[bytes] = []
        self.closed = asyncio.Event()
        self.exit_status: int | None = None
        self.stdin = SimpleNamespace(write=self.written.append)
        self.stdout = SimpleNamespace(read=self.read)

    async def read(self, n: int = -1) -> bytes:
        while not self.lines and not self.closed.is_set():  # noqa: ASYNC110 (a fake pipe)
            await asyncio.sleep(0.01)
        if self.lines:
            got = self.lines.pop(0)
            if not got:
                self.closed.set()  # EOF: the agent closed its side
            return got
        return b""

    def close(self) -> None:
        self.closed.set()

    async def wait_closed(self) -> None:
        await self.closed.wait()


def follow(relay: FakeRelay, proc: SilentProc, cancel_at: float) -> tuple[float, room.Run]:
    run = make_run(relay)
    follower = room.Follower(relay, run, keep_lines=True)
    runner = SimpleNamespace(relay=relay)
    ch = SimpleNamespace(proc=proc, session=SimpleNamespace(touch=lambda: None))

    async def go() -> float:
        cancel = asyncio.Event()
        asyncio.get_running_loop().call_later(cancel_at, cancel.set)
        started = time.monotonic()
        await room._follow(runner, ch, follower, None, cancel)  # type: ignore[arg-type]
        return time.monotonic() - started

    return asyncio.run(go()), run


def test_an_agent_that_ignores_the_cancel_is_cut_off_after_the_bound(
        relay: FakeRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room, "CANCEL_GRACE_S", 0.3)
    proc = SilentProc([line(type="checked", digest="sha256:" + "a" * 64, signers=[]),
                       line(type="start", pid=3)])
    took, run = follow(relay, proc, cancel_at=0.1)
    assert took < 2.0 and proc.closed.is_set()
    assert proc.written == [b'{"type":"cancel"}\n']
    actions = [a for a, _ in relay.events]
    assert actions == ["fix.run.started", "fix.run.cancelled", "fix.run.failed"]
    assert relay.events[-1][1]["reason"] == "cancel_unacknowledged"
    assert run.error == "cancel_unacknowledged"


def test_an_agent_that_ends_after_the_cancel_is_not_a_failure(
        relay: FakeRelay, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(room, "CANCEL_GRACE_S", 0.3)
    proc = SilentProc([line(type="checked", digest="sha256:" + "a" * 64, signers=[]),
                       line(type="start", pid=3)])

    real = proc.stdin.write

    def answer(data: bytes) -> None:  # the agent's answer to the cancel: an end, then EOF
        real(data)
        proc.lines.append(line(**{**END, "cancelled": True}))
        proc.lines.append(b"")

    proc.stdin = SimpleNamespace(write=answer)
    took, run = follow(relay, proc, cancel_at=0.1)
    assert took < 2.0 and run.error is None and run.end is not None
    assert [a for a, _ in relay.events][-1] == "fix.run.cancelled"
