"""Management report at scale (issue 14, acceptance 5): one report over a trail of
1,000,000 audit events and 10,000 support sessions. Goal: ≤ 2 s to compute.

The data set is written straight into a relay database made by the relay's own
``open_relay`` (migrated schema, its audit key): rows are inserted in bulk with
``executemany``, each with a valid hash chain (``event_hash`` over the previous one,
exactly what ``AuditLog.append`` computes; ``audit verify`` passes) and a signed
checkpoint at the end. Bulk, because appending through ``AuditLog`` writes the current
time: the report needs a year of events, and a million appends take minutes.

The mix, spread over 365 days, oldest first: 2,000 agents enrolled in 10 groups;
10,000 sessions (open, start, two channels, end; 80 % with an outcome; 70 % ticketed,
about 1.5 sessions a ticket); 5,000 critical health-alert episodes (alert, cleared);
3,000 fix runs (requested, started, ended; 80 % ok); 2,000 self-service runs reported
by agents (80 % ok); the rest filler of the actions a
busy relay writes most (agent connect/disconnect, API token use, sign-ins, refusals).

    python -m bench.audit_review_report [--events 1000000] [--sessions 10000]

``measure(workdir)`` is called by bench/audit_review.py (timeline's) and returns at
least ``{"report_ms": ...}``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from backline.relay import config
from backline.relay.audit import GENESIS, canonical, event_hash
from backline.relay.reports import compute
from backline.relay.schema import audit_events, audit_head
from backline.relay.state import open_relay

DAY = 86400.0
GROUPS = [f"group-{i}" for i in range(10)]
FILLER = ["agent.connect", "agent.disconnect", "api_token.use", "auth.login",
          "request.refused", "agent.ping"]


def _events(total: int, sessions: int, rng: random.Random) -> list[tuple[str, str, str,
                                                                          dict[str, Any]]]:
    """The trail's events in order (times are given when written)."""
    agents = [f"ag_{i:05d}" for i in range(2000)]
    story: list[list[tuple[str, str, str, dict[str, Any]]]] = []
    for a in agents:
        story.append([("user:admin", "agent.enroll", f"agent:{a}",
                       {"group": rng.choice(GROUPS), "enroll_token": "et", "address": "::1",
                        "hostname": a, "os": "linux", "arch": "x86_64"})])
    tickets: list[str] = []
    for n in range(sessions):
        sid, agent = f"ss_{n:06d}", rng.choice(agents)
        if rng.random() < 0.7:
            if tickets and rng.random() < 0.33:
                ticket = rng.choice(tickets[-50:])
            else:
                ticket = f"T-{len(tickets)}"
                tickets.append(ticket)
        else:
            ticket = ""
        tech = f"user:tech{rng.randrange(40)}"
        s = [(tech, "session.open", f"session:{sid}",
              {"agent": agent, "mode": "managed", "reason": "bench", "ticket": ticket,
               "capabilities": ["info"], "address": "::1"}),
             (tech, "session.start", f"session:{sid}", {"agent": agent, "mode": "managed"}),
             (tech, "session.channel", f"session:{sid}", {"capability": "info"}),
             (tech, "session.channel", f"session:{sid}", {"capability": "diagnostics"}),
             (tech, "session.end", f"session:{sid}", {"reason": "technician"})]
        if rng.random() < 0.8:
            s.append((tech, "session.outcome", f"session:{sid}",
                      {"outcome": rng.choice(["resolved", "resolved", "not_resolved",
                                              "escalated"]), "note": "", "ticket": ticket,
                       "address": "::1"}))
        story.append(s)
    for _ in range(5000):
        a = rng.choice(agents)
        crit = rng.choice(["disk-full", "memory-exhausted", "service-down", "cert-expired"])
        story.append([(f"agent:{a}", "agent.health.alert", f"agent:{a}",
                       {"reason": "critical", "alerts": [crit], "critical": [crit]})])
        story.append([(f"agent:{a}", "agent.health.cleared", f"agent:{a}",
                       {"reason": "cleared", "cleared": [crit]})])
    for n in range(3000):
        a, run = rng.choice(agents), f"fr_{n:06d}"
        ok = rng.random() < 0.8
        common = {"digest": "sha256:x", "run": run, "session": f"ss_{rng.randrange(sessions):06d}",
                  "agent": a}
        story.append([("user:tech1", "fix.run.requested", "session:x",
                       {**common, "fix": "clean@1", "params": []}),
                      ("user:tech1", "fix.run.started", "session:x", common),
                      ("user:tech1", "fix.run.ended", "session:x",
                       {**common, "exit_status": 0 if ok else 1, "output_sha256": "0" * 64,
                        "kept_bytes": 1, "output_bytes": 1, "verify_passed": None,
                        "duration_ms": 5.0, "output_ok": True})])
    for n in range(2000):  # customers' own runs, as their agents report them
        a, ok = rng.choice(agents), rng.random() < 0.8
        story.append([(f"agent:{a}", "fix.self_service.ended", f"agent:{a}",
                       {"agent": a, "run": f"sr_{n:022d}", "fix": "clean@1",
                        "digest": "sha256:x", "exit_status": 0 if ok else 1,
                        "timed_out": False, "verify_passed": None, "ok": ok,
                        "output_sha256": "0" * 64, "clock_offset_s": 0.0,
                        "address": "::1"})])  # times: set when written (build)
    # Enrollments first, then the rest shuffled as stories (each story's own order kept).
    enrolls, rest = story[:len(agents)], story[len(agents):]
    rng.shuffle(rest)
    out = [e for s in enrolls for e in s]
    meaningful = sum(len(s) for s in rest)
    filler = max(0, total - len(out) - meaningful)
    per = filler / max(1, len(rest))
    owed = 0.0
    for s in rest:
        owed += per
        while owed >= 1:
            owed -= 1
            out.append((f"user:u{rng.randrange(500)}", rng.choice(FILLER),
                        f"agent:{rng.choice(agents)}", {"address": "::1"}))
        out.extend(s)
    while len(out) < total:
        out.append(("user:u1", "agent.ping", "agent:x", {"address": "::1"}))
    return out[:total]


def build(data_dir: Path, events: int = 1_000_000, sessions: int = 10_000,
          days: float = 365.0) -> tuple[Any, float, float, float]:
    """A relay database holding the data set; (relay, build seconds, first, last time)."""
    relay = open_relay(config.load(overrides={"data_dir": data_dir}, environ={}))
    rng = random.Random(14)
    started = time.perf_counter()
    items = _events(events, sessions, rng)
    first = time.time() - days * DAY
    step = days * DAY / len(items)
    with relay.engine.begin() as conn:
        head = conn.execute(sa.select(audit_head.c.seq, audit_head.c.hash)).first()
        seq, digest = (head.seq, head.hash) if head else (0, GENESIS)
        batch: list[dict[str, Any]] = []
        for i, (actor, action, target, details) in enumerate(items):
            seq += 1
            at = round(first + i * step, 6)
            if action == "fix.self_service.ended":  # it ran a minute before its report
                details = {**details, "started_at": at - 90, "ended_at": at - 60,
                           "started_at_relay": at - 90, "ended_at_relay": at - 60}
            text = canonical(details)
            prev, digest = digest, event_hash(seq, at, actor, action, target, text, digest)
            batch.append({"seq": seq, "time": at, "actor": actor, "action": action,
                          "target": target, "details": text, "prev_hash": prev,
                          "hash": digest})
            if len(batch) == 50_000:
                conn.execute(audit_events.insert(), batch)
                batch = []
        if batch:
            conn.execute(audit_events.insert(), batch)
        if head:
            conn.execute(audit_head.update().values(seq=seq, hash=digest))
        else:
            conn.execute(audit_head.insert().values(id=1, seq=seq, hash=digest))
    relay.audit.checkpoint()
    with relay.engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    return relay, time.perf_counter() - started, first, first + days * DAY


def measure(workdir: Path, events: int = 1_000_000, sessions: int = 10_000) -> dict[str, Any]:
    """Build the data set under ``workdir`` and time the reports (best of 3 each)."""
    relay, build_s, first, last = build(Path(workdir) / "report-relay", events, sessions)
    try:
        def best(**kw: Any) -> tuple[float, dict[str, Any]]:
            times, out = [], {}
            for _ in range(3):
                t0 = time.perf_counter()
                out = compute.report(relay.engine, **kw)
                compute.summary(out)  # what the API answers: counts of every member list
                times.append((time.perf_counter() - t0) * 1000)
            return round(min(times), 1), out

        year_ms, year = best(since=first, until=last + 1)
        group_ms, _ = best(since=last - 28 * DAY, until=last + 1, group=GROUPS[3])
        with relay.engine.connect() as conn:
            counted = conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar()
        return {
            "report_ms": year_ms,
            "report_group_28d_ms": group_ms,
            "events": counted,
            "sessions": sessions,
            "events_read": year["events_read"],
            "incidents_opened": year["metrics"]["incidents_opened"].value,
            "build_s": round(build_s, 1),
            "goal_ms": 2000,
        }
    finally:
        relay.engine.dispose()


def main() -> None:
    import os
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--sessions", type=int, default=10_000)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="backline-report-bench-"))
    print(f"building {args.events:,} events, {args.sessions:,} sessions in {root}…", flush=True)
    result = measure(root, args.events, args.sessions)
    result["load"] = os.getloadavg()
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
