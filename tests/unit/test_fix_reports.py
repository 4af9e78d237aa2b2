"""Self-service fix reports (agent/fix_reports.py, the ``fix_report`` message): the
outbox is durable and strict about what it sends; the sender forgets a report only when
the relay says it has it (or refused it for good), keeps it when rate-limited or when no
answer came; the message's bound holds for the longest valid one and for no longer."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backline.agent import fix_reports
from backline.agent.activity import ActivityLog
from backline.common import protocol
from backline.common.protocol import ProtocolError


def run(**change: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "run_id": fix_reports.new_run_id(), "fix": "disk-clean", "version": 3,
        "digest": "sha256:" + "a" * 64, "exit_status": 0, "signal": None,
        "timed_out": False, "verify": "passed", "output_sha256": "b" * 64,
        "started_at": 1_800_000_000.0, "ended_at": 1_800_000_012.5}
    body.update(change)
    return body


def test_kept_reports_are_private_durable_files_read_back_oldest_first(tmp_path: Path) -> None:
    first, second = run(), run(exit_status=None, signal="SIGKILL")
    p1 = fix_reports.keep(tmp_path, first)
    fix_reports.keep(tmp_path, second)
    os.utime(p1, (1, 1))  # kept long ago
    assert p1.stat().st_mode & 0o777 == 0o600
    assert not list(fix_reports.folder(tmp_path).glob("*.tmp"))
    got = fix_reports.pending(tmp_path)
    assert [r["run_id"] for _, r in got] == [first["run_id"], second["run_id"]]
    sent = json.loads(fix_reports.message(got[1][1], now=1_800_000_100))
    assert "exit_status" not in sent and sent["signal"] == "SIGKILL"
    assert sent["sent_at"] == 1_800_000_100
    # A clock stepped back since the run: sent_at is never before ended_at.
    assert json.loads(fix_reports.message(first, now=1))["sent_at"] == first["ended_at"]
    assert len(fix_reports.pending(tmp_path, limit=1)) == 1


@pytest.mark.parametrize("change", [
    {"run_id": "sr_short"}, {"fix": "Bad_Id"}, {"version": 0}, {"digest": "md5:00"},
    {"verify": "maybe"}, {"started_at": 1_800_000_100.0},  # after its end
    {"exit_status": None},  # no exit status and no signal
    {"signal": "SIGKILL"},  # and exit status 0: both
    {"output_sha256": "B" * 64},
])
def test_a_report_that_could_never_be_sent_is_not_kept(tmp_path: Path,
                                                       change: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        fix_reports.keep(tmp_path, run(**change))
    assert fix_reports.pending(tmp_path) == []


def test_files_that_are_not_reports_are_set_aside_once(tmp_path: Path) -> None:
    where = fix_reports.folder(tmp_path)
    where.mkdir()
    good = run()
    fix_reports.keep(tmp_path, good)
    other = run()
    (where / f"{other['run_id']}.json").write_text(json.dumps({**good}))  # not its name
    (where / f"{fix_reports.new_run_id()}.json").write_text("{not json")
    (where / f"{fix_reports.new_run_id()}.json").write_bytes(b" " * 5000)
    (where / "notes.txt").write_text("left alone")
    assert [r["run_id"] for _, r in fix_reports.pending(tmp_path)] == [good["run_id"]]
    assert len(list(where.glob("*.bad"))) == 3
    assert [r["run_id"] for _, r in fix_reports.pending(tmp_path)] == [good["run_id"]]
    assert (where / "notes.txt").exists()


def test_the_outbox_stays_bounded_and_private(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Stale temporary files go, set-aside files are kept to the newest
    MAX_SET_ASIDE, a folder made readable by others is made 0700 again, and past
    MAX_PENDING unsent reports a run is not kept (an OSError the command reports)."""
    where = fix_reports.folder(tmp_path)
    where.mkdir(mode=0o755)
    os.chmod(where, 0o755)  # noqa: S103 - the mode under test
    now = 1_900_000_000.0
    monkeypatch.setattr(fix_reports, "MAX_SET_ASIDE", 3)
    aside = []
    for i in range(5):
        p = where / f"{fix_reports.new_run_id()}.{'refused' if i % 2 else 'bad'}"
        p.write_text("{}")
        os.utime(p, (now - 100 + i, now - 100 + i))
        aside.append(p)
    stale, fresh = where / "sr_x.json.tmp", where / "sr_y.json.tmp"
    for p, age in ((stale, fix_reports.STALE_TMP_S + 1), (fresh, 10)):
        p.write_text("half")
        os.utime(p, (now - age, now - age))
    kept = fix_reports.keep(tmp_path, run())
    assert where.stat().st_mode & 0o777 == 0o700  # keep() mended the mode
    os.chmod(where, 0o750)  # noqa: S103 - the mode under test
    assert fix_reports.tidy(tmp_path, now=now) == 3  # the stale tmp, the 2 oldest aside
    assert where.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in where.iterdir()) == sorted(
        [kept.name, fresh.name, *(p.name for p in aside[2:])])
    assert fix_reports.tidy(tmp_path, now=now) == 0

    monkeypatch.setattr(fix_reports, "MAX_PENDING", 2)
    fix_reports.keep(tmp_path, run())
    with pytest.raises(OSError, match="already holds 2 reports"):
        fix_reports.keep(tmp_path, run())
    assert len(fix_reports.pending(tmp_path)) == 2


def test_an_unreadable_report_is_left_for_later_not_set_aside(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that cannot be read now (EACCES: another user's; EMFILE) is not shown
    to be no report: it is not renamed .bad (set-aside files are deleted in time),
    only skipped, and read when it can be. (The OS's refusal is simulated: the tests
    run as root, who reads a 0000 file.)"""
    path = fix_reports.keep(tmp_path, run())
    read_text = Path.read_text

    def refused(self: Path, *args: Any, **kw: Any) -> str:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kw)

    monkeypatch.setattr(Path, "read_text", refused)
    assert fix_reports.pending(tmp_path) == []
    assert path.exists() and not list(path.parent.glob("*.bad"))
    monkeypatch.setattr(Path, "read_text", read_text)
    assert [p for p, _ in fix_reports.pending(tmp_path)] == [path]


class FakeRelay:
    """Answers each ``fix_report`` it is sent with the next planned status."""

    def __init__(self, reporter: fix_reports.FixReporter, answers: list[Any]) -> None:
        self.reporter, self.answers = reporter, list(answers)
        self.sent: list[dict[str, Any]] = []

    async def send(self, frame: str) -> None:
        msg = protocol.decode(frame)
        self.sent.append(msg)
        answer = self.answers.pop(0) if self.answers else "recorded"
        if answer is None:
            return  # no answer: lost on the way
        status, _, reason = answer.partition(":")
        ack = {"run_id": msg["run_id"], "status": status, **({"reason": reason} if reason
                                                               else {})}
        loop = asyncio.get_running_loop()
        loop.call_soon(self.reporter.acked,
                       protocol.decode(protocol.encode("fix_report_ack", **ack)))


def test_the_sender_forgets_only_what_the_relay_has(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fix_reports, "ACK_TIMEOUT_S", 0.2)
    log = ActivityLog(tmp_path / "activity.jsonl")
    reporter = fix_reports.FixReporter(tmp_path, log)
    runs = [run() for _ in range(5)]
    for i, r in enumerate(runs):
        path = fix_reports.keep(tmp_path, r)
        os.utime(path, (i + 1, i + 1))
    relay = FakeRelay(reporter, ["recorded", "duplicate", "refused:unknown_version", None])
    asyncio.run(reporter.send_pending(relay.send))
    left = {r["run_id"] for _, r in fix_reports.pending(tmp_path)}
    # recorded and duplicate: forgotten; refused for good: set aside; no answer: kept,
    # and the pass stopped there (the connection is likely gone).
    assert left == {runs[3]["run_id"], runs[4]["run_id"]}
    assert (fix_reports.folder(tmp_path) / f"{runs[2]['run_id']}.refused").exists()
    assert len(relay.sent) == 4
    events = [(e["event"], e.get("status") or e.get("reason")) for e in log.read()]
    assert events == [("fix.reported", "recorded"), ("fix.reported", "duplicate"),
                      ("fix.report.refused", "unknown_version")]

    # Rate-limited: kept, and nothing more is sent until the wait is over.
    relay = FakeRelay(reporter, ["refused:rate_limited"])
    asyncio.run(reporter.send_pending(relay.send))
    assert len(relay.sent) == 1 and len(fix_reports.pending(tmp_path)) == 2
    assert reporter._not_before > 0
    reporter._not_before = 0.0
    relay = FakeRelay(reporter, [])
    asyncio.run(reporter.send_pending(relay.send))
    assert fix_reports.pending(tmp_path) == [] and len(relay.sent) == 2


def test_an_answer_for_another_run_is_ignored(tmp_path: Path) -> None:
    reporter = fix_reports.FixReporter(tmp_path)
    reporter.acked({"run_id": fix_reports.new_run_id(), "status": "recorded"})  # nothing waits
    assert reporter.in_flight is None


def longest(kind: str) -> dict[str, Any]:
    """A valid message of ``kind`` with every field at its longest encoding."""
    if kind == "fix_report":
        return {"run_id": "sr_" + "A" * 32, "fix": "a" + "b" * 47,
                "version": 2**31 - 1, "digest": "sha256:" + "f" * 64,
                "signal": "S" * 16, "timed_out": False,  # longer than any exit_status
                "verify": "failed", "output_sha256": "e" * 64,
                "started_at": 1_000_000_000.123457, "ended_at": 9_999_999_999.999998,
                "sent_at": 9_999_999_999.999998}
    return {"run_id": "sr_" + "A" * 32, "status": "duplicate", "reason": "\u0001" * 32}


@pytest.mark.parametrize("kind", ["fix_report", "fix_report_ack"])
def test_the_bound_holds_for_the_longest_valid_message(kind: str) -> None:
    frame = protocol.encode(kind, **longest(kind))
    assert len(frame.encode()) <= protocol.max_encoded_bytes(kind) < 2048


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(list(protocol.SCHEMAS["fix_report"])),
                       st.none() | st.booleans() | st.integers() | st.floats()
                       | st.text(max_size=80), max_size=14))
def test_any_fix_report_is_valid_or_a_protocol_error(fields: dict[str, Any]) -> None:
    frame = json.dumps({"v": 1, "type": "fix_report", **fields})
    try:
        msg = protocol.parse_agent_message(frame)
    except ProtocolError as err:
        assert err.msg_type == "fix_report" or err.code == "bad_json"
        return
    assert msg["started_at"] <= msg["ended_at"] <= msg["sent_at"]
    assert ("exit_status" in msg) != ("signal" in msg)
    assert len(protocol.encode("fix_report", **{k: v for k, v in msg.items()
                                                 if k not in ("v", "type")}).encode()
               ) <= protocol.max_encoded_bytes("fix_report")


def test_the_relays_limit_is_a_burst_then_one_a_period_per_agent() -> None:
    from backline.relay.fixes.self_service import RateLimit

    limit = RateLimit(burst=3, refill_s=60, max_agents=2)
    assert [limit.allow("ag_1", 0) for _ in range(4)] == [True, True, True, False]
    assert limit.allow("ag_2", 0)  # another agent has its own
    assert not limit.allow("ag_1", 59) and limit.allow("ag_1", 120)  # one came back
    assert limit.allow("ag_1", 120) and not limit.allow("ag_1", 120)
    # The table is full: buckets with nothing to remember (ag_2's, full again) make
    # room; a spent one stays, so flooding new keys resets nobody.
    assert limit.allow("ag_3", 130) and len(limit) == 2
    assert not limit.allow("ag_1", 130)
