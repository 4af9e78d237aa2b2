"""The terminal (``shell``): what the relay adds to a keystroke's echo, its throughput,
and its memory during a flood.

Starts a real relay and a real enrolled agent on loopback (the agent's own ``shell``:
a login shell in a pty), opens a session and a terminal the way the console does (a
WebSocket speaking SHELL_CONTRACT.md, acknowledging output as it reads it), then:

1. **echo**: ``--echoes`` single keystrokes, each timed from send to its echo, through
   the relay; and the same straight to the agent's SSH server (the agent's own
   ``AgentSSHServer`` and shell, served on a loopback TCP port in a child process, an
   asyncssh client with a pty). The relay's added p50/p99 is the difference of the
   percentiles. Goal: added p99 <= 5 ms.
2. **throughput**: ``head -c 200M /dev/zero | base64`` (``--throughput-bytes``) with
   echo off, through the terminal, timed at the client; baseline the same command
   through OpenSSH ``ssh -tt`` to a local ``sshd`` when ``/usr/sbin/sshd`` exists,
   else through the asyncssh client straight to the agent's SSH server (the JSON says
   which).
3. **flood**: ``yes | head -c 1G`` (``--flood-bytes``) through the terminal while the
   relay's VmRSS (``/proc/PID/status``) is sampled every 50 ms; the growth is the peak
   minus the value before. Goal: <= 50 MiB.

    python -m bench.terminal [--echoes 300] [--throughput-bytes 200M] [--flood-bytes 1G]

Writes bench/results/terminal.json with ``echo_added_p50_ms``, ``echo_added_p99_ms``,
``throughput_mb_s``, ``baseline_mb_s``, ``flood_rss_growth_mib`` (and the parts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench import cpu_model
from tests.harness import AgentProcess, RelayProcess, admin_api, browser_socket, wait_for
from tests.terminal_client import TerminalClient

RESULTS = Path(__file__).parent / "results" / "terminal.json"
GOAL_ADDED_P99_MS = 5.0
GOAL_RSS_GROWTH_MIB = 50.0
POLICY = '[capabilities]\ninfo = "allow"\nshell = "allow"\n'
END = "be$((6*7))nch"  # what the shell prints when a command is done: "be42nch"
DONE = b"be42nch"


def size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1], 3)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --- the direct path: the agent's SSH server on a TCP port ----------------------------

PRINCIPAL = "ag_bench000000001"


def serve_direct(ca_public: str, port_file: str) -> None:
    """Child process: the agent's own SSH server and registry, on 127.0.0.1."""
    import asyncssh

    from backline.agent.activity import ActivityLog
    from backline.agent.capabilities import SessionContext, builtin_registry
    from backline.agent.policy import from_table
    from backline.agent.sshserver import AgentSSHServer, ServerSettings, server_options

    class NoAsker:
        available = False

        async def ask(self, question: str, timeout: float) -> Any:
            raise RuntimeError("the policy allows; nobody is asked")

    async def main() -> None:
        root = Path(port_file).parent
        ctx = SessionContext(session_id="ss_bench", principal=PRINCIPAL, technician="bench",
                             mode="managed", log=ActivityLog(root / "direct-activity.jsonl"),
                             policy=from_table({"capabilities": {"shell": "allow"}}),
                             capabilities=("shell",))
        host = asyncssh.generate_private_key("ssh-ed25519")
        settings = ServerSettings(session=ctx, registry=builtin_registry(), host_key=host,
                                  ca_public_key=ca_public, asker=NoAsker())  # type: ignore[arg-type]
        server = await asyncssh.create_server(lambda: AgentSSHServer(settings), "127.0.0.1",
                                              0, **server_options(settings))
        port = server.sockets[0].getsockname()[1]
        host.write_private_key(str(root / "direct-host"))
        Path(port_file).write_text(str(port))  # noqa: ASYNC240 - once, at start
        await asyncio.Event().wait()

    asyncio.run(main())


class Direct:
    """An asyncssh client with a pty on the agent's SSH server, straight (no relay)."""

    def __init__(self, root: Path) -> None:
        import asyncssh

        self.root = root
        self.ca = asyncssh.generate_private_key("ssh-ed25519")
        port_file = root / "direct-port"
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.terminal", "--serve-direct",
                                      self.ca.export_public_key().decode(), str(port_file)])
        wait_for(port_file.exists, 30, "the direct SSH server")
        self.port = int(port_file.read_text())

    async def _connect(self) -> Any:
        import asyncssh

        key = asyncssh.generate_private_key("ssh-ed25519")
        now = time.time()
        cert = self.ca.generate_user_certificate(
            key, "bench", principals=[PRINCIPAL], valid_after=int(now - 60),
            valid_before=int(now + 3600), permit_pty=True, permit_x11_forwarding=False,
            permit_agent_forwarding=False, permit_port_forwarding=False,
            permit_user_rc=False)
        return await asyncssh.connect("127.0.0.1", self.port, username=PRINCIPAL,
                                      known_hosts=None, client_keys=[(key, cert)],
                                      agent_path=None, config=None, encoding=None)

    async def _shell(self, conn: Any) -> Any:
        proc = await conn.create_process(subsystem="shell", term_type="xterm-256color",
                                         term_size=(100, 30), encoding=None)
        await _read_until(proc, b"# ", 10, lenient=True)
        return proc

    def echoes(self, n: int) -> list[float]:
        async def run() -> list[float]:
            conn = await self._connect()
            proc = await self._shell(conn)
            out = []
            for i in range(n):
                ch = b"abcdefghij"[i % 10:i % 10 + 1]
                t0 = time.perf_counter()
                proc.stdin.write(ch)
                await _read_until(proc, ch, 10)
                out.append((time.perf_counter() - t0) * 1000)
                if i % 50 == 49:
                    proc.stdin.write(b"\x15")  # ^U: an empty line again
                    await asyncio.sleep(0.05)
                    await _drain(proc)
            conn.close()
            return out

        return asyncio.run(run())

    def throughput(self, nbytes: int) -> tuple[float, int]:
        async def run() -> tuple[float, int]:
            conn = await self._connect()
            proc = await self._shell(conn)
            proc.stdin.write(b"stty -echo\r")
            await asyncio.sleep(0.5)
            await _drain(proc)
            t0 = time.perf_counter()
            proc.stdin.write(f"head -c {nbytes} /dev/zero | base64; echo {END}\r".encode())
            got = await _read_until(proc, DONE, 1800)
            took = time.perf_counter() - t0
            conn.close()
            return took, got

        return asyncio.run(run())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def _read_until(proc: Any, needle: bytes, timeout: float, lenient: bool = False) -> int:
    tail = b""
    total = 0
    try:
        async with asyncio.timeout(timeout):
            while needle not in tail:
                data = await proc.stdout.read(65536)
                if not data:
                    raise RuntimeError("the channel ended")
                total += len(data)
                tail = (tail + data)[-4096:]
    except TimeoutError:
        if not lenient:
            raise
    return total


async def _drain(proc: Any) -> None:
    while True:
        try:
            async with asyncio.timeout(0.1):
                if not await proc.stdout.read(65536):
                    return
        except TimeoutError:
            return


def openssh_baseline(root: Path, nbytes: int) -> tuple[float, int] | None:
    """``ssh -tt`` to a local sshd, when this machine has one."""
    sshd = Path("/usr/sbin/sshd")
    if not sshd.exists() or shutil.which("ssh") is None:
        return None
    d = root / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "user")],
                   check=True)
    (d / "authorized_keys").write_text((d / "user.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = 22000 + os.getpid() % 20000
    daemon = subprocess.Popen([str(sshd), "-D", "-e", "-p", str(port), "-h", str(d / "host"),
                               "-o", f"AuthorizedKeysFile={d / 'authorized_keys'}",
                               "-o", "ListenAddress=127.0.0.1", "-o", "UsePAM=no",
                               "-o", f"PidFile={d / 'pid'}"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        t0 = time.perf_counter()
        done = subprocess.run(["ssh", "-tt", "-p", str(port), "-i", str(d / "user"),
                               "-o", "StrictHostKeyChecking=no",
                               "-o", f"UserKnownHostsFile={d / 'known'}", "127.0.0.1",
                               f"head -c {nbytes} /dev/zero | base64"],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
        return time.perf_counter() - t0, len(done.stdout)
    finally:
        daemon.terminate()
        daemon.wait(10)


# --- through the relay -------------------------------------------------------------


def relay_echoes(term: TerminalClient, n: int) -> list[float]:
    out = []
    for i in range(n):
        ch = b"abcdefghij"[i % 10:i % 10 + 1]
        start = len(term.out)
        t0 = time.perf_counter()
        term.type(ch)
        term.until(lambda s=start, c=ch: c in term.out[s:], 10, "the echo")
        out.append((time.perf_counter() - t0) * 1000)
        if i % 50 == 49:
            term.type(b"\x15")
            deadline = time.monotonic() + 0.1
            while time.monotonic() < deadline:
                term.step(0.02)
    return out


def relay_run(term: TerminalClient, command: str, timeout: float,
              sample_pid: int | None = None) -> tuple[float, int, int, int]:
    """Run ``command`` (echo off); (seconds, bytes, RSS before, peak RSS) in KiB."""
    tail = bytearray()

    def keep(data: bytes) -> None:
        tail.extend(data)
        del tail[:-4096]

    term.keep = False
    term.on_output = keep
    before = rss_kib(sample_pid) if sample_pid else 0
    peak = [before]
    stop = threading.Event()

    def sample() -> None:
        while sample_pid and not stop.is_set():
            peak[0] = max(peak[0], rss_kib(sample_pid))
            stop.wait(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start_bytes = term.received
    t0 = time.perf_counter()
    try:
        term.type(f"{command}; echo {END}\r")
        term.until(lambda: DONE in tail, timeout, command)
    finally:
        stop.set()
        sampler.join()
    return time.perf_counter() - t0, term.received - start_bytes, before, peak[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--echoes", type=int, default=300)
    ap.add_argument("--throughput-bytes", default="200M")
    ap.add_argument("--flood-bytes", default="1G")
    ap.add_argument("--serve-direct", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_direct:
        serve_direct(*args.serve_direct)
        return
    tput, flood = size(args.throughput_bytes), size(args.flood_bytes)
    # Stopped with SIGTERM, it still stops the relay, the agent and the direct server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    root = Path(tempfile.mkdtemp(prefix="backline-terminal-bench-"))
    relay = RelayProcess(root, {"BACKLINE_LOG_LEVEL": "warning"}).start()
    agent = AgentProcess(root, "bench-agent")
    direct = Direct(root)
    result: dict[str, Any] = {}
    try:
        api = admin_api(relay)
        if agent.enroll(relay.token()).returncode != 0:
            raise SystemExit("enrollment failed")
        (agent.state_dir / "policy.toml").write_text(POLICY)
        agent.start()
        wait_for(lambda: api.get(f"/api/v1/agents/{agent.agent_id}").json()["online"], 30,
                 "the agent online")
        r = api.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                     json={"reason": "benchmark", "capabilities": ["shell"]})
        if r.status_code != 201:
            raise SystemExit(f"open failed: {r.status_code} {r.text[:300]}")
        session_id = r.json()["id"]
        assert relay.proc is not None
        path = f"/api/v1/sessions/{session_id}/stream/shell?cols=100&rows=30"

        print("echo: straight to the agent's SSH server ...", flush=True)
        direct_ms = direct.echoes(args.echoes)
        print("echo: through the relay ...", flush=True)
        with browser_socket(relay, api, path) as ws:
            term = TerminalClient(ws)
            term.message("ready")
            term.until(lambda: b"# " in term.out or b"$ " in term.out, 10, "a prompt")
            relay_ms = relay_echoes(term, args.echoes)
            term.type("stty -echo\r")
            time.sleep(0.5)
            while term.step(0.1):
                pass
            print(f"throughput: head -c {tput} /dev/zero | base64, through the relay ...",
                  flush=True)
            secs, got, _, _ = relay_run(term, f"head -c {tput} /dev/zero | base64", 1800)
            result["throughput_bytes"] = got
            result["throughput_s"] = round(secs, 2)
            result["throughput_mb_s"] = round(got / secs / 1e6, 2)
            print(f"flood: yes | head -c {flood}, relay RSS sampled ...", flush=True)
            fsecs, fgot, before, peak = relay_run(term, f"yes | head -c {flood}", 3600,
                                                  sample_pid=relay.proc.pid)
            result["flood_bytes"] = fgot
            result["flood_s"] = round(fsecs, 2)
            result["flood_rss_before_mib"] = round(before / 1024, 1)
            result["flood_rss_peak_mib"] = round(peak / 1024, 1)
            result["flood_rss_growth_mib"] = round((peak - before) / 1024, 1)
            term.type("exit\r")
            term.message("exit", 60)
        print("throughput: baseline ...", flush=True)
        base = openssh_baseline(root, tput)
        if base is not None:
            result["baseline"] = "OpenSSH ssh -tt to a local sshd"
        else:
            base = direct.throughput(tput)
            result["baseline"] = ("asyncssh client straight to the agent's SSH server (no "
                                  "/usr/sbin/sshd on this machine)")
        result["baseline_mb_s"] = round(base[1] / base[0] / 1e6, 2)
        api.request("DELETE", f"/api/v1/sessions/{session_id}")
        api.close()
    finally:
        direct.stop()
        agent.stop()
        relay.stop()

    result["sizes"] = {"throughput": args.throughput_bytes, "flood": args.flood_bytes}
    result.update({
        "echoes": args.echoes,
        "echo_direct_p50_ms": pct(direct_ms, 50), "echo_direct_p99_ms": pct(direct_ms, 99),
        "echo_relay_p50_ms": pct(relay_ms, 50), "echo_relay_p99_ms": pct(relay_ms, 99),
    })
    result["echo_added_p50_ms"] = round(result["echo_relay_p50_ms"]
                                        - result["echo_direct_p50_ms"], 3)
    result["echo_added_p99_ms"] = round(result["echo_relay_p99_ms"]
                                        - result["echo_direct_p99_ms"], 3)
    result["goal"] = {"echo_added_p99_ms": GOAL_ADDED_P99_MS,
                      "flood_rss_growth_mib": GOAL_RSS_GROWTH_MIB,
                      "met": (result["echo_added_p99_ms"] <= GOAL_ADDED_P99_MS
                              and result["flood_rss_growth_mib"] <= GOAL_RSS_GROWTH_MIB)}
    result["machine"] = {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                         "python": platform.python_version(), "platform": platform.platform(),
                         "load_avg_1m_at_end": round(os.getloadavg()[0], 2)}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    print(f"\n{'metric':28} {'value':>12}")
    for key in ("echo_direct_p50_ms", "echo_direct_p99_ms", "echo_relay_p50_ms",
                "echo_relay_p99_ms", "echo_added_p50_ms", "echo_added_p99_ms",
                "throughput_mb_s", "baseline_mb_s", "flood_rss_growth_mib"):
        print(f"{key:28} {result[key]:>12}")
    print(f"baseline: {result['baseline']}")
    print(f"goals (added p99 <= {GOAL_ADDED_P99_MS:g} ms, RSS growth <= "
          f"{GOAL_RSS_GROWTH_MIB:g} MiB): {'met' if result['goal']['met'] else 'NOT met'}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
