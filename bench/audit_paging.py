"""Audit paging at scale: does every page of a 1,000,000-event trail answer fast?

Builds a trail of N events (hash-chained, checkpointed, exactly as the relay
writes them), starts a real relay process on it, signs in, and times API pages
(client-side wall time over HTTPS keep-alive): the whole trail newest to oldest,
then filtered paging by actor, action prefix and time range, and jumps to random
depths. Goal: every kind's p95 under 200 ms on this machine.

    python -m bench.audit_paging [--events 1000000] [--limit 50]

Writes bench/results/audit_paging.json with ``events`` and ``page_p95_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from backline.relay import config
from backline.relay.state import open_relay
from bench import cpu_model
from tests.harness import Api, RelayProcess, admin_api

RESULTS = Path(__file__).parent / "results" / "audit_paging.json"
ACTIONS = ["agent.connect", "agent.disconnect", "auth.login", "auth.login.failed",
           "api_token.use", "agent.ping", "enroll_token.create", "agent.enroll",
           "request.refused", "group.grant"]


def build_trail(data_dir: Path, events: int) -> tuple[float, float, float]:
    """Write ``events`` events; return (build seconds, first time, last time)."""
    relay = open_relay(config.load(overrides={"data_dir": data_dir}, environ={}))
    rng = random.Random(7)
    started = time.perf_counter()
    first = time.time()
    batch = 20_000
    for done in range(0, events, batch):
        n = min(batch, events - done)
        relay.audit.append_many([
            (f"user:u{rng.randrange(1000)}", rng.choice(ACTIONS), f"agent:ag_{rng.randrange(5000)}",
             {"address": "127.0.0.1", "n": done + i}) for i in range(n)])
        if done and done % 200_000 == 0:
            print(f"  built {done:,} events…", flush=True)
    last = time.time()
    relay.engine.dispose()
    return time.perf_counter() - started, first, last


def timed(api: Api, params: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    r = api.get("/api/v1/audit", params=params)
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise SystemExit(f"page failed: {r.status_code} {r.text[:200]}")
    return ms, r.json()


def walk(api: Api, params: dict[str, Any], max_pages: int) -> list[float]:
    times, before = [], None
    for _ in range(max_pages):
        ms, page = timed(api, {**params, **({"before": before} if before else {})})
        times.append(ms)
        before = page["next_before"]
        if before is None:
            break
    return times


def pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2) \
        if len(values) > 1 else round(values[0], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--limit", type=int, default=50)
    ap.add_argument("--filtered-pages", type=int, default=200)
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="backline-audit-bench-"))
    print(f"building a trail of {args.events:,} events in {root}…", flush=True)
    build_s, first, last = build_trail(root / "relay", args.events)
    print(f"  built in {build_s:.1f} s", flush=True)
    relay = RelayProcess(root).start()
    rng = random.Random(11)
    try:
        api = admin_api(relay)
        kinds: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        kinds["all, newest to oldest"] = walk(api, {"limit": args.limit}, 10**9)
        print(f"  walked {len(kinds['all, newest to oldest']):,} pages in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        fp = args.filtered_pages
        kinds["by actor"] = walk(api, {"limit": args.limit, "actor": "user:u42"}, fp)
        kinds["by action prefix"] = walk(api, {"limit": args.limit, "action": "auth."}, fp)
        kinds["by rare action"] = walk(api, {"limit": args.limit, "action": "group.grant"}, fp)
        kinds["by target"] = walk(api, {"limit": args.limit, "target": "agent:ag_7"}, fp)
        span = last - first
        ranges = []
        for _ in range(fp):
            a = first + rng.random() * span
            ms, _ = timed(api, {"limit": args.limit, "since": a, "until": a + span / 50})
            ranges.append(ms)
        kinds["time range"] = ranges
        jumps = []
        for _ in range(fp):
            ms, _ = timed(api, {"limit": args.limit, "before": rng.randrange(2, args.events)})
            jumps.append(ms)
        kinds["random depth"] = jumps
        t0 = time.perf_counter()
        verify = api.get("/api/v1/audit/verify").json()
        verify_s = time.perf_counter() - t0
        api.close()
    finally:
        relay.stop()

    every = [ms for times in kinds.values() for ms in times]
    rows = {name: {"pages": len(t), "p50_ms": pct(t, 50), "p95_ms": pct(t, 95),
                   "max_ms": round(max(t), 2)} for name, t in kinds.items()}
    result = {
        "events": args.events, "page_size": args.limit, "page_p95_ms": pct(every, 95),
        "page_p50_ms": pct(every, 50), "pages": len(every), "kinds": rows,
        "build_s": round(build_s, 1), "verify_s": round(verify_s, 1),
        "verify_ok": verify.get("ok"),
        "machine": {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                    "python": platform.python_version(),
                    "platform": platform.platform()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\n{'kind':24} {'pages':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
    for name, r in rows.items():
        print(f"{name:24} {r['pages']:>7} {r['p50_ms']:>8} {r['p95_ms']:>8} {r['max_ms']:>8}")
    print(f"{'all kinds':24} {len(every):>7} {result['page_p50_ms']:>8} "
          f"{result['page_p95_ms']:>8}")
    print(f"verify of {args.events:,} events: {verify_s:.1f} s ({verify.get('summary')})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
