"""``backline-relay demo``: a relay and one enrolled local agent, for a first look.

Both run as child processes with state under one folder (``.demo`` by default),
so a second run reuses the same relay, admin and agent.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backline.common import keys


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # our own self-signed relay, on loopback
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the relay exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", context=ctx, timeout=2):  # noqa: S310
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("demo: the relay did not become healthy within 30 s")


def run_demo(root: Path, port: int) -> int:
    relay_dir, agent_dir = root / "relay", root / "agent"
    env = {**os.environ, "BACKLINE_DATA_DIR": str(relay_dir),
           "BACKLINE_LISTEN_PORT": str(port), "BACKLINE_LISTEN_HOST": "127.0.0.1"}
    bindir = Path(sys.executable).parent
    relay_cmd, agent_cmd = str(bindir / "backline-relay"), str(bindir / "backline-agent")
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    creds = root / "admin-password"
    if not creds.exists():
        init = subprocess.run([relay_cmd, "init"], env=env, capture_output=True, text=True,
                              check=True)
        password = next((line.split("one-time password ")[1].split()[0]
                         for line in init.stdout.splitlines() if "one-time password" in line),
                        None)
        if password:
            keys.write_private_file(creds, (password + "\n").encode())
    password = creds.read_text().strip() if creds.exists() else "(see your first demo run)"
    relay = subprocess.Popen([relay_cmd, "serve"], env=env)
    agent: subprocess.Popen[bytes] | None = None
    try:
        url = f"https://127.0.0.1:{port}"
        _wait_healthy(url, relay)
        agent_env = {**env, "BACKLINE_AGENT_STATE_DIR": str(agent_dir)}
        if not (agent_dir / "enrollment.json").exists():
            token = subprocess.run([relay_cmd, "token", "create", "-q", "--ttl", "10m"],
                                   env=env, capture_output=True, text=True,
                                   check=True).stdout.strip()
            enrolled = subprocess.run([agent_cmd, "enroll", token, "--hostname", "demo-agent"],
                                      env=agent_env, capture_output=True, text=True)
            if enrolled.returncode != 0:  # the agent's own words, then stop the relay
                print(f"demo: the agent could not enroll:\n{enrolled.stderr}", file=sys.stderr)
                return 1
        agent = subprocess.Popen([agent_cmd, "run"], env=agent_env)
        print(f"\nBackline demo is running.\n  console:  {url}/  (self-signed certificate)\n"
              f"  sign in:  admin / {password}  (one-time: you will be asked to change it;"
              f" stored in {creds})\n  agent:    demo-agent, state in {agent_dir}\n"
              "Press Ctrl-C to stop.\n", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
        while relay.poll() is None and agent.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in (agent, relay):
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in (agent, relay):
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
