"""Support-session latency: how long from "open" in the API to SSH ready, and what
running capabilities through the session costs.

Starts a real relay and a real enrolled agent on loopback, then, ``--runs`` times:
open a session (``POST /api/v1/agents/{id}/sessions``, which answers once SSH is
ready), run each measured phase through it, close it. Set-up is client-side wall
time of that POST: relay → control socket ``dial`` → agent opens the tunnel
WebSocket (TLS) → SSH handshake with certificate auth. Goal: set-up p95 ≤ 100 ms.

Phases are pluggable (:data:`PHASES`): ``info`` always runs; ``diagnostics`` runs when
the agent offers it (``agent/diagnostics``), streamed over the console's WebSocket so
the time to the first section is measured as well as the whole report.

    python -m bench.session [--runs 50]

Writes bench/results/session.json with ``setup_p50_ms``, ``setup_p95_ms`` and, when
diagnostics ran, ``diagnostics_p50_ms``, ``diagnostics_p95_ms`` and
``first_section_p50_ms`` (and p95).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from backline.common.tlspin import client_context
from bench import cpu_model
from tests.harness import AgentProcess, Api, RelayProcess, admin_api, wait_for

RESULTS = Path(__file__).parent / "results" / "session.json"
GOAL_SETUP_P95_MS = 100.0


@dataclass
class Context:
    relay: RelayProcess
    api: Api
    session_id: str


# A phase runs inside an open session and returns named timings in milliseconds,
# or None when the agent does not offer what it measures.
Phase = Callable[[Context], dict[str, float] | None]


def phase_info(ctx: Context) -> dict[str, float] | None:
    t0 = time.perf_counter()
    r = ctx.api.post(f"/api/v1/sessions/{ctx.session_id}/channels/info")
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200:
        raise SystemExit(f"info failed: {r.status_code} {r.text[:200]}")
    return {"info": ms}


def phase_diagnostics(ctx: Context) -> dict[str, float] | None:
    """Stream the diagnostics report; first section and whole report, client-side."""
    relay = ctx.relay
    url = (relay.url.replace("https", "wss")
           + f"/api/v1/sessions/{ctx.session_id}/stream/diagnostics")
    cookie = f"__Host-backline={ctx.api.http.cookies.get('__Host-backline')}"
    t0 = time.perf_counter()
    first_section: float | None = None
    with connect(url, ssl=client_context(), open_timeout=10, max_size=None,
                 additional_headers={"Origin": relay.url, "Cookie": cookie}) as ws:
        while True:
            msg = json.loads(ws.recv(60))
            if msg["type"] == "error":
                if msg["error"] in ("refused_by_agent", "not_in_session"):
                    return None  # this agent has no diagnostics
                raise SystemExit(f"diagnostics failed: {msg}")
            if msg["type"] == "exit":
                break
            if first_section is None and json.loads(msg["line"]).get("type") == "section":
                first_section = (time.perf_counter() - t0) * 1000
    total = (time.perf_counter() - t0) * 1000
    return {"diagnostics": total, "first_section": first_section or total}


PHASES: list[tuple[str, Phase]] = [("info", phase_info), ("diagnostics", phase_diagnostics)]


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return round(values[0], 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-diagnostics", action="store_true",
                    help="skip the diagnostics phase even when the agent offers it")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="backline-session-bench-"))
    relay = RelayProcess(root, {"BACKLINE_LOG_LEVEL": "warning"}).start()
    agent = AgentProcess(root, "bench-agent")
    setup: list[float] = []
    relay_setup: list[float] = []
    close_ms: list[float] = []
    timings: dict[str, list[float]] = {}
    skipped: set[str] = {"diagnostics"} if args.no_diagnostics else set()
    try:
        api = admin_api(relay)
        if agent.enroll(relay.token()).returncode != 0:
            raise SystemExit("enrollment failed")
        agent.start()
        wait_for(lambda: api.get(f"/api/v1/agents/{agent.agent_id}").json()["online"], 30,
                 "the agent online")
        for i in range(args.warmup + args.runs):
            t0 = time.perf_counter()
            r = api.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                         json={"reason": "benchmark", "ticket": f"B-{i}"})
            opened_ms = (time.perf_counter() - t0) * 1000
            if r.status_code != 201:
                raise SystemExit(f"open failed: {r.status_code} {r.text[:300]}")
            row = r.json()
            ctx = Context(relay, api, row["id"])
            measured = i >= args.warmup
            for name, phase in PHASES:
                if name in skipped:
                    continue
                result = phase(ctx)
                if result is None:
                    skipped.add(name)
                    print(f"  (the agent does not offer {name}: phase skipped)")
                    continue
                if measured:
                    for key, ms in result.items():
                        timings.setdefault(key, []).append(ms)
            t1 = time.perf_counter()
            closed = api.request("DELETE", f"/api/v1/sessions/{row['id']}")
            if closed.status_code != 200:
                raise SystemExit(f"close failed: {closed.text[:200]}")
            if measured:
                setup.append(opened_ms)
                relay_setup.append(row["setup_ms"])
                close_ms.append((time.perf_counter() - t1) * 1000)
        api.close()
    finally:
        agent.stop()
        relay.stop()

    result: dict[str, Any] = {
        "runs": len(setup),
        "setup_p50_ms": pct(setup, 50), "setup_p95_ms": pct(setup, 95),
        "setup_max_ms": round(max(setup), 2),
        "relay_setup_p50_ms": pct(relay_setup, 50), "relay_setup_p95_ms": pct(relay_setup, 95),
        "close_p50_ms": pct(close_ms, 50), "close_p95_ms": pct(close_ms, 95),
    }
    for key, values in timings.items():
        result[f"{key}_p50_ms"] = pct(values, 50)
        result[f"{key}_p95_ms"] = pct(values, 95)
    result["goal"] = {"setup_p95_ms": GOAL_SETUP_P95_MS,
                      "met": result["setup_p95_ms"] <= GOAL_SETUP_P95_MS}
    result["phases_skipped"] = sorted(skipped)
    result["machine"] = {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                         "python": platform.python_version(),
                         "platform": platform.platform()}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"\n{'metric':22} {'p50 ms':>8} {'p95 ms':>8}")
    names = ["setup", "relay_setup", "close", *timings]
    for name in names:
        print(f"{name:22} {result[f'{name}_p50_ms']:>8} {result[f'{name}_p95_ms']:>8}")
    print(f"set-up p95 goal ≤ {GOAL_SETUP_P95_MS:g} ms: "
          f"{'met' if result['goal']['met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
