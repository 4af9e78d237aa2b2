"""Acceptance 3 of issue 14, on real processes: a relay, two real agents in two groups,
technicians, health alerts raised and cleared by the agents' own health checks, support
sessions with tickets and outcomes, two approved fixes run through the SSH tunnel, over
three weeks. The test keeps its own record of what it did and when (``Record``), computes
every number of the report from that record, and compares: counts and members exactly,
times to resolve within the seconds each step took to happen.

Weeks pass on the relay's *trail clock* only (relay/reports/clock.py,
``BACKLINE_TEST_CLOCK_FILE``): the test moves it forward a day or a week between steps;
docs/reports.md says why that seam and not another.
"""

from __future__ import annotations

import csv
import io
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.harness import AgentProcess, Api, RelayProcess, admin_api, audit_actions, wait_for
from tests.integration.test_fix_relay import manifest_toml
from tests.integration.test_sessions import make_user, open_session, start_agent

DAY = 86400.0
POLICY = """
[capabilities]
info = "allow"
diagnostics = "allow"
fix = "allow"

[fix]
decision = "allow"
"""
WARNING = ("[diagnostics]\nhealth_interval_s = 1\n[thresholds]\ndisk_used_pct = 1\n"
           "disk_critical_pct = 100\nload_per_cpu = 1000\nmemory_used_pct = 101\n"
           "swap_used_pct = 101\n")
CRITICAL = WARNING.replace("disk_critical_pct = 100", "disk_critical_pct = 1")


@dataclass
class Window:
    """When something happened on the trail clock: after ``lo``, before ``hi``."""
    lo: float
    hi: float


@dataclass
class Incident:
    id: str
    group: str
    opened: Window
    resolved: Window | None = None
    sessions: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # of its sessions, in order
    kind: str = "ticket"
    touched: bool = False  # a technician's session on the agent during the episode


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    alice: Api
    dave: Api
    bob: Api
    a: AgentProcess  # group default
    b: AgentProcess  # group east
    clock: Path
    base: float  # the trail clock's day 0: a Monday, 12:00 UTC


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          initialised_relay: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("mreports")
    clock = root / "clock"
    # Day 0 on the trail clock: the next Monday 12:00 UTC at least a day ahead.
    now = time.time()
    monday = 4 * DAY + ((now - 4 * DAY) // (7 * DAY) + 1) * 7 * DAY + DAY / 2
    clock.write_text(str(monday - now))
    relay = RelayProcess(root, {"BACKLINE_TEST_CLOCK_FILE": str(clock)},
                         template=initialised_relay).start()
    # The seam is never quiet: the trail's start event says how far its clock is shifted.
    start = [e for e in audit_actions(relay) if e["action"] == "relay.start"][-1]
    assert start["details"]["clock_offset"] == pytest.approx(monday - now, abs=1)
    admin = admin_api(relay)
    assert admin.post("/api/v1/groups", json={"name": "east"}).status_code == 201
    alice = make_user(admin, relay, "alice", "technician", ("default", "east"))
    dave = make_user(admin, relay, "dave", "technician", ("default",))
    bob = make_user(admin, relay, "bob", "approver")
    agents: list[AgentProcess] = []
    try:
        for name, group in (("pc-a", "default"), ("pc-b", "east")):
            agent = AgentProcess(root, name)
            agent.state_dir.mkdir(parents=True, exist_ok=True)
            (agent.state_dir / "agent.toml").write_text(WARNING)
            agents.append(start_agent(root, relay, admin, name, policy=POLICY, group=group,
                                      agent=agent))
        yield World(root, relay, admin, alice, dave, bob, agents[0], agents[1], clock, monday)
    finally:
        for agent in agents:
            agent.stop()
        for api in (alice, dave, bob, admin):
            api.close()
        relay.stop()


class Record:
    """What the test did, on the trail clock."""

    def __init__(self, world: World) -> None:
        self.w = world
        self.incidents: dict[str, Incident] = {}
        self.sessions: dict[str, str] = {}  # session id -> technician
        self.session_group: dict[str, str] = {}
        self.session_opened: dict[str, Window] = {}
        self.fixes: list[tuple[float, str, bool]] = []  # (time, group, ok)

    def day(self, n: float) -> None:
        """Move the trail clock to day ``n`` (only ever forward)."""
        self.w.clock.write_text(str(self.w.base + n * DAY - time.time()))

    def now(self) -> float:
        return time.time() + float(self.w.clock.read_text())

    def _last(self, action: str, target: str) -> dict[str, Any] | None:
        page = self.w.admin.get("/api/v1/audit", params={"action": action, "target": target,
                                                          "limit": 1}).json()["events"]
        return page[0] if page else None

    def health(self, agent: AgentProcess, critical: bool) -> tuple[Window, int]:
        """Make the agent's own health check go critical (or clear); wait for the trail."""
        action = "agent.health.alert" if critical else "agent.health.cleared"
        target = f"agent:{agent.agent_id}"
        before = self._last(action, target)
        lo = self.now()
        (agent.state_dir / "agent.toml").write_text(CRITICAL if critical else WARNING)
        event = wait_for(lambda: (e := self._last(action, target)) and e != before and e,
                         30, f"{action} of {agent.name}")
        return Window(lo, self.now()), int(event["seq"])

    def session(self, api: Api, who: str, agent: AgentProcess, group: str, ticket: str,
                outcome: str, fix: str = "") -> tuple[str, Window, Window]:
        lo = self.now()
        s = open_session(api, agent.agent_id, reason="report test", ticket=ticket)
        opened = Window(lo, self.now())
        if fix:
            flo = self.now()
            r = api.post(f"/api/v1/sessions/{s['id']}/channels/fix", json={"fix": fix})
            assert r.status_code == 200, r.text
            ended = [x for x in r.json()["output"] if x.get("type") == "end"]
            assert ended, r.text
            ok = ended[0].get("exit_status") == 0
            self.fixes.append(((flo + self.now()) / 2, group, ok))
        assert api.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
        olo = self.now()
        r = api.post(f"/api/v1/sessions/{s['id']}/outcome", json={"outcome": outcome,
                                                                  "note": "seeded"})
        assert r.status_code == 200, r.text
        self.sessions[s["id"]] = who
        self.session_group[s["id"]] = group
        self.session_opened[s["id"]] = opened
        return s["id"], opened, Window(olo, self.now())

    def ticket(self, ticket: str, group: str, sid: str, opened: Window, outcome: str,
               decided: Window) -> None:
        inc = self.incidents.get(f"ticket:{ticket}")
        if inc is None:
            inc = self.incidents[f"ticket:{ticket}"] = Incident(f"ticket:{ticket}", group,
                                                                opened)
        inc.sessions.append(sid)
        inc.outcomes.append(outcome)
        if outcome == "resolved" and inc.resolved is None:
            inc.resolved = decided


def approve(world: World, text: str) -> str:
    from tests.integration.test_fix_relay_e2e import approve as approve_version

    r = world.alice.post("/api/v1/fixes", json={"manifest_toml": text})
    assert r.status_code == 201, r.text
    fix_id = r.json()["fix_id"] if "fix_id" in r.json() else r.json()["id"]
    assert approve_version(world.bob, fix_id, 1).status_code == 200
    return f"{fix_id}@1"


def expected(rec: Record, since: float, until: float, group: str = "") -> dict[str, Any]:
    """Every number of the report, from the test's own record."""
    incs = [i for i in rec.incidents.values() if not group or i.group == group]

    def within(w: Window | None) -> bool:
        return w is not None and since <= w.lo and w.hi < until

    opened = [i for i in incs if within(i.opened)]
    resolved = [i for i in incs if within(i.resolved)]
    lo = [i.resolved.lo - i.opened.hi for i in resolved if i.resolved]
    hi = [i.resolved.hi - i.opened.lo for i in resolved if i.resolved]
    fixes = [f for f in rec.fixes if since <= f[0] < until and (not group or f[1] == group)]
    sessions = {s for s, g in rec.session_group.items()
                if (not group or g == group) and within(rec.session_opened[s])}
    techs: dict[str, int] = {}
    for s in sessions:
        techs[rec.sessions[s]] = techs.get(rec.sessions[s], 0) + 1
    return {
        "opened": {i.id for i in opened}, "resolved": {i.id for i in resolved},
        "first": {i.id for i in resolved if i.outcomes[:1] == ["resolved"]},
        "alone": {i.id for i in resolved if i.kind == "alert" and not i.touched},
        "mttr_lo": statistics.fmean(lo) if lo else None,
        "mttr_hi": statistics.fmean(hi) if hi else None,
        "median_lo": statistics.median(lo) if lo else None,
        "median_hi": statistics.median(hi) if hi else None,
        "fixes": len(fixes), "fixes_ok": sum(1 for f in fixes if f[2]),
        "sessions": sessions, "techs": techs,
    }


def check(world: World, rec: Record, since: float, until: float, group: str = "") -> None:
    want = expected(rec, since, until, group)
    q = {"since": since, "until": until, "group": group}
    got = world.admin.get("/api/v1/management-reports", params=q)
    assert got.status_code == 200, got.text
    m = got.json()["metrics"]

    def members(metric: str, key: str = "") -> dict[str, Any]:
        r = world.admin.get("/api/v1/management-reports/members",
                            params={**q, "metric": metric, "key": key})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def ids(metric: str) -> set[str]:
        return {i["id"] for i in members(metric)["incidents"]}

    assert m["incidents_opened"]["value"] == len(want["opened"])
    assert ids("incidents_opened") == want["opened"]
    assert m["incidents_resolved"]["value"] == len(want["resolved"])
    assert ids("incidents_resolved") == want["resolved"]
    assert ids("resolved_first_session") == want["first"]
    assert m["resolved_first_session"]["value"] == len(want["first"])
    assert ids("resolved_without_technician") == want["alone"]
    assert m["resolved_without_technician"]["value"] == len(want["alone"])
    assert m["fixes_run"]["value"] == want["fixes"]
    assert m["fixes_succeeded"]["value"] == want["fixes_ok"]
    rate = m["fix_success_rate"]["value"]
    assert rate == (round(want["fixes_ok"] / want["fixes"], 4) if want["fixes"] else None)
    assert set(members("sessions")["sessions"]) == want["sessions"]
    assert {t["technician"]: t["value"] for t in got.json()["technicians"]} == want["techs"]
    mean, median = m["mttr_mean_s"]["value"], m["mttr_median_s"]["value"]
    if want["mttr_lo"] is None:
        assert mean is None and median is None
    else:
        assert want["mttr_lo"] - 0.01 <= mean <= want["mttr_hi"] + 0.01
        assert want["median_lo"] - 0.01 <= median <= want["median_hi"] + 0.01


def test_seeded_weeks_give_the_numbers_the_test_computes(world: World) -> None:
    started = time.monotonic()
    rec = Record(world)
    a, b = world.a, world.b
    good = approve(world, manifest_toml("rep-clean", script="echo cleaned"))
    bad = approve(world, manifest_toml("rep-fails", script="echo no; exit 3"))

    # Week 0. pc-a's disk goes critical (day 0); alice's session fixes it on day 1.
    rec.day(0)
    opened, alert_seq = rec.health(a, critical=True)
    i1 = Incident(f"alert:{a.agent_id}:{alert_seq}", "default", opened, kind="alert",
                  touched=True)
    rec.incidents[i1.id] = i1
    rec.day(1)
    s1, _, _ = rec.session(world.alice, "alice", a, "default", "", "resolved", fix=good)
    i1.sessions, i1.outcomes = [s1], ["resolved"]
    i1.resolved, _ = rec.health(a, critical=False)

    # Week 1. pc-b goes critical and clears by itself a day later: nobody touched it.
    rec.day(8)
    opened, alert_seq = rec.health(b, critical=True)
    i2 = Incident(f"alert:{b.agent_id}:{alert_seq}", "east", opened, kind="alert")
    rec.incidents[i2.id] = i2
    rec.day(9)
    i2.resolved, _ = rec.health(b, critical=False)
    # Ticket T-1: dave's first session does not resolve it.
    sid, o, d = rec.session(world.dave, "dave", a, "default", "T-1", "not_resolved")
    rec.ticket("T-1", "default", sid, o, "not_resolved", d)

    # Week 2. alice resolves T-1 a week later (a failing fix first); T-2 is escalated;
    # T-3 is resolved in its first session.
    rec.day(16)
    sid, o, d = rec.session(world.alice, "alice", a, "default", "T-1", "resolved", fix=bad)
    rec.ticket("T-1", "default", sid, o, "resolved", d)
    sid, o, d = rec.session(world.alice, "alice", b, "east", "T-2", "escalated")
    rec.ticket("T-2", "east", sid, o, "escalated", d)
    rec.day(17)
    sid, o, d = rec.session(world.dave, "dave", a, "default", "T-3", "resolved")
    rec.ticket("T-3", "default", sid, o, "resolved", d)
    end = rec.now() + 60

    since = world.base - DAY
    for group in ("", "default", "east"):
        check(world, rec, since, end, group)
    check(world, rec, world.base + 7 * DAY, end)  # a later period: week 0 is out of it
    check(world, rec, world.base + 2 * DAY, world.base + 16 * DAY)

    # The trend: one bucket per week; each incident in the week it opened.
    report = world.admin.get("/api/v1/management-reports",
                             params={"since": world.base, "until": world.base - DAY / 2 + 21 * DAY}
                             ).json()
    weeks = [t["incidents_opened"]["value"] for t in report["trend"]]
    assert [t["start"] for t in report["trend"]] == [world.base - DAY / 2 + k * 7 * DAY
                                                     for k in range(3)]
    assert weeks == [1, 2, 2]  # I1 | I2, T-1 | T-2, T-3
    assert [t["fixes_run"]["value"] for t in report["trend"]] == [1, 0, 1]
    findings = {f["finding"]: f["value"] for f in report["top_findings"]}
    assert findings == {"disk-full": 2}

    # CSV: the same numbers, audited.
    r = world.admin.get("/api/v1/management-reports/csv",
                        params={"since": since, "until": end})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = {(x["section"], x["name"], x["bucket_start_utc"]): x
            for x in csv.DictReader(io.StringIO(r.text))}
    assert rows[("metric", "incidents_opened", "")]["value"] == "5"
    assert rows[("metric", "fix_success_rate", "")]["value"] == "0.5"
    assert rows[("technician", "alice", "")]["sessions"] == "3"
    exported = world.admin.get("/api/v1/audit", params={"action": "report.exported"}).json()
    assert exported["events"] and exported["events"][0]["actor"] == "user:admin"
    assert time.monotonic() - started < 120


def test_report_queries_are_bounded_and_need_audit_read(world: World) -> None:
    api = world.admin
    for params in ({"since": "yesterday"}, {"since": 10, "until": 5},
                   {"since": 0, "until": 500 * DAY}, {"bucket": "month"},
                   {"group": "x" * 200}, {"group": "a;b"}):
        r = api.get("/api/v1/management-reports", params=params)
        assert r.status_code == 400, (params, r.text)
    r = api.get("/api/v1/management-reports/members", params={"metric": "nope"})
    assert r.status_code == 404, r.text
    assert api.get("/api/v1/management-reports/members",
                   params={"metric": "DROP TABLE"}).status_code == 400
    # A technician holds no audit:read.
    assert world.alice.get("/api/v1/management-reports").status_code == 403
    assert world.alice.get("/api/v1/management-reports/csv").status_code == 403
