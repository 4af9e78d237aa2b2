"""Acceptance 3 of issue 14, on real processes: a relay, two real agents in two groups,
technicians, health alerts raised and cleared by the agents' own health checks, support
sessions with tickets and outcomes, two approved fixes run through the SSH tunnel, over
three weeks. The test keeps its own record of what it did and when (``Record``), computes
every number of the report from that record, and compares: counts, members and times to
resolve exactly.

Weeks pass on the relay's *trail clock* only (relay/reports/clock.py,
``BACKLINE_TEST_CLOCK_FILE``): the test moves it forward a day or a week between steps;
docs/reports.md says why that seam and not another.

Besides technicians' sessions: a customer's own run of a kept fix (``backline-agent fix
run``, a real command beside the real agent, reported by it to the relay) clearing an
alert, a customer's fix that fails before the alert clears by itself, a session already
open when an alert came, and an attended session (``backline-agent join``). The times to
resolve are compared exactly: the test reads the trail's times of the events it caused
itself (the alert it raised, the clear it waited for, the outcome it set, each checked
to be in the step's window) and does the arithmetic; the trail clock jumps two hours
between a session's close and its outcome, so a report that took the wrong event's time
would be off by hours.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from backline.agent.exit_codes import EXIT_FIX_FAILED
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
    """One incident as the test made it. ``opened``/``resolved``: the trail's times of
    the events the test caused and picked out itself (the alert it raised, the clear it
    waited for, the outcome it set), each checked to lie in the window of the step."""
    id: str
    group: str
    opened: float
    resolved: float | None = None
    sessions: list[str] = field(default_factory=list)
    outcomes: list[str] = field(default_factory=list)  # of its sessions, in order
    kind: str = "ticket"
    touched: bool = False  # a technician's session on the agent open during the episode
    self_fixed: list[int] = field(default_factory=list)  # the customer's fixes that worked


@dataclass
class SelfFix:
    window: Window
    group: str
    ok: bool
    seq: int


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
    # The set-up happens in the hour before day 0, so that moving to day 0 is forward.
    clock.write_text(str(monday - 3600 - now))
    relay = RelayProcess(root, {"BACKLINE_TEST_CLOCK_FILE": str(clock)},
                         template=initialised_relay).start()
    # The seam is never quiet: the trail's start event says how far its clock is shifted.
    start = [e for e in audit_actions(relay) if e["action"] == "relay.start"][-1]
    assert start["details"]["clock_offset"] == pytest.approx(monday - 3600 - now, abs=1)
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
        self.session_opened: dict[str, float] = {}
        self.fixes: list[tuple[float, str, bool]] = []  # (time, group, ok)
        self.self_fixes: list[SelfFix] = []

    def day(self, n: float) -> None:
        """Move the trail clock to day ``n`` (only ever forward)."""
        assert self.w.base + n * DAY > self.now()
        self.w.clock.write_text(str(self.w.base + n * DAY - time.time()))

    def advance(self, seconds: float) -> None:
        self.w.clock.write_text(str(float(self.w.clock.read_text()) + seconds))

    def now(self) -> float:
        return time.time() + float(self.w.clock.read_text())

    def last(self, action: str, target: str) -> dict[str, Any] | None:
        """The newest event of exactly ``action`` (the API's filter is a prefix:
        ``session.join`` would find ``session.join.accepted``) on ``target``."""
        page = self.w.admin.get("/api/v1/audit", params={"action": action, "target": target,
                                                          "limit": 20}).json()["events"]
        return next((e for e in page if e["action"] == action), None)

    def seq_of_last(self, action: str, target: str) -> int:
        event = self.last(action, target)
        return int(event["seq"]) if event else 0

    def new_event(self, action: str, target: str, after: int, what: str) -> dict[str, Any]:
        """The newest ``action`` on ``target`` written after seq ``after`` (waited for)."""
        event: dict[str, Any] = wait_for(
            lambda: (e := self.last(action, target)) and e["seq"] > after and e, 30, what)
        return event

    def at(self, event: dict[str, Any], window: Window) -> float:
        """The event's trail time, which must lie in the step's window: the test picked
        out the right event."""
        assert window.lo <= event["time"] <= window.hi, (event, window)
        return float(event["time"])

    def health(self, agent: AgentProcess, critical: bool) -> dict[str, Any]:
        """Make the agent's own health check go critical (or clear); wait for the trail."""
        action = "agent.health.alert" if critical else "agent.health.cleared"
        target = f"agent:{agent.agent_id}"
        after = self.seq_of_last(action, target)
        lo = self.now()
        (agent.state_dir / "agent.toml").write_text(CRITICAL if critical else WARNING)
        event = self.new_event(action, target, after, f"{action} of {agent.name}")
        self.at(event, Window(lo, self.now()))
        return event

    def alert(self, agent: AgentProcess, group: str, **kw: Any) -> Incident:
        event = self.health(agent, critical=True)
        inc = Incident(f"alert:{agent.agent_id}:{event['seq']}", group, event["time"],
                       kind="alert", **kw)
        self.incidents[inc.id] = inc
        return inc

    def open(self, api: Api, who: str, agent: AgentProcess, group: str, ticket: str = "",
             fix: str = "") -> str:
        lo = self.now()
        s = open_session(api, agent.agent_id, reason="report test", ticket=ticket)
        event = self.last("session.open", f"session:{s['id']}")
        assert event is not None
        self.session_opened[s["id"]] = self.at(event, Window(lo, self.now()))
        self.sessions[s["id"]] = who
        self.session_group[s["id"]] = group
        if fix:
            flo = self.now()
            r = api.post(f"/api/v1/sessions/{s['id']}/channels/fix", json={"fix": fix})
            assert r.status_code == 200, r.text
            ended = [x for x in r.json()["output"] if x.get("type") == "end"]
            assert ended, r.text
            ok = ended[0].get("exit_status") == 0
            self.fixes.append(((flo + self.now()) / 2, group, ok))
        return str(s["id"])

    def close(self, api: Api, sid: str, outcome: str) -> float:
        """Close the session, then (two hours later on the trail clock: a report that
        took the close for the outcome's time would be two hours off) set its outcome;
        the outcome's trail time."""
        assert api.request("DELETE", f"/api/v1/sessions/{sid}").status_code == 200
        self.advance(2 * 3600)
        olo = self.now()
        r = api.post(f"/api/v1/sessions/{sid}/outcome", json={"outcome": outcome,
                                                              "note": "seeded"})
        assert r.status_code == 200, r.text
        event = self.last("session.outcome", f"session:{sid}")
        assert event is not None and event["details"]["outcome"] == outcome
        return self.at(event, Window(olo, self.now()))

    def session(self, api: Api, who: str, agent: AgentProcess, group: str, ticket: str,
                outcome: str, fix: str = "") -> tuple[str, float]:
        sid = self.open(api, who, agent, group, ticket, fix)
        return sid, self.close(api, sid, outcome)

    def ticket(self, ticket: str, group: str, sid: str, outcome: str, decided: float) -> None:
        inc = self.incidents.get(f"ticket:{ticket}")
        if inc is None:
            inc = self.incidents[f"ticket:{ticket}"] = Incident(
                f"ticket:{ticket}", group, self.session_opened[sid])
        inc.sessions.append(sid)
        inc.outcomes.append(outcome)
        if outcome == "resolved" and inc.resolved is None:
            inc.resolved = decided

    def self_service(self, agent: AgentProcess, group: str, fix: str, ok: bool) -> SelfFix:
        """The customer runs ``backline-agent fix run FIX`` on the agent's machine (a
        real command, beside the running agent); the agent reports it; the trail's
        ``fix.self_service.ended`` is waited for, by the run id the activity log gives."""
        target = f"agent:{agent.agent_id}"
        lo = self.now()
        done = agent.cmd("fix", "run", fix)
        assert done.returncode == (0 if ok else EXIT_FIX_FAILED), done.stderr
        activity = [json.loads(line) for line in
                    (agent.state_dir / "activity.jsonl").read_text().splitlines()]
        run_id = [e for e in activity if e["event"] == "fix.ended"][-1]["run_id"]
        event = wait_for(lambda: next((e for e in self.w.admin.get(
            "/api/v1/audit", params={"action": "fix.self_service.ended", "target": target,
                                     "limit": 5}).json()["events"]
            if e["details"]["run"] == run_id), None), 30, f"the report of {run_id}")
        window = Window(lo, self.now())
        d = event["details"]
        # The agent's clock is weeks behind the trail's: the relay put the run on its own.
        assert d["clock_offset_s"] == pytest.approx(float(self.w.clock.read_text()), abs=5)
        assert window.lo <= d["started_at_relay"] <= d["ended_at_relay"] <= window.hi, d
        assert d["ok"] is ok and d["fix"] == f"{fix}@1"
        found = SelfFix(window, group, ok, int(event["seq"]))
        self.self_fixes.append(found)
        return found


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

    def within(at: float | None) -> bool:
        return at is not None and since <= at < until

    def window_within(w: Window) -> bool:
        return since <= w.lo and w.hi < until

    opened = [i for i in incs if within(i.opened)]
    resolved = [i for i in incs if within(i.resolved)]
    durations = [i.resolved - i.opened for i in resolved if i.resolved is not None]
    fixes = [f for f in rec.fixes if since <= f[0] < until and (not group or f[1] == group)]
    self_fixes = [f for f in rec.self_fixes if window_within(f.window)
                  and (not group or f.group == group)]
    sessions = {s for s, g in rec.session_group.items()
                if (not group or g == group) and within(rec.session_opened[s])}
    techs: dict[str, int] = {}
    for s in sessions:
        techs[rec.sessions[s]] = techs.get(rec.sessions[s], 0) + 1
    untouched = [i for i in resolved if i.kind == "alert" and not i.touched]
    return {
        "opened": {i.id: i for i in opened}, "resolved": {i.id: i for i in resolved},
        "first": {i.id for i in resolved if i.outcomes[:1] == ["resolved"]},
        "alone": {i.id for i in untouched if i.self_fixed},
        "own": {i.id for i in untouched if not i.self_fixed},
        "mttr": round(statistics.fmean(durations), 3) if durations else None,
        "median": round(statistics.median(durations), 3) if durations else None,
        "fixes": len(fixes), "fixes_ok": sum(1 for f in fixes if f[2]),
        "self": {f.seq for f in self_fixes}, "self_ok": {f.seq for f in self_fixes if f.ok},
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
    assert ids("incidents_opened") == set(want["opened"])
    assert m["incidents_resolved"]["value"] == len(want["resolved"])
    listed = members("incidents_resolved")["incidents"]
    assert {i["id"] for i in listed} == set(want["resolved"])
    for i in listed:  # the times the report read are those of the events the test made
        mine = want["resolved"][i["id"]]
        assert (i["opened_at"], i["resolved_at"]) == (mine.opened, mine.resolved), i
    assert ids("resolved_first_session") == want["first"]
    assert m["resolved_first_session"]["value"] == len(want["first"])
    assert ids("resolved_without_technician") == want["alone"]
    assert m["resolved_without_technician"]["value"] == len(want["alone"])
    alone_events = set(members("resolved_without_technician")["events"])
    for i in want["alone"]:  # each links to the customer's fix that resolved it
        assert set(rec.incidents[i].self_fixed) <= alone_events
    assert ids("cleared_on_their_own") == want["own"]
    assert m["cleared_on_their_own"]["value"] == len(want["own"])
    assert m["fixes_run"]["value"] == want["fixes"]
    assert m["fixes_succeeded"]["value"] == want["fixes_ok"]
    rate = m["fix_success_rate"]["value"]
    assert rate == (round(want["fixes_ok"] / want["fixes"], 4) if want["fixes"] else None)
    assert set(members("self_service_fixes_run")["events"]) == want["self"]
    assert m["self_service_fixes_run"]["value"] == len(want["self"])
    assert set(members("self_service_fixes_succeeded")["events"]) == want["self_ok"]
    assert set(members("sessions")["sessions"]) == want["sessions"]
    assert {t["technician"]: t["value"] for t in got.json()["technicians"]} == want["techs"]
    # Exact: the same events' times, the same arithmetic (fsum: order does not matter).
    assert m["mttr_mean_s"]["value"] == want["mttr"]
    assert m["mttr_median_s"]["value"] == want["median"]


def heal_script(agent: AgentProcess) -> str:
    """A fix that really clears pc-a's critical alert: it puts back the agent's normal
    health thresholds (its next scheduled check, a second later, finds nothing)."""
    return (f"cat > {agent.state_dir / 'agent.toml'} <<'EOF'\n{WARNING}EOF\n"
            "echo healed\n")


def test_seeded_weeks_give_the_numbers_the_test_computes(world: World) -> None:
    started = time.monotonic()
    rec = Record(world)
    a, b = world.a, world.b
    heal = approve(world, manifest_toml("rep-heal", script=heal_script(a)))
    bad = approve(world, manifest_toml("rep-fails", script="echo no; exit 3"))
    target_a = f"agent:{a.agent_id}"

    # Week 0. pc-a's disk goes critical (day 0); on day 1 alice's session runs a fix that
    # clears it (and pc-a keeps the fix: its customer can run it later).
    rec.day(0)
    i1 = rec.alert(a, "default", touched=True)
    rec.day(1)
    before = rec.seq_of_last("agent.health.cleared", target_a)
    lo = rec.now()
    s1 = rec.open(world.alice, "alice", a, "default", fix=heal)
    i1.resolved = rec.at(rec.new_event("agent.health.cleared", target_a, before,
                                       "the clear the fix caused"), Window(lo, rec.now()))
    rec.close(world.alice, s1, "resolved")
    i1.sessions, i1.outcomes = [s1], ["resolved"]

    # Week 1. pc-b goes critical and clears by itself a day later: nobody touched it.
    rec.day(8)
    i2 = rec.alert(b, "east")
    rec.day(9)
    i2.resolved = rec.health(b, critical=False)["time"]
    # Ticket T-1: dave's first session does not resolve it.
    sid, d = rec.session(world.dave, "dave", a, "default", "T-1", "not_resolved")
    rec.ticket("T-1", "default", sid, "not_resolved", d)

    # Week 2. alice resolves T-1 a week later (a failing fix first); T-2 is escalated;
    # T-3 is resolved in its first session.
    rec.day(16)
    sid, d = rec.session(world.alice, "alice", a, "default", "T-1", "resolved", fix=bad)
    rec.ticket("T-1", "default", sid, "resolved", d)
    sid, d = rec.session(world.alice, "alice", b, "east", "T-2", "escalated")
    rec.ticket("T-2", "east", sid, "escalated", d)
    rec.day(17)
    sid, d = rec.session(world.dave, "dave", a, "default", "T-3", "resolved")
    rec.ticket("T-3", "default", sid, "resolved", d)

    # Week 3. pc-a goes critical again (day 21); on day 22 its customer runs the kept fix
    # themselves, which clears it: resolved without a technician.
    rec.day(21)
    i4 = rec.alert(a, "default")
    rec.day(22)
    before = rec.seq_of_last("agent.health.cleared", target_a)
    lo = rec.now()
    fixed = rec.self_service(a, "default", "rep-heal", ok=True)
    i4.self_fixed = [fixed.seq]
    i4.resolved = rec.at(rec.new_event("agent.health.cleared", target_a, before,
                                       "the clear the customer's fix caused"),
                         Window(lo, rec.now()))
    # Day 23: critical again; the customer's fix fails (exit 3); on day 24 it clears by
    # itself: a failed fix is no fix, so it cleared on its own.
    rec.day(23)
    i5 = rec.alert(a, "default")
    rec.advance(3600)
    rec.self_service(a, "default", "rep-fails", ok=False)
    rec.day(24)
    i5.resolved = rec.health(a, critical=False)["time"]
    # Day 25: alice's session on pc-b is open before pc-b goes critical and while it
    # clears: a technician was there, though no session started during the episode.
    rec.day(25)
    s6 = rec.open(world.alice, "alice", b, "east")
    rec.advance(600)
    i6 = rec.alert(b, "east", touched=True)
    rec.advance(600)
    i6.resolved = rec.health(b, critical=False)["time"]
    rec.close(world.alice, s6, "resolved")
    # Day 26: an attended session (no agent, so no group) for ticket T-4, resolved.
    rec.day(26)
    sid, d = attended(world, rec, "T-4")
    rec.ticket("T-4", "", sid, "resolved", d)
    end = rec.now() + 60

    since = world.base - DAY
    for group in ("", "default", "east"):
        check(world, rec, since, end, group)
    check(world, rec, world.base + 7 * DAY, end)  # a later period: week 0 is out of it
    check(world, rec, world.base + 2 * DAY, world.base + 16 * DAY)
    check(world, rec, world.base + 21 * DAY, world.base + 23 * DAY)  # the customer's fix
    assert {i.id for i in rec.incidents.values() if i.kind == "alert" and i.resolved
            and not i.touched and i.self_fixed} == {i4.id}
    assert {i.id for i in rec.incidents.values() if i.kind == "alert" and not i.touched
            and not i.self_fixed} == {i2.id, i5.id}

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
    want = expected(rec, since, end)
    assert rows[("metric", "incidents_opened", "")]["value"] == str(len(want["opened"])) == "9"
    assert rows[("metric", "fix_success_rate", "")]["value"] == "0.5"
    assert rows[("metric", "resolved_without_technician", "")]["value"] == "1"
    assert rows[("metric", "cleared_on_their_own", "")]["value"] == "2"
    assert rows[("metric", "self_service_fixes_run", "")]["value"] == "2"
    assert rows[("technician", "alice", "")]["sessions"] == "4"
    exported = world.admin.get("/api/v1/audit", params={"action": "report.exported"}).json()
    assert exported["events"] and exported["events"][0]["actor"] == "user:admin"
    assert time.monotonic() - started < 150


def attended(world: World, rec: Record, ticket: str) -> tuple[str, float]:
    """dave makes a code; the customer joins with ``backline-agent join`` and says yes;
    dave closes it, then sets its outcome. Its incident opens when the customer joined."""
    from tests.integration.test_join import JoinProcess, make_code

    lo = rec.now()
    code = make_code(world.dave, reason="report test", ticket=ticket)
    home = world.root / f"customer-{ticket}"
    home.mkdir()
    join = JoinProcess(code["command"], home)
    sid = code["session_id"]
    try:
        join.wait_for("Allow? [y/N]")
        join.answer("y")
        wait_for(lambda: world.dave.get(f"/api/v1/sessions/{sid}").json()["state"] == "ready",
                 20, "the attended session to be ready")
        joined = rec.last("session.join", f"session:{sid}")
        assert joined is not None
        rec.session_opened[sid] = rec.at(joined, Window(lo, rec.now()))
        rec.sessions[sid], rec.session_group[sid] = "dave", ""
        decided = rec.close(world.dave, sid, "resolved")
        assert join.wait() == 0, join.stderr()
    finally:
        join.kill()
    return sid, decided


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
