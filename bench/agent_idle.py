"""What an idle agent costs its customer's machine: memory and CPU while nobody is helped.

Starts a real relay and a real enrolled ``backline-agent run`` on loopback, waits until
it is online, lets it sit idle for ``--minutes`` (default 5: heartbeats, the scheduled
health check, nothing else), then reads its RSS and USS (psutil ``memory_full_info``)
and its CPU over those minutes: user + system time of the agent and of the children
it waited for (the health check runs in a child process), divided by the wall time.
It also asks the agent (its local control socket, ``status``) which capability
machinery it has loaded: none, while idle. Goal: RSS <= 35 MiB, CPU <= 0.5 %.

    python -m bench.agent_idle [--minutes 5 | --idle-seconds S] [--baseline-agent PATH]

``--baseline-agent`` runs a second agent binary (another checkout's
``.venv/bin/backline-agent``) next to this one over the same minutes, for a
before/after figure from one run on one machine.

Writes bench/results/agent_idle.json with ``rss_mib``, ``uss_mib``, ``cpu_pct``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from bench import cpu_model
from tests.harness import AgentProcess, RelayProcess, admin_api, wait_for

RESULTS = Path(__file__).parent / "results" / "agent_idle.json"
GOAL_RSS_MIB = 35.0
GOAL_CPU_PCT = 0.5
MIB = 1024 * 1024


class BaselineAgent(AgentProcess):
    """The same agent from another installation (``--baseline-agent``)."""

    def __init__(self, root: Path, name: str, binary: str) -> None:
        super().__init__(root, name)
        self.binary = binary

    def cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> BaselineAgent:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.binary, "--state-dir", str(self.state_dir), "run"],
                                     stdout=log, stderr=subprocess.STDOUT, text=True)
        return self


def cpu_seconds(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system + t.children_user + t.children_system)


def measure(proc: psutil.Process, cpu_start: float, wall_start: float) -> dict[str, Any]:
    mem = proc.memory_full_info()
    wall = time.monotonic() - wall_start
    anon = 0
    try:  # RssAnon: what is this process's own, not shared libraries' pages
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"rss_mib": round(mem.rss / MIB, 1), "uss_mib": round(mem.uss / MIB, 1),
            "anon_mib": round(anon / MIB, 1),
            "cpu_pct": round(100 * (cpu_seconds(proc) - cpu_start) / wall, 3),
            "idle_s": round(wall, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0,
                    help="how long the agent sits idle before it is measured (default 5)")
    ap.add_argument("--idle-seconds", type=float, default=None,
                    help="the idle time in seconds instead (quick runs; the committed "
                         "figures are from the 5 minutes)")
    ap.add_argument("--baseline-agent", default="",
                    help="another backline-agent binary to measure alongside")
    args = ap.parse_args()
    idle_s = args.idle_seconds if args.idle_seconds is not None else args.minutes * 60
    if idle_s <= 0:
        ap.error("the idle time must be positive")

    root = Path(tempfile.mkdtemp(prefix="backline-agent-idle-"))
    relay = RelayProcess(root, {"BACKLINE_LOG_LEVEL": "warning"}).start()
    agents: dict[str, AgentProcess] = {"this": AgentProcess(root, "idle-agent")}
    if args.baseline_agent:
        agents["baseline"] = BaselineAgent(root, "baseline-agent", args.baseline_agent)
    results: dict[str, dict[str, Any]] = {}
    try:
        api = admin_api(relay)
        for agent in agents.values():
            r = agent.enroll(relay.token())
            if r.returncode != 0:
                raise SystemExit(f"enrollment failed: {r.stderr}")
            agent.start()
        for agent in agents.values():
            wait_for(lambda a=agent: api.get(f"/api/v1/agents/{a.agent_id}").json()["online"],
                     30, f"{agent.name} online")
        procs = {k: psutil.Process(a.proc.pid) for k, a in agents.items() if a.proc}
        starts = {k: (cpu_seconds(p), time.monotonic()) for k, p in procs.items()}
        print(f"idle for {idle_s:g} s ...", flush=True)
        time.sleep(idle_s)
        for key, proc in procs.items():
            results[key] = measure(proc, *starts[key])
            if not api.get(f"/api/v1/agents/{agents[key].agent_id}").json()["online"]:
                raise SystemExit(f"{key} agent went offline while idle")
        try:
            from backline.agent.localcontrol import request

            results["this"]["loaded"] = request(agents["this"].state_dir,
                                                {"op": "status"})["loaded"]
        except Exception as exc:
            results["this"]["loaded"] = f"unknown ({exc})"
        api.close()
    finally:
        for agent in agents.values():
            agent.stop()
        relay.stop()

    this = results["this"]
    result: dict[str, Any] = {
        "minutes": round(idle_s / 60, 2), **{k: this[k] for k in ("rss_mib", "uss_mib", "anon_mib",
                                                          "cpu_pct", "idle_s", "loaded")},
        "goal": {"rss_mib": GOAL_RSS_MIB, "cpu_pct": GOAL_CPU_PCT,
                 "met": this["rss_mib"] <= GOAL_RSS_MIB and this["cpu_pct"] <= GOAL_CPU_PCT},
    }
    if "baseline" in results:
        result["baseline"] = {"agent": args.baseline_agent, **results["baseline"]}
    result["machine"] = {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                         "python": platform.python_version(), "platform": platform.platform()}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"\n{'agent':10} {'RSS MiB':>8} {'USS MiB':>8} {'anon MiB':>9} {'CPU %':>7}")
    for key, row in results.items():
        print(f"{key:10} {row['rss_mib']:>8} {row['uss_mib']:>8} {row['anon_mib']:>9} "
              f"{row['cpu_pct']:>7}")
    print(f"loaded machinery while idle: {this['loaded'] or 'none'}")
    print(f"goal RSS <= {GOAL_RSS_MIB:g} MiB, CPU <= {GOAL_CPU_PCT:g} %: "
          f"{'met' if result['goal']['met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
