"""The management report's rules on a hand-written trail (relay/reports/compute.py,
docs/reports.md): an episode spans re-sent alerts and ends at the first clear; a
changed outcome counts as its last value; a ticket spans agents; a session on the agent
during an episode means a technician touched it; a refused fix is not a fix run; events
after ``until`` are not read; the drill-down names exactly the members; a customer's
successful self-service fix started during an untouched episode makes it "resolved
without a technician", anything else untouched "cleared on their own"."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from backline.common import keys
from backline.relay.audit import AuditLog
from backline.relay.reports import compute
from backline.relay.schema import metadata


def trail(tmp_path: Path, events: list[tuple[float, str, str, str, dict[str, Any]]]
          ) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    metadata.create_all(engine)
    log = AuditLog(engine, keys.generate())
    for at, actor, action, target, details in events:
        row = log.append(actor, action, target, details)
        with engine.begin() as conn:  # the time the test says it happened
            conn.execute(sa.text("update audit_events set time = :t where seq = :s"),
                         {"t": at, "s": row["seq"]})
    return engine


def opened(at: float, sid: str, agent: str, ticket: str = "", who: str = "alice"
           ) -> tuple[float, str, str, str, dict[str, Any]]:
    return (at, f"user:{who}", "session.open", f"session:{sid}",
            {"agent": agent, "ticket": ticket})


def outcome(at: float, sid: str, value: str) -> tuple[float, str, str, str, dict[str, Any]]:
    return (at, "user:alice", "session.outcome", f"session:{sid}", {"outcome": value})


H = 3600.0


def test_the_rules(tmp_path: Path) -> None:
    engine = trail(tmp_path, [
        (0, "user:admin", "agent.enroll", "agent:a", {"group": "g1"}),
        (0, "user:admin", "agent.enroll", "agent:b", {"group": "g2"}),
        (10 * H, "agent:a", "agent.health.alert", "agent:a", {"critical": ["disk-full"]}),
        # re-sent (a reconnect): the same episode, one more finding
        (11 * H, "agent:a", "agent.health.alert", "agent:a",
         {"critical": ["disk-full", "svc-down"]}),
        (12 * H, "agent:a", "agent.health.cleared", "agent:a", {}),
        (13 * H, "agent:a", "agent.health.cleared", "agent:a", {}),  # no episode: nothing
        (20 * H, "agent:b", "agent.health.alert", "agent:b", {"critical": ["disk-full"]}),
        opened(21 * H, "s1", "b", ticket="T-1"),  # a ticketed session touches the episode
        (22 * H, "agent:b", "agent.health.cleared", "agent:b", {}),
        outcome(23 * H, "s1", "resolved"),
        outcome(30 * H, "s1", "not_resolved"),  # changed: T-1 is not resolved by s1
        opened(40 * H, "s2", "a", ticket="T-1", who="dave"),  # same ticket, other agent
        outcome(41 * H, "s2", "resolved"),
        (42 * H, "user:dave", "fix.run.ended", "session:s2",
         {"agent": "a", "session": "s2", "run": "r1", "exit_status": 0,
          "verify_passed": None, "output_ok": True}),
        (43 * H, "user:dave", "fix.run.ended", "session:s2",
         {"agent": "a", "session": "s2", "run": "r2", "exit_status": 0,
          "verify_passed": False, "output_ok": True}),  # verify failed: not a success
        (44 * H, "user:dave", "fix.run.refused", "session:s2", {"reason": "consent"}),
        (100 * H, "agent:a", "agent.health.alert", "agent:a", {"critical": ["late"]}),
    ])
    full = compute.report(engine, since=0, until=50 * H)
    m = compute.summary(full)["metrics"]
    assert m["incidents_opened"]["value"] == 3  # alert a, alert b, ticket T-1
    assert m["incidents_resolved"]["value"] == 3
    # a's cleared with nobody on it and no fix: on its own; b had s1.
    assert m["cleared_on_their_own"]["value"] == 1
    assert m["resolved_without_technician"]["value"] == 0  # no customer's fix
    assert m["resolved_first_session"]["value"] == 0  # T-1's first session: not_resolved
    # a: 2 h, b: 2 h, T-1: from 21 h to 41 h (s2 resolved it) = 20 h
    assert m["mttr_mean_s"]["value"] == round((2 * H + 2 * H + 20 * H) / 3, 3)
    assert m["mttr_median_s"]["value"] == 2 * H
    assert (m["fixes_run"]["value"], m["fixes_succeeded"]["value"]) == (2, 1)
    assert m["fix_success_rate"]["value"] == 0.5
    assert full["events_read"] == 15  # not the refusal, not the alert after until
    ticket = compute.members(full, "incidents_opened", "")
    assert ticket is not None
    t1 = next(i for i in ticket["incidents"] if i["id"] == "ticket:T-1")
    assert t1["sessions"] == ["s1", "s2"] and t1["group"] == "g2"  # its first session's
    top = {f["finding"]: f["value"] for f in compute.summary(full)["top_findings"]}
    assert top == {"disk-full": 2, "svc-down": 1}
    techs = {t["technician"]: t["value"] for t in compute.summary(full)["technicians"]}
    assert techs == {"alice": 1, "dave": 1}
    # One group: only its incidents, fixes and sessions.
    g1 = compute.summary(compute.report(engine, since=0, until=50 * H, group="g1"))
    assert g1["metrics"]["incidents_opened"]["value"] == 1
    assert g1["metrics"]["fixes_run"]["value"] == 2
    assert compute.members(full, "nope") is None


def self_fix(ended: float, agent: str, run: str, ok: bool = True, started: float | None = None,
             skew: float = 0.0) -> tuple[float, str, str, str, dict[str, Any]]:
    """A ``fix.self_service.ended`` recorded at ``ended`` + 60 s (the report came a minute
    later); the agent's own clock ``skew`` seconds off, which the relay took out."""
    started = ended - 30 if started is None else started
    return (ended + 60, f"agent:{agent}", "fix.self_service.ended", f"agent:{agent}",
            {"agent": agent, "run": run, "ok": ok, "exit_status": 0 if ok else 3,
             "started_at": started + skew, "ended_at": ended + skew, "clock_offset_s": -skew,
             "started_at_relay": started, "ended_at_relay": ended})


def test_without_a_technician_and_on_their_own(tmp_path: Path) -> None:
    alert = "agent.health.alert"
    cleared = "agent.health.cleared"
    engine = trail(tmp_path, [
        (0, "user:admin", "agent.enroll", "agent:a", {"group": "g1"}),
        (0, "user:admin", "agent.enroll", "agent:b", {"group": "g2"}),
        # 1. a: the customer's fix worked, reported a minute after it ended, from an
        # agent whose clock is a day behind: resolved without a technician.
        (1 * H, "agent:a", alert, "agent:a", {"critical": ["disk-full"]}),
        self_fix(2 * H, "a", "sr_1", skew=-86400),
        (2 * H + 1, "agent:a", cleared, "agent:a", {}),
        # 2. a: the customer's fix failed, then the alert cleared: on its own.
        (4 * H, "agent:a", alert, "agent:a", {"critical": ["disk-full"]}),
        self_fix(5 * H, "a", "sr_2", ok=False),
        (6 * H, "agent:a", cleared, "agent:a", {}),
        # 3. b: a fix that started before the alert is not its fix: on its own.
        self_fix(8 * H, "b", "sr_3", started=7 * H),
        (7.5 * H, "agent:b", alert, "agent:b", {"critical": ["svc-down"]}),
        (9 * H, "agent:b", cleared, "agent:b", {}),
        # 4. b: a session opened before the alert and still open while it cleared: a
        # technician was there (not "on its own", though no session *started* in it).
        opened(10 * H, "s1", "b"),
        (11 * H, "agent:b", alert, "agent:b", {"critical": ["svc-down"]}),
        (12 * H, "agent:b", cleared, "agent:b", {}),
        (13 * H, "user:alice", "session.end", "session:s1", {"reason": "technician"}),
        # 5. b: a session that ended before the alert does not touch it; the fix that
        # started in the episode and ended after the clear is its fix.
        (14 * H, "agent:b", alert, "agent:b", {"critical": ["svc-down"]}),
        self_fix(15 * H + 10, "b", "sr_4", started=15 * H - 10),
        (15 * H, "agent:b", cleared, "agent:b", {}),
    ])
    full = compute.report(engine, since=0, until=20 * H)
    m = compute.summary(full)["metrics"]
    assert m["incidents_resolved"]["value"] == 5
    got = compute.members(full, "resolved_without_technician")
    assert got is not None
    assert [i["agent"] for i in got["incidents"]] == ["a", "b"]  # 1 and 5
    assert [i["opened_at"] for i in got["incidents"]] == [1 * H, 14 * H]
    seqs = {e["seq"]: e for e in _rows(engine)}
    assert sorted(seqs[q]["details"]["run"] for q in got["events"]
                  if seqs[q]["action"] == "fix.self_service.ended") == ["sr_1", "sr_4"]
    own = compute.members(full, "cleared_on_their_own")
    assert own is not None
    assert [i["opened_at"] for i in own["incidents"]] == [4 * H, 7.5 * H]  # 2 and 3
    assert m["self_service_fixes_run"]["value"] == 4
    assert m["self_service_fixes_succeeded"]["value"] == 3
    # The technicians' numbers do not count the customers' runs.
    assert m["fixes_run"]["value"] == 0 and m["fix_success_rate"]["value"] is None
    # Per group: b's only.
    g2 = compute.summary(compute.report(engine, since=0, until=20 * H, group="g2"))
    assert g2["metrics"]["resolved_without_technician"]["value"] == 1
    assert g2["metrics"]["self_service_fixes_run"]["value"] == 2
    # A run is counted in the period its end (on the relay's clock) falls in.
    early = compute.summary(compute.report(engine, since=0, until=2 * H + 30))
    assert early["metrics"]["self_service_fixes_run"]["value"] == 0  # sr_1's row: 2 h 1 min
    late = compute.summary(compute.report(engine, since=2 * H + 30, until=20 * H))
    assert late["metrics"]["self_service_fixes_run"]["value"] == 3  # sr_1 ended before


def _rows(engine: sa.Engine) -> list[dict[str, Any]]:
    import json

    with engine.connect() as conn:
        return [{"seq": r.seq, "action": r.action, "details": json.loads(r.details)}
                for r in conn.execute(sa.text("select seq, action, details from audit_events"))]


def test_a_400_day_daily_report_with_an_unaligned_since_has_401_buckets(
        tmp_path: Path) -> None:
    """400 days from 12:00 touch 401 days: an incident in the last, partial one is
    counted in its bucket (it raised KeyError, a 500, when the buckets stopped at 400)."""
    since = 100 * compute.DAY + 12 * H
    until = since + 400 * compute.DAY
    last = until - H  # 11:00 on the 401st day
    engine = trail(tmp_path, [
        (since, "user:admin", "agent.enroll", "agent:a", {"group": "g1"}),
        (last - H, "agent:a", "agent.health.alert", "agent:a", {"critical": ["disk-full"]}),
        (last, "agent:a", "agent.health.cleared", "agent:a", {}),
    ])
    full = compute.summary(compute.report(engine, since=since, until=until, bucket="day"))
    trend = full["trend"]
    assert len(trend) == 401
    assert trend[0]["start"] == 100 * compute.DAY and trend[-1]["end"] == until + 12 * H
    assert trend[-1]["incidents_opened"]["value"] == 1
    assert trend[-1]["incidents_resolved"]["value"] == 1
    assert sum(b["incidents_opened"]["value"] for b in trend) == 1
    # Past the bound the API and the command line enforce: a clear error, not a KeyError.
    import pytest

    with pytest.raises(ValueError, match="at most 402 day buckets"):
        compute.report(engine, since=since, until=since + 402 * compute.DAY, bucket="day")
