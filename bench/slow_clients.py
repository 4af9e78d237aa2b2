"""Slow clients: does the relay keep serving while thousands of connections finish TLS
and then idle or trickle, with the process held to 1,024 descriptors?

One real ``backline-relay serve`` process on loopback, started with RLIMIT_NOFILE
1,024 (soft and hard) and short deadlines, and agents connected to it before the
attack: ``--real-agents`` real ``backline-agent run`` processes (enrolled with a token)
and the rest simulated in this process, speaking the real control protocol over TLS
(pinned certificate, Ed25519 challenge, heartbeats, the agent's backoff: the clients
of ``bench/idle_agents.py``), because fifty agent processes are too heavy for a
two-core machine shared with others. Then a separate attacker process opens
``--connections`` connections from several loopback source addresses
(127.0.1.x): each retries until it gets through TLS (a refused one is closed by the
relay at accept, before the handshake), then idles, trickles its request head, trickles
a declared body, or upgrades to a WebSocket and says nothing, and measures how long
the relay takes to close it. Meanwhile this process asks ``/healthz`` every 100 ms on
a fresh connection (as a monitor would: every probe faces the caps) and
``/readyz`` every second for ``agents_connected``.

Reports ``/healthz`` latency during the attack (p50, p99, max, failures; goal: p99 <
100 ms) and, for comparison, in the ``--baseline`` seconds before it; ``agents_kept``
(the fewest agents the relay saw connected during the attack and after it); how the
slow connections ended; the relay's descriptors before, at the peak and after, and its
CPU time during the attack; and the ``connection.refused`` / ``connection.timeout``
rows in the audit trail with the counts they carry.

    python -m bench.slow_clients [--connections 2000] [--agents 50] [--real-agents 5]

Writes bench/results/slow_clients.json. Everything talks to 127.0.0.1 (and 127.0.1.x
as source addresses) only, every loop is bounded, and the attacker stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import random
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "slow_clients.json"
GOAL_HEALTHZ_P99_MS = 100.0
KINDS = ("idle", "head", "body", "ws")
#: Deadlines for the attack (short, so that a run takes seconds, not minutes).
SETTINGS = {
    "BACKLINE_TLS_HANDSHAKE_TIMEOUT_S": "2",
    "BACKLINE_REQUEST_HEAD_TIMEOUT_S": "2",
    "BACKLINE_REQUEST_BODY_TIMEOUT_S": "2",
    "BACKLINE_KEEPALIVE_TIMEOUT_S": "2",
    "BACKLINE_WEBSOCKET_AUTH_TIMEOUT_S": "2",
    "BACKLINE_LOG_LEVEL": "warning",
}


# --- the attacker (a process of its own: its descriptors are not the prober's) ---------


async def _slow_one(i: int, spec: dict[str, Any], ctx: ssl.SSLContext,
                    results: list[dict[str, Any]]) -> None:
    """One slow connection: through TLS (retrying while refused), then slow, until
    the relay closes it or the attack's bound is reached."""
    kind = KINDS[i % len(KINDS)]
    source = spec["sources"][i % len(spec["sources"])]
    stop_at = spec["stop_at"]
    refused = 0
    while True:
        if time.time() > stop_at:
            results.append({"kind": kind, "admitted": False, "refused": refused})
            return
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", spec["port"], ssl=ctx, server_hostname="127.0.0.1",
                local_addr=(source, 0)), 30)
            break
        except (OSError, ssl.SSLError, TimeoutError):
            refused += 1
            await asyncio.sleep(spec["retry_s"] * random.uniform(0.5, 1.5))
    t0 = time.monotonic()
    trickle = spec["trickle_s"]

    async def slow() -> None:
        if kind == "head":
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            while True:
                await asyncio.sleep(trickle)
                writer.write(b"a")
        elif kind == "body":
            writer.write(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
            while True:
                await asyncio.sleep(trickle)
                writer.write(b" ")
        elif kind == "ws":
            path = b"/agent/connect" if i % 8 == 3 else b"/agent/enroll"
            writer.write(b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n")
        await asyncio.Event().wait()  # idle until cancelled

    sender = asyncio.create_task(slow())
    how = "held"
    try:
        async with asyncio.timeout(spec["hold_max_s"]):
            while await reader.read(4096):
                pass
        how = "eof"
    except TimeoutError:
        how = "held"
    except (OSError, ssl.SSLError):
        how = "reset"
    finally:
        sender.cancel()
        writer.transport.abort()
    results.append({"kind": kind, "admitted": True, "refused": refused, "how": how,
                    "closed_s": round(time.monotonic() - t0, 3)})


async def _attack(spec: dict[str, Any]) -> list[dict[str, Any]]:
    ctx = ssl.create_default_context(cafile=spec["cafile"])
    results: list[dict[str, Any]] = []
    tasks = []
    for i in range(spec["connections"]):
        tasks.append(asyncio.create_task(_slow_one(i, spec, ctx, results)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # open them over a fraction of a second
    await asyncio.gather(*tasks, return_exceptions=True)
    return results


def attacker_main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, spec["connections"] + 1024)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        import uvloop

        results = uvloop.run(_attack(spec))
    except ImportError:
        results = asyncio.run(_attack(spec))
    Path(spec["out"]).write_text(json.dumps(results))


# --- what the relay's users see during the attack --------------------------------------


@dataclass
class Probes:
    """``/healthz`` on a fresh connection every ``every`` s and ``/readyz`` every
    second, from a thread, until stopped."""

    port: int
    cafile: str
    every: float = 0.1
    healthz_ms: list[float] = field(default_factory=list)
    healthz_at: list[float] = field(default_factory=list)  # monotonic time of each probe
    failures: list[str] = field(default_factory=list)
    agents_seen: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _get(self, path: str) -> bytes:
        ctx = ssl.create_default_context(cafile=self.cafile)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=5, context=ctx)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise OSError(f"{path} answered {response.status}")
            return body
        finally:
            conn.close()

    def _run(self) -> None:
        next_ready = 0.0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                self._get("/healthz")
                self.healthz_ms.append((time.perf_counter() - t0) * 1000)
                self.healthz_at.append(time.monotonic())
            except (OSError, http.client.HTTPException) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
            if time.monotonic() >= next_ready:
                next_ready = time.monotonic() + 1.0
                try:
                    self.agents_seen.append(int(json.loads(
                        self._get("/readyz"))["agents_connected"]))
                except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                    self.failures.append(f"readyz {type(exc).__name__}: {exc}"[:200])
            self._stop.wait(max(0.0, self.every - (time.perf_counter() - t0)))

    def start(self) -> Probes:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


class SimulatedAgents:
    """Agents speaking the real control protocol (bench/idle_agents.py's clients) on a
    loop in a thread of this process."""

    def __init__(self, url: str, fingerprint: str, creds: list[tuple[str, bytes]]) -> None:
        from bench.idle_agents import ClientStats

        self.url, self.fingerprint, self.creds = url, fingerprint, creds
        self.stats = ClientStats()
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from bench.idle_agents import _agent

        async def main() -> None:
            self._stop = asyncio.Event()
            ramp = asyncio.Semaphore(16)
            await asyncio.gather(*(
                _agent(agent_id, Ed25519PrivateKey.from_private_bytes(raw), self.url,
                       self.fingerprint, ramp, self._stop, self.stats)
                for agent_id, raw in self.creds))

        self.loop.run_until_complete(main())

    def start(self) -> SimulatedAgents:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


# --- one run ---------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 2)


def run(root: Path, *, connections: int = 2000, agents: int = 50, real_agents: int = 5,
        engine: str = "socket", nofile: int = 1024, sources: int = 8,
        trickle_s: float = 0.5, retry_s: float = 0.5, attack_max_s: float = 60.0,
        baseline_s: float = 0.0, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    """The whole experiment; returns what was seen (the test asserts on it)."""
    from bench.idle_agents import enroll
    from tests.harness import AgentProcess, RelayProcess, audit_actions, wait_for

    simulated = max(0, agents - real_agents)
    relay = RelayProcess(root, {**SETTINGS, "BACKLINE_TLS_ENGINE": engine,
                                **(extra_env or {})}, nofile=nofile)
    fingerprint, creds = enroll(relay.data_dir, simulated)
    relay.start()
    cafile = str(relay.data_dir / "tls.crt")
    real = [AgentProcess(root, f"real-{i}") for i in range(real_agents)]
    sim: SimulatedAgents | None = None
    probes: Probes | None = None
    out: dict[str, Any] = {"connections": connections, "agents": agents,
                           "real_agents": real_agents, "simulated_agents": simulated,
                           "tls_engine": engine, "nofile": nofile,
                           "sources": sources, "settings": SETTINGS | (extra_env or {})}
    try:
        if real:
            token = relay.token("--uses", str(len(real)), "--ttl", "10m")
            threads = [threading.Thread(target=a.enroll, args=(token,)) for a in real]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            for a in real:
                a.start()
        sim = SimulatedAgents(relay.url.replace("https://", "wss://") + "/agent/connect",
                              fingerprint, creds).start()
        ready = Probes(relay.port, cafile)

        def all_connected() -> bool:
            try:
                return int(json.loads(ready._get("/readyz"))["agents_connected"]) >= agents
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                return False

        wait_for(all_connected, 60, f"{agents} agents connected")
        time.sleep(1.0)
        out["fds_before"] = relay.fds()
        if baseline_s > 0:  # the same probes with nothing else going on, for comparison
            quiet = Probes(relay.port, cafile).start()
            time.sleep(baseline_s)
            quiet.stop()
            out["healthz_baseline"] = {"probes": len(quiet.healthz_ms),
                                       "failures": len(quiet.failures),
                                       "p50_ms": pct(quiet.healthz_ms, 50),
                                       "p99_ms": pct(quiet.healthz_ms, 99),
                                       "max_ms": round(max(quiet.healthz_ms), 2)
                                       if quiet.healthz_ms else None}
        spec = {"port": relay.port, "cafile": cafile, "connections": connections,
                "sources": [f"127.0.1.{i + 1}" for i in range(sources)],
                "trickle_s": trickle_s, "retry_s": retry_s,
                "hold_max_s": attack_max_s, "stop_at": time.time() + attack_max_s,
                "out": str(root / "attack.json")}
        (root / "attack-spec.json").write_text(json.dumps(spec))
        probes = Probes(relay.port, cafile).start()
        t0 = time.monotonic()
        relay_cpu = _cpu_seconds(relay.proc.pid) if relay.proc is not None else 0.0
        attacker = subprocess.Popen([sys.executable, "-m", "bench.slow_clients",
                                     "--attacker", str(root / "attack-spec.json")],
                                    cwd=Path(__file__).parent.parent)
        peak = 0
        while attacker.poll() is None and time.monotonic() - t0 < attack_max_s * 2 + 30:
            peak = max(peak, relay.fds())
            time.sleep(0.2)
        if attacker.poll() is None:
            attacker.kill()
        attacker.wait(10)
        out["attack_s"] = round(time.monotonic() - t0, 1)
        probes.stop()
        if relay.proc is not None:
            out["relay_cpu_s"] = round(_cpu_seconds(relay.proc.pid) - relay_cpu, 2)
        out["fds_peak"] = peak
        results: list[dict[str, Any]] = json.loads((root / "attack.json").read_text())
        out["slow"] = summarise(results)
        # Once the attack is over: the relay's descriptors back to where they were.
        back = None
        with_margin = out["fds_before"] + 5
        try:
            wait_for(lambda: relay.fds() <= with_margin, 20, "descriptors back")
        except AssertionError:
            back = False
        out["fds_after"] = relay.fds()
        out["fds_back"] = back is None
        out["agents_after"] = int(json.loads(Probes(relay.port, cafile)._get("/readyz"))
                                  ["agents_connected"])
        out["real_agents_running"] = sum(1 for a in real
                                         if a.proc is not None and a.proc.poll() is None)
        out["healthz"] = {"probes": len(probes.healthz_ms), "failures": len(probes.failures),
                          "failure_samples": probes.failures[:5],
                          "p50_ms": pct(probes.healthz_ms, 50),
                          "p99_ms": pct(probes.healthz_ms, 99),
                          "max_ms": round(max(probes.healthz_ms), 2)
                          if probes.healthz_ms else None,
                          # The slowest probes and when (s into the attack) they started.
                          "slowest": sorted(
                              ((round(ms, 1), round(at - ms / 1000 - t0, 2))
                               for ms, at in zip(probes.healthz_ms, probes.healthz_at,
                                                 strict=True)), reverse=True)[:5]}
        out["healthz_p99_ms"] = out["healthz"]["p99_ms"]
        seen = [*probes.agents_seen, out["agents_after"]]
        out["agents_seen_min"] = min(seen)
        out["agents_kept"] = min(seen)
        out["metrics"] = connection_metrics(Probes(relay.port, cafile)._get("/metrics"))
    finally:
        if probes is not None:
            probes.stop()
        if sim is not None:
            sim.stop()
        for a in real:
            a.stop()
        relay.stop()
    rows = [e for e in audit_actions(relay)
            if e.get("action") in ("connection.refused", "connection.timeout")]
    out["audit"] = audit_summary(rows)
    return out


def _cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """How the attacker's connections ended, by kind."""
    out: dict[str, Any] = {"total": len(results),
                           "admitted": sum(1 for r in results if r["admitted"]),
                           "never_admitted": sum(1 for r in results if not r["admitted"]),
                           "refusals_seen": sum(r["refused"] for r in results),
                           "held": sum(1 for r in results if r.get("how") == "held"),
                           "by_kind": {}}
    for kind in KINDS:
        closed = [r["closed_s"] for r in results if r["admitted"] and r["kind"] == kind]
        out["by_kind"][kind] = {
            "admitted": len(closed),
            "closed_p50_s": round(statistics.median(closed), 2) if closed else None,
            "closed_max_s": round(max(closed), 2) if closed else None,
            "how": {h: sum(1 for r in results if r["kind"] == kind and r.get("how") == h)
                    for h in ("eof", "reset", "held")}}
    return out


def connection_metrics(text: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.decode().splitlines():
        if line.startswith(("backline_connections_refused_total",
                            "backline_connections_timed_out_total",
                            "backline_connections_unauthenticated ")):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def audit_summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for action in ("connection.refused", "connection.timeout"):
        mine = [r for r in rows if r["action"] == action]
        details = [r.get("details") or {} for r in mine]
        out[action] = {"rows": len(mine),
                       "aggregated_rows": sum(1 for d in details if d.get("aggregated")),
                       "events": sum(int(d.get("count", 1)) if d.get("aggregated") else 1
                                     for d in details)}
    return out


def machine() -> dict[str, Any]:
    from bench import cpu_model

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
            "python": platform.python_version(), "platform": platform.platform(),
            "openssl": ssl.OPENSSL_VERSION}


def print_table(r: dict[str, Any]) -> None:
    h = r["healthz"]
    print(f"\nslow connections: {r['connections']} from {r['sources']} addresses, "
          f"relay at RLIMIT_NOFILE {r['nofile']}, tls_engine {r['tls_engine']}")
    print(f"{'kind':6} {'admitted':>9} {'closed p50 s':>13} {'closed max s':>13} "
          f"{'eof':>5} {'reset':>6} {'held':>5}")
    for kind, k in r["slow"]["by_kind"].items():
        print(f"{kind:6} {k['admitted']:>9} {k['closed_p50_s']!s:>13} "
              f"{k['closed_max_s']!s:>13} {k['how']['eof']:>5} {k['how']['reset']:>6} "
              f"{k['how']['held']:>5}")
    print(f"refusals seen by the attacker: {r['slow']['refusals_seen']}; "
          f"never admitted: {r['slow']['never_admitted']}")
    print(f"/healthz during the attack: {h['probes']} probes, {h['failures']} failed, "
          f"p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms "
          f"(goal p99 < {GOAL_HEALTHZ_P99_MS:g} ms)")
    b = r.get("healthz_baseline")
    if b:
        print(f"/healthz before the attack: {b['probes']} probes, {b['failures']} failed, "
              f"p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, max {b['max_ms']} ms")
    print(f"slowest probes (ms, s into the attack): {h['slowest']}")
    print(f"relay CPU during the attack: {r.get('relay_cpu_s')} s in {r['attack_s']} s")
    print(f"agents kept: {r['agents_kept']} of {r['agents']} "
          f"({r['real_agents']} real processes)")
    print(f"relay descriptors: {r['fds_before']} before, {r['fds_peak']} at the peak, "
          f"{r['fds_after']} after")
    for action, a in r["audit"].items():
        print(f"audit {action}: {a['rows']} rows ({a['aggregated_rows']} aggregated) "
              f"for {a['events']} events")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--agents", type=int, default=50)
    ap.add_argument("--real-agents", type=int, default=5,
                    help="how many of --agents are real backline-agent processes")
    ap.add_argument("--tls-engine", default="socket", choices=["socket", "loop"])
    ap.add_argument("--sources", type=int, default=8,
                    help="loopback source addresses the attacker uses (127.0.1.x)")
    ap.add_argument("--baseline", type=float, default=10.0,
                    help="seconds of /healthz probes before the attack, for comparison")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--attacker", help=argparse.SUPPRESS)  # internal: the attacker process
    args = ap.parse_args()
    if args.attacker:
        attacker_main(args.attacker)
        return
    root = Path(tempfile.mkdtemp(prefix="backline-slow-clients-"))
    try:
        r = run(root, connections=args.connections, agents=args.agents,
                real_agents=args.real_agents, engine=args.tls_engine,
                sources=args.sources, baseline_s=args.baseline)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    r["goal"] = {"healthz_p99_ms": GOAL_HEALTHZ_P99_MS,
                 "met": r["healthz_p99_ms"] is not None
                 and r["healthz_p99_ms"] < GOAL_HEALTHZ_P99_MS
                 and r["agents_kept"] == r["agents"]}
    r["machine"] = machine()
    r["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r["command"] = " ".join(["python -m bench.slow_clients", *sys.argv[1:]])
    print_table(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
