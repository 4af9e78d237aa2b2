"""The management report, computed from the audit trail alone (docs/reports.md).

Only the actions in :data:`ACTIONS` are read, through the ``(action, seq)`` index, in one
query, oldest first; no mutable table is read (``support_sessions``, ``fix_runs`` and the
agents' rows can change; the trail cannot without ``audit verify`` saying so). An agent's
group is the one its ``agent.enroll`` event names.

Every number comes with its members: the incidents, sessions and event ``seq``s that
make it up (:func:`members`), so that the console links each figure to its evidence.
"""

from __future__ import annotations

import heapq
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from backline.relay.schema import audit_events

ACTIONS = (
    "agent.enroll", "agent.health.alert", "agent.health.cleared",
    "session.open", "session.code.create", "session.join", "session.outcome",
    "session.end", "session.open.failed",
    "fix.run.ended", "fix.run.failed", "fix.self_service.ended",
)
#: Actions whose details the report does not read (their time and target are enough):
#: not fetched, not parsed (a session's end is one row a session; parsing them was a
#: fifth of the report's time at 10,000 sessions).
NO_DETAILS = frozenset({"session.end", "session.open.failed"})
DAY = 86400.0
MAX_BUCKETS = 402  # 400 days, unaligned, in daily buckets: 401
WEEK = 7 * DAY
#: Monday 1970-01-05 00:00 UTC: weeks start on Mondays (ISO 8601), in UTC.
MONDAY = 4 * DAY


def _name(actor: str) -> str:
    """The username in an actor (``user:NAME``, ``token:ID(NAME)``)."""
    if actor.startswith("token:") and actor.endswith(")") and "(" in actor:
        return actor[actor.index("(") + 1:-1]
    return actor.split(":", 1)[1] if ":" in actor else actor


def _id(target: str, prefix: str) -> str:
    return target[len(prefix):] if target.startswith(prefix) else ""


@dataclass
class Session:
    id: str
    agent: str
    technician: str
    ticket: str
    at: float = 0.0
    seqs: list[int] = field(default_factory=list)
    started: bool = False  # a managed one opened, or an attended one joined
    outcome: str | None = None
    outcome_at: float | None = None
    ended_at: float | None = None  # its first session.end or session.open.failed

    def open_during(self, start: float, end: float) -> bool:
        """Open at some moment of ``[start, end]``: started by ``end``, not ended before
        ``start`` (a session already open when an alert came counts)."""
        return self.at <= end and (self.ended_at is None or self.ended_at >= start)


@dataclass
class Incident:
    id: str
    kind: str  # "alert" | "ticket"
    group: str
    opened_at: float
    agent: str = ""
    resolved_at: float | None = None
    sessions: list[Session] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    findings: set[str] = field(default_factory=set)
    #: Alert episodes: a session on the agent was open at some moment of it.
    touched: bool = False
    #: Alert episodes: the successful self-service runs (seq) that started during it.
    self_fixed: list[int] = field(default_factory=list)

    def first_session_resolved(self) -> bool:
        return bool(self.sessions) and self.sessions[0].outcome == "resolved"

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "group": self.group, "agent": self.agent,
                "opened_at": self.opened_at, "resolved_at": self.resolved_at,
                "sessions": [s.id for s in self.sessions], "events": sorted(self.seqs),
                "findings": sorted(self.findings)}


@dataclass
class Fix:
    seq: int
    at: float  # a technician's: the event's time; a self-service one: ended_at_relay
    agent: str
    session: str
    ok: bool
    run: str
    started_at: float = 0.0  # a self-service one: started_at_relay


def load(conn: sa.Connection, until: float) -> list[Any]:
    """The rows of :data:`ACTIONS` before ``until``, oldest first, as plain tuples.

    One query per action (``action = ?``, ordered by ``seq``: the ``(action, seq)`` index
    answers it in order), merged by ``seq``. One query with ``action IN (...)`` made
    SQLite scan the whole table in ``seq`` order instead (12 s at 1,000,000 events, of
    which 33,000 were wanted; bench/audit_review_report.py). Rows are fetched through the
    driver's own cursor: SQLAlchemy's result rows cost more per row than the rest of the
    report; the statement is still SQLAlchemy's, compiled for the connection's dialect."""
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    parts: list[list[Any]] = []
    try:
        for action in ACTIONS:
            details = (sa.null() if action in NO_DETAILS else audit_events.c.details)
            q = (sa.select(audit_events.c.seq, audit_events.c.time, audit_events.c.actor,
                           audit_events.c.action, audit_events.c.target, details)
                 .where(audit_events.c.action == action, audit_events.c.time < until)
                 .order_by(audit_events.c.seq))
            compiled = q.compile(dialect=conn.dialect)
            params: Any = compiled.params
            if compiled.positional:
                params = tuple(compiled.params[name] for name in compiled.positiontup or ())
            cursor.execute(compiled.string, params)
            parts.append(list(cursor.fetchall()))
    finally:
        cursor.close()
    return list(heapq.merge(*parts, key=lambda row: row[0]))


class Trail:
    """The trail's story up to ``until``: agents' groups, sessions, alert episodes,
    tickets and fix runs."""

    def __init__(self, rows: list[Any]) -> None:
        self.group_of: dict[str, str] = {}
        self.sessions: dict[str, Session] = {}
        self.fixes: list[Fix] = []
        self.self_service: list[Fix] = []
        self.episodes: list[Incident] = []
        self._open: dict[str, Incident] = {}
        for seq, at, actor, action, target, raw in rows:
            d = None if raw is None else json.loads(raw)
            getattr(self, "_" + action.replace(".", "_"))(seq, at, actor, target, d)

    # --- one handler per action --------------------------------------------------------

    def _agent_enroll(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        self.group_of[_id(target, "agent:")] = str(d.get("group", ""))

    def _agent_health_alert(self, seq: int, at: float, actor: str, target: str,
                            d: Any) -> None:
        agent = _id(target, "agent:")
        ep = self._open.get(agent)
        if ep is None:
            ep = Incident(f"alert:{agent}:{seq}", "alert", self.group_of.get(agent, ""), at,
                          agent=agent)
            self._open[agent] = ep
            self.episodes.append(ep)
        ep.seqs.append(seq)
        ep.findings.update(str(c) for c in d.get("critical", []) if isinstance(c, str))

    def _agent_health_cleared(self, seq: int, at: float, actor: str, target: str,
                              d: Any) -> None:
        ep = self._open.pop(_id(target, "agent:"), None)
        if ep is not None:
            ep.seqs.append(seq)
            ep.resolved_at = at

    def _session(self, target: str) -> Session | None:
        return self.sessions.get(_id(target, "session:"))

    def _session_open(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        s = Session(_id(target, "session:"), str(d.get("agent", "")), _name(actor),
                    str(d.get("ticket", "")).strip(), at, [seq], True)
        self.sessions[s.id] = s

    def _session_code_create(self, seq: int, at: float, actor: str, target: str,
                             d: Any) -> None:
        s = Session(_id(target, "session:"), "", _name(actor),
                    str(d.get("ticket", "")).strip(), at, [seq])
        self.sessions[s.id] = s

    def _session_join(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        s = self._session(target)
        if s is not None and not s.started:
            s.started, s.at = True, at
            s.seqs.append(seq)

    def _session_outcome(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        s = self._session(target)
        if s is not None:
            s.outcome, s.outcome_at = str(d.get("outcome")), at
            s.seqs.append(seq)

    def _session_end(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        s = self._session(target)
        if s is not None and s.ended_at is None:
            s.ended_at = at

    _session_open_failed = _session_end

    def _fix_self_service_ended(self, seq: int, at: float, actor: str, target: str,
                                d: Any) -> None:
        """The agent's claim (docs/fixes-relay.md), placed on the relay's clock; its
        ``ok`` is the relay's rule (relay/fixes/self_service.py ``succeeded``)."""
        ended, started = d.get("ended_at_relay"), d.get("started_at_relay")
        if not isinstance(ended, int | float) or not isinstance(started, int | float):
            return
        self.self_service.append(Fix(seq, float(ended), _id(target, "agent:"), "",
                                     d.get("ok") is True, str(d.get("run", "")),
                                     float(started)))

    def _fix_run_ended(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        ok = (d.get("exit_status") == 0 and d.get("verify_passed") is not False
              and d.get("output_ok") is True)
        self._fix(seq, at, d, ok)

    def _fix_run_failed(self, seq: int, at: float, actor: str, target: str, d: Any) -> None:
        self._fix(seq, at, d, False)

    def _fix(self, seq: int, at: float, d: Any, ok: bool) -> None:
        self.fixes.append(Fix(seq, at, str(d.get("agent", "")), str(d.get("session", "")),
                              ok, str(d.get("run", ""))))

    # --- incidents ---------------------------------------------------------------------

    def incidents(self) -> list[Incident]:
        """Alert episodes and tickets (docs/reports.md "Incidents")."""
        started = sorted((s for s in self.sessions.values() if s.started),
                         key=lambda s: (s.at, s.seqs[0]))
        tickets: dict[str, Incident] = {}
        for s in started:
            if not s.ticket:
                continue
            inc = tickets.get(s.ticket)
            if inc is None:
                inc = tickets[s.ticket] = Incident(f"ticket:{s.ticket}", "ticket",
                                                   self.group_of.get(s.agent, ""), s.at,
                                                   agent=s.agent)
            inc.sessions.append(s)
            inc.seqs.extend(s.seqs)
        for inc in tickets.values():
            done = [s.outcome_at for s in inc.sessions
                    if s.outcome == "resolved" and s.outcome_at is not None]
            inc.resolved_at = min(done) if done else None
        by_agent: dict[str, list[Session]] = {}
        for s in started:
            by_agent.setdefault(s.agent, []).append(s)
        ok_self: dict[str, list[Fix]] = {}
        for f in self.self_service:
            if f.ok:
                ok_self.setdefault(f.agent, []).append(f)
        for ep in self.episodes:
            end = ep.resolved_at if ep.resolved_at is not None else float("inf")
            mine = by_agent.get(ep.agent, [])
            ep.sessions = [s for s in mine if ep.opened_at <= s.at <= end and not s.ticket]
            ep.touched = any(s.open_during(ep.opened_at, end) for s in mine)
            ep.self_fixed = [f.seq for f in ok_self.get(ep.agent, [])
                             if ep.opened_at <= f.started_at <= end]
        return [*self.episodes, *tickets.values()]


def bucket_start(at: float, bucket: str) -> float:
    if bucket == "day":
        return (at // DAY) * DAY
    return MONDAY + ((at - MONDAY) // WEEK) * WEEK


class Members:
    """One number and what makes it up, kept as references: the lists are built only
    when asked (the drill-down, the CSV), the counts without sorting (the summary)."""

    __slots__ = ("extra_events", "extra_sessions", "incs", "value")

    def __init__(self, value: Any, incs: list[Incident], sessions: list[str],
                 events: list[int]) -> None:
        self.value, self.incs = value, incs
        self.extra_sessions, self.extra_events = sessions, events

    def _sessions(self) -> set[str]:
        return {s.id for i in self.incs for s in i.sessions} | set(self.extra_sessions)

    def _events(self) -> set[int]:
        return {e for i in self.incs for e in i.seqs} | set(self.extra_events)

    def counts(self) -> dict[str, Any]:
        return {"value": self.value, "incidents": len(self.incs),
                "sessions": len(self._sessions()), "events": len(self._events())}

    def lists(self) -> dict[str, Any]:
        return {"value": self.value, "incidents": [i.id for i in self.incs],
                "sessions": sorted(self._sessions()), "events": sorted(self._events())}


def _metric(value: Any, *, incidents: list[Incident] = (),  # type: ignore[assignment]
            sessions: list[str] = (), events: list[int] = ()) -> Members:  # type: ignore[assignment]
    return Members(value, list(incidents), list(sessions), list(events))


def _durations(incs: list[Incident]) -> list[float]:
    return [i.resolved_at - i.opened_at for i in incs if i.resolved_at is not None]


def report(engine: sa.Engine, *, since: float, until: float, group: str = "",
           bucket: str = "week", top: int = 10) -> dict[str, Any]:
    """The report for ``[since, until)`` (and ``group`` when not empty), with members."""
    started = time.perf_counter()
    with engine.connect() as conn:
        rows = load(conn, until)
    trail = Trail(rows)
    incidents = [i for i in trail.incidents() if not group or i.group == group]

    def within(at: float | None) -> bool:
        return at is not None and since <= at < until

    opened = [i for i in incidents if within(i.opened_at)]
    resolved = [i for i in incidents if within(i.resolved_at)]
    durations = _durations(resolved)
    first = [i for i in resolved if i.first_session_resolved()]
    untouched = [i for i in resolved if i.kind == "alert" and not i.touched]
    by_customer = [i for i in untouched if i.self_fixed]
    on_own = [i for i in untouched if not i.self_fixed]

    def mine(f: Fix) -> bool:
        return within(f.at) and (not group or trail.group_of.get(f.agent, "") == group)

    fixes = [f for f in trail.fixes if mine(f)]
    fixes_ok = [f for f in fixes if f.ok]
    self_runs = [f for f in trail.self_service if mine(f)]
    self_ok = [f for f in self_runs if f.ok]
    sessions = [s for s in trail.sessions.values() if s.started and within(s.at)
                and (not group or trail.group_of.get(s.agent, "") == group)]
    techs: dict[str, list[Session]] = {}
    for s in sessions:
        techs.setdefault(s.technician, []).append(s)
    findings: dict[str, list[Incident]] = {}
    for i in opened:
        for f in i.findings:
            findings.setdefault(f, []).append(i)
    metrics = {
        "incidents_opened": _metric(len(opened), incidents=opened),
        "incidents_resolved": _metric(len(resolved), incidents=resolved),
        "mttr_mean_s": _metric(round(statistics.fmean(durations), 3) if durations else None,
                               incidents=resolved),
        "mttr_median_s": _metric(round(statistics.median(durations), 3) if durations
                                 else None, incidents=resolved),
        "resolved_first_session": _metric(len(first), incidents=first),
        "resolved_without_technician": _metric(
            len(by_customer), incidents=by_customer,
            events=[seq for i in by_customer for seq in i.self_fixed]),
        "cleared_on_their_own": _metric(len(on_own), incidents=on_own),
        "fixes_run": _metric(len(fixes), sessions=[f.session for f in fixes if f.session],
                             events=[f.seq for f in fixes]),
        "fixes_succeeded": _metric(len(fixes_ok),
                                   sessions=[f.session for f in fixes_ok if f.session],
                                   events=[f.seq for f in fixes_ok]),
        "fix_success_rate": _metric(round(len(fixes_ok) / len(fixes), 4) if fixes else None,
                                    events=[f.seq for f in fixes]),
        "self_service_fixes_run": _metric(len(self_runs), events=[f.seq for f in self_runs]),
        "self_service_fixes_succeeded": _metric(len(self_ok),
                                                events=[f.seq for f in self_ok]),
        "sessions": _metric(len(sessions), sessions=[s.id for s in sessions],
                            events=[s.seqs[0] for s in sessions]),
    }
    per_tech = [{"technician": name, "m": _metric(len(ss), sessions=[s.id for s in ss],
                                                  events=[s.seqs[0] for s in ss])}
                for name, ss in sorted(techs.items(), key=lambda kv: (-len(kv[1]), kv[0]))]
    top_findings = [{"finding": name, "m": _metric(len(incs), incidents=incs)}
                    for name, incs in sorted(findings.items(),
                                             key=lambda kv: (-len(kv[1]), kv[0]))[:top]]
    buckets: dict[float, dict[str, list[Any]]] = {}
    start = bucket_start(since, bucket)
    step = DAY if bucket == "day" else WEEK
    b = start
    # One bucket for each day/week the period touches: an unaligned ``since`` makes a
    # partial first and last one (400 days: 401 daily buckets). Every member falls in
    # one of them, so the count is the period's, bounded by the caller (the API and the
    # command line allow 400 days), and checked here rather than silently cut short.
    while b < until:
        if len(buckets) >= MAX_BUCKETS:
            raise ValueError(f"a report has at most {MAX_BUCKETS} {bucket} buckets")
        buckets[b] = {"opened": [], "resolved": [], "fixes": [], "fixes_ok": []}
        b += step
    for i in opened:
        buckets[bucket_start(i.opened_at, bucket)]["opened"].append(i)
    for i in resolved:
        buckets[bucket_start(i.resolved_at or 0, bucket)]["resolved"].append(i)
    for f in fixes:
        buckets[bucket_start(f.at, bucket)]["fixes"].append(f)
        if f.ok:
            buckets[bucket_start(f.at, bucket)]["fixes_ok"].append(f)
    trend = []
    for b, got in buckets.items():
        d = _durations(got["resolved"])
        trend.append({
            "start": b, "end": b + step,
            "incidents_opened": _metric(len(got["opened"]), incidents=got["opened"]),
            "incidents_resolved": _metric(len(got["resolved"]), incidents=got["resolved"]),
            "mttr_mean_s": _metric(round(statistics.fmean(d), 3) if d else None,
                                   incidents=got["resolved"]),
            "fixes_run": _metric(len(got["fixes"]), events=[f.seq for f in got["fixes"]]),
            "fixes_succeeded": _metric(len(got["fixes_ok"]),
                                       events=[f.seq for f in got["fixes_ok"]]),
        })
    shown = {i.id: i for i in [*opened, *resolved]}
    return {
        "group": group, "since": since, "until": until, "bucket": bucket,
        "metrics": metrics, "technicians": per_tech, "top_findings": top_findings,
        "trend": trend, "incidents": shown,
        "events_read": len(rows),
        "compute_ms": round((time.perf_counter() - started) * 1000, 1),
    }


def _flat(full: dict[str, Any], how: str) -> dict[str, Any]:
    """The report with each :class:`Members` as counts (``how="counts"``) or lists."""

    def one(m: Members) -> dict[str, Any]:
        return m.counts() if how == "counts" else m.lists()

    return {**full,
            "metrics": {k: one(v) for k, v in full["metrics"].items()},
            "technicians": [{"technician": t["technician"], **one(t["m"])}
                            for t in full["technicians"]],
            "top_findings": [{"finding": t["finding"], **one(t["m"])}
                             for t in full["top_findings"]],
            "trend": [{k: (one(v) if isinstance(v, Members) else v) for k, v in t.items()}
                      for t in full["trend"]],
            "incidents": len(full["incidents"])}


def summary(full: dict[str, Any]) -> dict[str, Any]:
    """The report without its members' lists (counts of them instead): what the page
    shows; the members come from the drill-down (:func:`members`)."""
    return _flat(full, "counts")


def expanded(full: dict[str, Any]) -> dict[str, Any]:
    """The report with every member list (the CSV counts them)."""
    return _flat(full, "lists")


def members(full: dict[str, Any], metric: str, key: str = "") -> dict[str, Any] | None:
    """The members of one number: ``metric`` is a name in ``metrics``, or
    ``technician`` / ``finding`` with ``key`` its name, or ``trend.NAME`` with ``key``
    the bucket's start."""
    m: Members | None = None
    if metric in full["metrics"]:
        m = full["metrics"][metric]
    elif metric == "technician":
        m = next((t["m"] for t in full["technicians"] if t["technician"] == key), None)
    elif metric == "finding":
        m = next((t["m"] for t in full["top_findings"] if t["finding"] == key), None)
    elif metric.startswith("trend."):
        name = metric[len("trend."):]
        row = next((t for t in full["trend"] if str(int(t["start"])) == key), None)
        found = row.get(name) if row else None
        m = found if isinstance(found, Members) else None
    if m is None:
        return None
    listed = m.lists()
    incs = sorted(m.incs, key=lambda i: (i.opened_at, i.id))
    return {"metric": metric, "key": key, "value": m.value,
            "incidents": [i.public() for i in incs],
            "sessions": listed["sessions"], "events": listed["events"]}
