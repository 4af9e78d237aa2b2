"""Idle agents: what does one relay process pay to hold N quiet control sockets?

N simulated agents speak the real control protocol over TLS (pinned certificate,
Ed25519 challenge, 30 s heartbeats), many per client process, to one real
``backline-relay serve`` process on loopback. For each N the benchmark reports:

- relay memory per agent: (RSS with N agents connected and idle - RSS before the
  first agent) / N, measured after the steady-state window (USS and PSS too);
- relay CPU at steady state, as a percentage of one core, over ``--steady-seconds``
  while every agent heartbeats every 30 s (first beat jittered, so they are spread)
  and asks for an answer as the real agent does (every fourth heartbeat when idle,
  :class:`backline.common.protocol.HeartbeatClock`), after a warm-up of four
  heartbeats; the relay's own counts of messages in and out are reported with it;
- the time for all N to be back after the relay is killed (SIGKILL) and started
  again at once on the same data directory: from the kill until the last agent has
  re-completed the handshake. Agents reconnect with the real agent's backoff
  (:class:`backline.agent.control.Backoff`, full jitter).

Goal: 10,000 agents at <= 40 KiB relay RSS each, < 5 % of one core at steady state,
all back within 60 s of a restart.

    python -m bench.idle_agents [--agents 1000,10000] [--steady-seconds 120] [--clients 4]

Agents are enrolled by writing their rows straight into the relay's database with
the relay's own code (enrollment is not what is measured). ``--loop`` sets the
relay's ``event_loop``; ``--variant`` runs the relay through this module with one of
the experimental changes to its uvicorn settings listed in ``--help`` (the default
runs the real ``backline-relay serve``), which is how the choices in
docs/benchmarks.md were compared. Writes
bench/results/idle_agents.json: a list of runs with ``agents``,
``rss_per_agent_kib``, ``cpu_pct_steady`` and ``reconnect_s`` among other fields.
Everything talks to 127.0.0.1 only, every wait is bounded, and the client
processes stop by themselves if this process goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import http.client
import importlib.metadata
import json
import multiprocessing as mp
import os
import platform
import queue
import random
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed, WebSocketException

from backline.agent.control import Backoff
from backline.agent.link import RelayUnreachable, open_pinned
from backline.common import __version__, keys, protocol
from backline.common.protocol import ProtocolError
from backline.common.tlspin import PinMismatch, client_context

RESULTS = Path(__file__).parent / "results" / "idle_agents.json"
GOAL = {"agents": 10_000, "rss_per_agent_kib": 40.0, "cpu_pct_steady": 5.0, "reconnect_s": 60.0}
RELAY_BIN = Path(sys.executable).parent / "backline-relay"
# What a real agent puts in a heartbeat (agent/facts.py), with fixed numbers.
HB_STATS = {"cpu_pct": 3.5, "mem_pct": 41.2}
KIB = 1024


# --- the relay process -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raise_nofile(want: int) -> int:
    """Raise RLIMIT_NOFILE (the hard limit too, when allowed); return the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    except OSError:
        ceiling = hard
    target = min(max(want, soft), ceiling)
    for new in ((target, max(hard, target)), (min(target, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, new)
            return new[0]
        except (ValueError, OSError):
            continue
    return soft


def enroll(data_dir: Path, n: int) -> tuple[str, list[tuple[str, bytes]]]:
    """Create the relay's data directory and ``n`` agents; return (fingerprint, creds)."""
    from backline.relay import agents, config, users
    from backline.relay.db import writing
    from backline.relay.state import open_relay

    relay = open_relay(config.load(overrides={"data_dir": data_dir}, environ={}))
    gid = users.group_id(relay.engine, "default", create=True)
    assert gid is not None
    creds = []
    info = {"hostname": "bench", "os": "Linux", "os_version": "bench", "arch": "x86_64",
            "version": __version__}
    with writing(relay.engine) as conn:
        for i in range(n):
            key = keys.generate()
            agent_id = agents.register(conn, gid, keys.public_raw(key),
                                       {**info, "hostname": f"bench-{i:05d}"},
                                       "bench", "127.0.0.1")
            raw = key.private_bytes(serialization.Encoding.Raw,
                                    serialization.PrivateFormat.Raw,
                                    serialization.NoEncryption())
            creds.append((agent_id, raw))
    fingerprint = relay.fingerprint
    relay.engine.dispose()
    return fingerprint, creds


class Relay:
    """One ``backline-relay serve`` process (or the bench launcher, for a variant)."""

    def __init__(self, root: Path, port: int, env: dict[str, str], variant: str,
                 cpus: set[int] | None = None) -> None:
        self.root, self.port, self.variant, self.cpus = root, port, variant, cpus
        self.env = {**os.environ, **env}
        self.log_path = root / "relay.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: http.client.HTTPSConnection | None = None

    def start(self) -> None:
        cmd = ([str(RELAY_BIN), "serve"] if self.variant == "default"
               else [sys.executable, "-m", "bench.idle_agents", "--relay-variant", self.variant])
        if shutil.which("setpriv"):  # the relay dies with this process, however it ends
            cmd = ["setpriv", "--pdeathsig", "KILL", "--", *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log,
                                         cwd=Path(__file__).parent.parent)
        if self.cpus:
            os.sched_setaffinity(self.proc.pid, self.cpus)
        self.close_http()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close_http(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None

    def _get(self, path: str) -> bytes | None:
        """``GET path`` over HTTPS (keep-alive, one retry on a fresh connection), or None."""
        for _ in range(2):
            try:
                if self.http is None:
                    self.http = http.client.HTTPSConnection(
                        "127.0.0.1", self.port, timeout=5, context=client_context())
                self.http.request("GET", path)
                return self.http.getresponse().read()
            except (OSError, http.client.HTTPException):
                self.close_http()
        return None

    def agents_connected(self) -> int | None:
        """``agents_connected`` from /readyz, or None."""
        try:
            body = json.loads(self._get("/readyz") or b"{}")
            return int(body["agents_connected"]) if body.get("ready") else None
        except (ValueError, KeyError):
            return None

    def control_messages(self) -> dict[str, float]:
        """The relay's own count of control messages in and out (``/metrics``)."""
        out: dict[str, float] = {}
        for line in (self._get("/metrics") or b"").decode().splitlines():
            for way in ("in", "out"):
                if line.startswith(f'backline_control_messages_total{{direction="{way}"}}'):
                    out[way] = float(line.rsplit(" ", 1)[1])
        return out

    def kill9(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)
        self.close_http()

    def stop(self) -> None:
        self.close_http()
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


def memory(pid: int) -> dict[str, int]:
    p = psutil.Process(pid)
    full = p.memory_full_info()
    status = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("RssAnon", "RssFile"):
                status[name] = int(value.split()[0]) * KIB
    return {"rss": full.rss, "uss": full.uss, "pss": full.pss,
            "rss_anon": status.get("RssAnon", 0)}


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# --- variants: experiments only, started through this module ------------------------------


def _variant_config(name: str) -> None:
    """Patch the relay's uvicorn settings for one experiment (never used by default)."""
    import uvicorn

    from backline.relay import serve
    from backline.relay.net import server

    original = serve.uvicorn_config
    changes: dict[str, Any] = {}
    after_load: list[Any] = []
    for part in name.split("+"):
        if part == "httptools":
            changes["http"] = "httptools"
        elif part == "ws-websockets":
            changes["ws"] = "websockets"
        elif part == "ws-sansio":
            changes["ws"] = "websockets-sansio"
        elif part == "ws-wsproto":  # what agents' sockets used before control_socket.py
            changes["ws"] = "wsproto"
        elif part == "deflate":
            changes["ws_per_message_deflate"] = True
        elif part.startswith("tlsbuf-"):
            size = int(part.split("-", 1)[1].rstrip("k")) * KIB
            server.TLS_READ_BUFFER = size
        elif part == "lean-queue":
            changes["ws"] = _lean_ws_protocol()
        elif part == "floor-ack":
            # Investigation: answer every message with a fixed hb_ack, unparsed, to
            # see what the transport alone (TLS, framing, system calls) costs.
            from backline.relay import control

            fixed = '{"v":1,"type":"hb_ack","relay_time":0.0}'
            control._reply = lambda relay, conn, frame, ack=fixed: ack  # type: ignore[assignment]
        elif part == "no-tickets":
            after_load.append(lambda cfg: setattr(cfg.ssl, "num_tickets", 0))
        elif part in ("tracemalloc", "profile", "gcstats"):
            _install_probe(part)
        elif part == "ab":
            # Investigation: run $BENCH_AB (a Python file) in the relay process before it
            # starts, e.g. to install a signal that switches between two behaviours, so
            # both are measured in one run (runs differ by a point of CPU here).
            import runpy

            runpy.run_path(os.environ["BENCH_AB"])
        elif part in ("asyncio", "uvloop", "default"):
            pass  # the loop comes from BACKLINE_EVENT_LOOP
        else:
            raise SystemExit(f"unknown variant part {part!r}")

    def patched(relay: Any) -> uvicorn.Config:
        cfg = original(relay)
        for key, value in changes.items():
            setattr(cfg, key, value)
        if after_load:
            cfg.load()
            for fn in after_load:
                fn(cfg)
        return cfg

    serve.uvicorn_config = patched  # type: ignore[assignment]


def _lean_ws_protocol() -> type:
    """Experiment: uvicorn's wsproto protocol with a one-consumer queue and a lazy event
    in place of ``asyncio.Queue`` and ``asyncio.Event`` (five deques, ~3.8 KiB a socket)."""
    from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

    class LeanQueue:
        __slots__ = ("_items", "_waiter")

        def __init__(self) -> None:
            self._items: list[Any] = []
            self._waiter: asyncio.Future[None] | None = None

        def empty(self) -> bool:
            return not self._items

        def put_nowait(self, item: Any) -> None:
            self._items.append(item)
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_result(None)

        async def get(self) -> Any:
            while not self._items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            return self._items.pop(0)

    class LeanEvent:
        __slots__ = ("_set", "_waiters")

        def __init__(self) -> None:
            self._set = False
            self._waiters: list[asyncio.Future[None]] = []

        def is_set(self) -> bool:
            return self._set

        def set(self) -> None:
            self._set = True
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(None)
            self._waiters = []

        def clear(self) -> None:
            self._set = False

        async def wait(self) -> bool:
            if not self._set:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append(fut)
                await fut
            return True

    class LeanWSProtocol(WSProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.queue = LeanQueue()  # type: ignore[assignment]
            self.writable = LeanEvent()  # type: ignore[assignment]
            self.writable.set()

    return LeanWSProtocol


def _install_probe(kind: str) -> None:
    """Diagnostics for investigations: SIGUSR1 dumps a tracemalloc snapshot, or toggles a
    cProfile of the relay (written on the second signal), into $BENCH_PROBE_DIR."""
    import cProfile
    import itertools
    import tracemalloc

    out = Path(os.environ.get("BENCH_PROBE_DIR", "."))
    count = itertools.count()
    if kind == "gcstats":
        import gc
        import json as _json

        seen: dict[str, list[float]] = {}
        started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                entry = seen.setdefault(str(info["generation"]), [0, 0.0, 0.0])
                took = time.perf_counter() - started[0]
                entry[0] += 1
                entry[1] += took
                entry[2] = max(entry[2], took)

        gc.callbacks.append(on_gc)

        def handler(signum: int, frame: Any) -> None:
            (out / f"gc-{next(count)}.json").write_text(_json.dumps(
                {"collections": seen, "counts": gc.get_count(), "objects": len(gc.get_objects()),
                 "threshold": gc.get_threshold()}))
            seen.clear()
    elif kind == "tracemalloc":
        tracemalloc.start(int(os.environ.get("BENCH_PROBE_FRAMES", "12")))

        def handler(signum: int, frame: Any) -> None:
            tracemalloc.take_snapshot().dump(str(out / f"snapshot-{next(count)}.tm"))
    else:
        # BENCH_PROBE_CPU=1: CPU time (slower to take) rather than wall time.
        timer = time.thread_time if os.environ.get("BENCH_PROBE_CPU") else time.perf_counter
        prof = cProfile.Profile(timer)
        running = [False]

        def handler(signum: int, frame: Any) -> None:
            if running[0]:
                prof.disable()
                prof.dump_stats(str(out / f"profile-{next(count)}.pstats"))
            else:
                prof.enable()
            running[0] = not running[0]

    signal.signal(signal.SIGUSR1, handler)


def run_relay_variant(name: str) -> None:
    _variant_config(name)
    from backline.relay.cli import main as relay_main

    sys.argv = ["backline-relay", "serve"]
    relay_main()


# --- the simulated agents (client processes) ----------------------------------------------


@dataclass
class ClientStats:
    connected: int = 0
    welcomes: int = 0
    hb_sent: int = 0
    hb_acked: int = 0
    last_welcome: float = 0.0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    samples: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] += 1
        if len(self.samples) < 5:
            self.samples.append(f"{name}: {str(exc)[:160]}")

    def snapshot(self) -> dict[str, Any]:
        return {"connected": self.connected, "welcomes": self.welcomes,
                "hb_sent": self.hb_sent, "hb_acked": self.hb_acked,
                "last_welcome": self.last_welcome, "errors": dict(self.errors),
                "samples": list(self.samples)}


class AuthRefused(Exception):
    pass


async def _hold(ws: Any, hb_s: float, stop: asyncio.Event, stats: ClientStats) -> None:
    """Heartbeat every ``hb_s`` (the first one jittered) and read answers until closed,
    asking for an answer and giving up on a silent relay exactly as the agent does
    (:class:`~backline.common.protocol.HeartbeatClock`)."""
    clock = protocol.HeartbeatClock(hb_s, time.monotonic())

    async def reader() -> None:
        async for frame in ws:
            msg = protocol.parse_relay_message(frame)
            clock.heard_from_relay(time.monotonic())
            if msg["type"] == "hb_ack":
                stats.hb_acked += 1
            elif msg["type"] == "ping":
                await ws.send(protocol.encode("pong", id=msg["id"]))

    reading = asyncio.create_task(reader())
    stopping = asyncio.create_task(stop.wait())
    delay = random.uniform(0, hb_s)
    try:
        while True:
            done, _ = await asyncio.wait({reading, stopping}, timeout=delay,
                                         return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                return
            if reading in done:
                reading.result()
                return
            ask = clock.tick(time.monotonic())
            if ask is None:
                await ws.close(4408, "no heartbeat answer")
                return
            await ws.send(protocol.encode("hb", stats=HB_STATS, ack=ask))
            stats.hb_sent += 1
            delay = hb_s
    finally:
        reading.cancel()
        stopping.cancel()


async def _agent(agent_id: str, key: Ed25519PrivateKey, url: str, fingerprint: str,
                 ramp: asyncio.Semaphore, stop: asyncio.Event, stats: ClientStats) -> None:
    """One agent: the real agent's connect / handshake / heartbeat / backoff loop."""
    backoff, attempt, first = Backoff(), 0, True
    while not stop.is_set():
        connected_at = None
        holding = False
        try:
            if first:  # only the initial ramp is throttled; reconnects are the agent's own
                await ramp.acquire()
                holding = True
            async with open_pinned(url, fingerprint) as ws:
                challenge = await asyncio.wait_for(ws.recv(), 15)
                await ws.send(protocol.answer_challenge(challenge, agent_id, key, fingerprint,
                                                        __version__))
                welcome = protocol.parse_relay_message(await asyncio.wait_for(ws.recv(), 15))
                if welcome["type"] != "welcome":
                    raise AuthRefused(str(welcome))
                if holding:
                    ramp.release()
                    holding = False
                first = False
                connected_at = time.monotonic()
                stats.connected += 1
                stats.welcomes += 1
                stats.last_welcome = time.time()
                await _hold(ws, welcome["heartbeat_s"], stop, stats)
        except (RelayUnreachable, ConnectionClosed, WebSocketException, OSError, TimeoutError,
                ProtocolError, PinMismatch, AuthRefused) as exc:
            if not stop.is_set():
                stats.error(exc)
        finally:
            if holding:
                ramp.release()
            if connected_at is not None:
                stats.connected -= 1
        if stop.is_set():
            break
        delay, attempt = backoff.after(
            attempt, None if connected_at is None else time.monotonic() - connected_at)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)


async def _client(idx: int, url: str, fingerprint: str, creds: list[tuple[str, bytes]],
                  ramp_n: int, reports: Any, stop_flag: Any, deadline: float) -> None:
    stats = ClientStats()
    stop = asyncio.Event()
    ramp = asyncio.Semaphore(ramp_n)
    parent = os.getppid()
    tasks = [asyncio.create_task(_agent(agent_id, Ed25519PrivateKey.from_private_bytes(raw),
                                        url, fingerprint, ramp, stop, stats))
             for agent_id, raw in creds]
    while not stop.is_set():
        reports.put((idx, stats.snapshot()))
        if stop_flag.is_set() or time.monotonic() > deadline or os.getppid() != parent:
            stop.set()
            break
        await asyncio.sleep(1.0)
    _, pending = await asyncio.wait(tasks, timeout=10)
    for task in pending:
        task.cancel()
    reports.put((idx, stats.snapshot()))


def client_main(idx: int, url: str, fingerprint: str, creds: list[tuple[str, bytes]],
                ramp_n: int, loop: str, reports: Any, stop_flag: Any, max_seconds: float,
                nofile: int) -> None:
    """Entry point of one client process (multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    raise_nofile(nofile)
    deadline = time.monotonic() + max_seconds
    coro = _client(idx, url, fingerprint, creds, ramp_n, reports, stop_flag, deadline)
    if loop == "uvloop":
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


class Clients:
    """The client processes and the latest report of each."""

    def __init__(self, n_procs: int, url: str, fingerprint: str,
                 creds: list[tuple[str, bytes]], ramp: int, loop: str, max_seconds: float,
                 nofile: int, cpus: set[int] | None = None) -> None:
        self.cpus = cpus
        ctx = mp.get_context("spawn")
        self.reports: Any = ctx.Queue()
        self.stop_flag = ctx.Event()
        self.latest: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._done = threading.Event()
        shares = [creds[i::n_procs] for i in range(n_procs)]
        self.procs = [ctx.Process(target=client_main, daemon=True, name=f"bench-client-{i}",
                                  args=(i, url, fingerprint, share, ramp, loop, self.reports,
                                        self.stop_flag, max_seconds, nofile))
                      for i, share in enumerate(shares) if share]
        self._reader = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        for p in self.procs:
            p.start()
            if self.cpus and p.pid is not None:
                os.sched_setaffinity(p.pid, self.cpus)
        self._reader.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                idx, snap = self.reports.get(timeout=0.5)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            with self._lock:
                self.latest[idx] = snap

    def total(self, key: str) -> int:
        with self._lock:
            return sum(int(s[key]) for s in self.latest.values())

    def last_welcome(self) -> float:
        with self._lock:
            return max((s["last_welcome"] for s in self.latest.values()), default=0.0)

    def errors(self) -> dict[str, int]:
        out: collections.Counter[str] = collections.Counter()
        with self._lock:
            for s in self.latest.values():
                out.update(s["errors"])
        return dict(out)

    def samples(self) -> list[str]:
        with self._lock:
            return [x for s in self.latest.values() for x in s["samples"]][:5]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.procs:
            with contextlib.suppress(psutil.Error, ValueError):
                if p.pid is not None:
                    total += cpu_seconds(p.pid)
        return total

    def rss(self) -> int:
        total = 0
        for p in self.procs:
            with contextlib.suppress(psutil.Error, ValueError):
                if p.pid is not None:
                    total += psutil.Process(p.pid).memory_info().rss
        return total

    def stop(self) -> None:
        self.stop_flag.set()
        for p in self.procs:
            p.join(20)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        self._done.set()
        self._reader.join(5)


# --- one run ------------------------------------------------------------------------------


def wait_until(cond: Any, timeout: float, interval: float = 0.25) -> float | None:
    """Poll ``cond`` until true; the seconds it took, or None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(interval)
    return None


def kib_per_agent(before: dict[str, int], after: dict[str, int], n: int) -> dict[str, float]:
    return {k: round((after[k] - before[k]) / n / KIB, 1) for k in before}


def mib(value: int) -> float:
    return round(value / KIB / KIB, 1)


_ALL_CPUS = sorted(os.sched_getaffinity(0))


def split_cpus(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """With ``--pin``: the relay alone on the first CPU, the clients (and this process)
    on the others, as they would be on other machines in a real deployment; the kernel's
    loopback work still lands wherever it runs."""
    cpus = _ALL_CPUS
    if not pin or len(cpus) < 2:
        return None, None
    relay, clients = {cpus[0]}, set(cpus[1:])
    os.sched_setaffinity(0, clients)
    return relay, clients


def run_once(n: int, args: argparse.Namespace, nofile: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"backline-idle-{n}-"))
    result: dict[str, Any] = {"agents": n, "variant": args.relay_variant_name,
                              "relay_loop": args.loop, "tls_engine": args.tls_engine,
                              "clients": args.clients,
                              "client_loop": args.client_loop, "heartbeat_s": args.heartbeat,
                              "steady_seconds": args.steady_seconds,
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    relay: Relay | None = None
    clients: Clients | None = None
    relay_cpus, client_cpus = split_cpus(args.pin)
    result["pinned"] = {"relay": sorted(relay_cpus or ()), "clients": sorted(client_cpus or ())}
    try:
        t0 = time.monotonic()
        fingerprint, creds = enroll(root / "relay", n)
        result["enroll_s"] = round(time.monotonic() - t0, 1)
        port = free_port()
        relay = Relay(root, port, {
            "BACKLINE_DATA_DIR": str(root / "relay"), "BACKLINE_LISTEN_PORT": str(port),
            "BACKLINE_LISTEN_HOST": "127.0.0.1", "BACKLINE_HEARTBEAT_S": str(args.heartbeat),
            "BACKLINE_LOG_LEVEL": "warning", "BACKLINE_EVENT_LOOP": args.loop,
            "BACKLINE_TLS_ENGINE": args.tls_engine,
            # Every simulated agent dials from 127.0.0.1, where a real fleet comes from
            # thousands of addresses: one address may hold as many unauthenticated
            # connections as the whole relay (the overall cap still applies).
            "BACKLINE_MAX_UNAUTHENTICATED_PER_ADDRESS": "16384",
        }, args.relay_variant_name, relay_cpus)
        t0 = time.monotonic()
        relay.start()
        if wait_until(lambda: relay.agents_connected() is not None or not relay.alive(),
                      60) is None or not relay.alive():
            raise RuntimeError("the relay did not start:\n" + relay.log_tail())
        result["relay_start_s"] = round(time.monotonic() - t0, 2)
        time.sleep(3)
        base = memory(relay.pid)
        result["relay_rss_base_mib"] = mib(base["rss"])

        url = f"wss://127.0.0.1:{port}/agent/connect"
        clients = Clients(args.clients, url, fingerprint, creds, args.ramp, args.client_loop,
                          max_seconds=args.timeout * 3 + args.steady_seconds + 300
                          + (args.heartbeat * 4 if args.warmup is None else args.warmup),
                          nofile=nofile, cpus=client_cpus)
        print(f"[{n:,}] relay up (RSS {mib(base['rss'])} MiB); connecting {n:,} agents "
              f"from {len(clients.procs)} processes…", flush=True)
        t0 = time.monotonic()
        cpu0 = cpu_seconds(relay.pid)
        clients.start()
        took = wait_until(lambda: clients.total("connected") >= n
                          and relay.agents_connected() == n, args.timeout, 0.5)
        if took is None:
            raise RuntimeError(f"only {clients.total('connected')} of {n} agents connected "
                               f"in {args.timeout} s; errors {clients.errors()} "
                               f"{clients.samples()}")
        result["ramp_s"] = round(took, 1)
        result["ramp_relay_cpu_s"] = round(cpu_seconds(relay.pid) - cpu0, 1)
        result["ramp_errors"] = clients.errors()
        time.sleep(args.settle)
        connected_mem = memory(relay.pid)

        warmup = args.heartbeat * 4 if args.warmup is None else args.warmup
        print(f"[{n:,}] all connected in {took:.1f} s; warming up for {warmup:.0f} s (until "
              f"every agent asks for answers at its steady pace), then steady state for "
              f"{args.steady_seconds:.0f} s…", flush=True)
        time.sleep(warmup)
        result["warmup_s"] = warmup
        hb0, acks0 = clients.total("hb_sent"), clients.total("hb_acked")
        errors0 = sum(clients.errors().values())
        msgs0 = relay.control_messages()
        ccpu0, cpu0, t0 = clients.cpu_seconds(), cpu_seconds(relay.pid), time.monotonic()
        time.sleep(args.steady_seconds)
        cpu1, t1, ccpu1 = cpu_seconds(relay.pid), time.monotonic(), clients.cpu_seconds()
        hb = clients.total("hb_sent") - hb0
        acks = clients.total("hb_acked") - acks0
        msgs1 = relay.control_messages()
        steady_errors = sum(clients.errors().values()) - errors0
        idle_mem = memory(relay.pid)
        still = relay.agents_connected()
        result.update({
            "cpu_pct_steady": round((cpu1 - cpu0) / (t1 - t0) * 100, 2),
            "heartbeats_in_window": hb,
            "heartbeats_per_s": round(hb / (t1 - t0), 1),
            "acks_in_window": acks,
            # What the relay itself counted: every heartbeat in, the answers out.
            "relay_messages_in_per_s": round((msgs1.get("in", 0) - msgs0.get("in", 0))
                                             / (t1 - t0), 1),
            "relay_messages_out_per_s": round((msgs1.get("out", 0) - msgs0.get("out", 0))
                                              / (t1 - t0), 1),
            "steady_errors": steady_errors,
            "connected_after_steady": still,
            "clients_cpu_pct_steady": round((ccpu1 - ccpu0) / (t1 - t0) * 100, 1),
            "relay_rss_connected_mib": mib(connected_mem["rss"]),
            "relay_rss_idle_mib": mib(idle_mem["rss"]),
            "rss_per_agent_kib": kib_per_agent(base, idle_mem, n)["rss"],
            "per_agent_kib": kib_per_agent(base, idle_mem, n),
            "per_agent_kib_before_heartbeats": kib_per_agent(base, connected_mem, n),
            "clients_rss_mib": mib(clients.rss()),
        })
        print(f"[{n:,}] {result['rss_per_agent_kib']} KiB/agent, "
              f"{result['cpu_pct_steady']} % CPU at {result['heartbeats_per_s']} hb/s; "
              "killing the relay (SIGKILL) and starting it again…", flush=True)

        # Restart: kill -9, start again at once, time until every agent is back.
        welcomes0 = clients.total("welcomes")
        kill_wall, t_kill = time.time(), time.monotonic()
        relay.kill9()
        relay.start()
        started_cpu_at = None
        series: list[tuple[float, int]] = []
        back_at = None
        while time.monotonic() - t_kill < args.timeout:
            if not relay.alive():
                raise RuntimeError("the relay died after the restart:\n" + relay.log_tail())
            count = relay.agents_connected()
            now = time.monotonic() - t_kill
            if count is not None:
                if started_cpu_at is None:
                    started_cpu_at = now
                series.append((round(now, 2), count))
                if count >= n and clients.total("welcomes") - welcomes0 >= n:
                    back_at = now
                    break
            time.sleep(0.2)
        storm_cpu = cpu_seconds(relay.pid)
        result["restart_relay_up_s"] = started_cpu_at and round(started_cpu_at, 2)
        result["restart_relay_cpu_s"] = round(storm_cpu, 1)
        result["restart_errors"] = {k: v - result["ramp_errors"].get(k, 0)
                                    for k, v in clients.errors().items()
                                    if v - result["ramp_errors"].get(k, 0)}
        if back_at is None:
            result["reconnect_s"] = None
            result["reconnect_failed"] = (f"{series[-1][1] if series else 0} of {n} back "
                                          f"after {args.timeout} s")
        else:
            # Exact: the wall time of the last welcome any client saw, from the kill.
            result["reconnect_s"] = round(clients.last_welcome() - kill_wall, 1)
            result["reconnect_readyz_s"] = round(back_at, 1)
        for frac in (0.5, 0.9, 0.99):
            hit = next((t for t, c in series if c >= frac * n), None)
            result[f"reconnect_p{int(frac * 100)}_s"] = hit
        time.sleep(min(args.settle, 5))
        after = memory(relay.pid)
        result["relay_rss_after_restart_mib"] = mib(after["rss"])
        result["ok"] = back_at is not None and still == n and steady_errors == 0
        return result
    except RuntimeError as exc:
        result["ok"] = False
        result["error"] = str(exc)[:3000]
        print(f"[{n:,}] FAILED: {str(exc)[:2000]}", flush=True)
        return result
    finally:
        if relay is not None:
            relay.kill9()
        if clients is not None:
            clients.stop()
        if relay is not None:
            relay.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- report -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {"nproc": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / KIB**3, 1),
            "python": platform.python_version(), "cpu_model": model,
            "platform": platform.platform(), "openssl": ssl.OPENSSL_VERSION,
            "packages": {n: version(n) for n in ("uvicorn", "uvloop", "wsproto", "h11",
                                                 "httptools", "websockets", "starlette")}}


def fmt(value: Any, suffix: str = "") -> str:
    return "FAILED" if value is None else f"{value}{suffix}"


def print_table(runs: list[dict[str, Any]]) -> None:
    head = (f"{'agents':>7} {'variant':>18} {'KiB/agent':>10} {'USS KiB':>8} {'CPU %':>6} "
            f"{'hb/s':>6} {'back in s':>9} {'ramp s':>7} {'ok':>3}")
    print("\n" + head)
    print("-" * len(head))
    for r in runs:
        per = r.get("per_agent_kib", {})
        print(f"{r['agents']:>7,} {r['variant'] + '/' + r['relay_loop']:>18} "
              f"{fmt(r.get('rss_per_agent_kib')):>10} {fmt(per.get('uss')):>8} "
              f"{fmt(r.get('cpu_pct_steady')):>6} {fmt(r.get('heartbeats_per_s')):>6} "
              f"{fmt(r.get('reconnect_s')):>9} {fmt(r.get('ramp_s')):>7} "
              f"{'yes' if r.get('ok') else 'NO':>3}")
    print(f"goal at {GOAL['agents']:,}: <= {GOAL['rss_per_agent_kib']} KiB/agent, "
          f"< {GOAL['cpu_pct_steady']} % of one core, back within {GOAL['reconnect_s']} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--agents", default="1000,10000",
                    help="comma-separated agent counts, one run each")
    ap.add_argument("--steady-seconds", type=float, default=120.0,
                    help="the CPU window; the default, four 30 s heartbeats, holds exactly "
                    "one heartbeat that asks for an answer from each idle agent")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds between the last connect and the CPU window (default: "
                    "four heartbeats, so that every agent has settled into its pace)")
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--ramp", type=int, default=32,
                    help="concurrent first handshakes per client process")
    ap.add_argument("--heartbeat", type=int, default=30)
    ap.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                    help="the relay's event_loop setting")
    ap.add_argument("--tls-engine", default="socket", choices=["socket", "loop"],
                    help="the relay's tls_engine setting")
    ap.add_argument("--pin", action="store_true",
                    help="relay alone on the first CPU, clients on the others")
    ap.add_argument("--client-loop", default="uvloop", choices=["asyncio", "uvloop"])
    ap.add_argument("--variant", dest="relay_variant_name", default="default",
                    help="experiments: '+'-joined changes to the relay's uvicorn settings "
                    "(httptools, ws-websockets, ws-sansio, ws-wsproto, deflate, "
                    "tlsbuf-<KiB>k, no-tickets, lean-queue, floor-ack; "
                    "tracemalloc, profile, gcstats, ab (runs $BENCH_AB in the relay) for "
                    "investigations); "
                    "'default' runs the real backline-relay serve")
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds between the last connect and the memory reading")
    ap.add_argument("--timeout", type=float, default=180.0,
                    help="bound on the ramp and on the reconnect after a restart")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--append", action="store_true", help="add to --out instead of replacing")
    ap.add_argument("--relay-variant", help=argparse.SUPPRESS)  # internal: run the relay
    args = ap.parse_args()
    if args.relay_variant:
        run_relay_variant(args.relay_variant)
        return

    counts = [int(x.replace("_", "")) for x in args.agents.split(",") if x.strip()]
    nofile = raise_nofile(max(counts) * 2 + 4096)
    info = machine()
    print(f"machine: {info['nproc']} CPUs ({info['cpu_model']}), {info['ram_gib']} GiB, "
          f"Python {info['python']}; RLIMIT_NOFILE {nofile}", flush=True)
    runs = []
    for n in counts:
        r = run_once(n, args, nofile)
        r["machine"] = info
        r["command"] = " ".join(["python -m bench.idle_agents", *sys.argv[1:]])
        runs.append(r)
    print_table(runs)
    previous: list[dict[str, Any]] = []
    if args.append and args.out.exists():
        previous = json.loads(args.out.read_text())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(previous + runs, indent=2) + "\n")
    print(f"wrote {args.out}")
    if not all(r.get("ok") for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
