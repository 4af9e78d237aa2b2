"""Real processes on loopback: a relay, agents, and an HTTP client for the API.

Integration tests start ``backline-relay serve`` and ``backline-agent run`` as
child processes, exactly as an operator would, and talk to them over real
sockets. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

BIN = Path(sys.executable).parent
RELAY = str(BIN / "backline-relay")
AGENT = str(BIN / "backline-agent")


#: The first admin's password once admin_api() replaced the one-time one.
ADMIN_PASSWORD = "correct horse battery"

#: Ports handed out by :func:`free_port`: below Linux's ephemeral range (32768-60999 by
#: default), which the kernel draws from for every ``bind(0)`` and every outgoing
#: connection on the machine. A port from there, free when asked for, could be taken
#: by anyone's client socket before the relay bound it.
PORTS_FROM, PORTS_TO = 20000, 32000
_next_port: int | None = None


def free_port() -> int:
    """A loopback port nobody listens on now, and that no other test of this run (nor
    of a parallel pytest-xdist worker) will be given: each worker walks its own slice
    of :data:`PORTS_FROM`-:data:`PORTS_TO`, from an offset that differs between
    processes (several runs on one machine), skipping ports that are bound."""
    global _next_port
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    slices = 8
    size = (PORTS_TO - PORTS_FROM) // slices
    base = PORTS_FROM + (index % slices) * size
    if _next_port is None:
        _next_port = os.getpid() % size
    for _ in range(size):
        port = base + _next_port % size
        _next_port += 1
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the relay binds
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in {base}-{base + size - 1}")


def run_on_loop(loop_name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on plain asyncio or on uvloop (the relay runs on either)."""
    if loop_name == "uvloop":
        import pytest

        uvloop = pytest.importorskip("uvloop")
        uvloop.run(main())
    else:
        asyncio.run(main())


async def play_relay_handshake(ws: Any, fingerprint: str, agent: AgentProcess,
                               heartbeat_s: int = 30) -> dict[str, Any]:
    """The relay's side of the control handshake, for a test posing as the relay: a
    challenge, the agent's signed answer checked against its key, a ``welcome``."""
    import json

    from backline.common import keys, protocol

    # A real relay accepts a signature bound to its certificate hash or its key pins:
    # the pins are those the agent holds (the fake serves the real relay's certificate).
    pins = json.loads((agent.state_dir / "enrollment.json").read_text()).get("pins", [])
    handshake = protocol.RelayHandshake(fingerprint, also_bound=tuple(pins))
    await ws.send(handshake.challenge(time.time()))
    msg = handshake.receive_auth(await ws.recv())
    public = keys.public_raw(keys.load_private(agent.state_dir / "identity_key"))
    assert handshake.verify(msg, public)
    await ws.send(protocol.encode("welcome", agent_id=msg["agent_id"],
                                  heartbeat_s=heartbeat_s, relay_time=time.time()))
    return msg


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.1,
             explain: Callable[[], str] | None = None) -> Any:
    """``check()``'s first true value within ``timeout``; else an AssertionError, which
    ends with ``explain()`` when given (what the processes involved left behind)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    why = f"; {explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r}){why}")


class RelayProcess:
    def __init__(self, root: Path, extra_env: dict[str, str] | None = None,
                 nofile: int | None = None, exe: str = RELAY,
                 template: Path | None = None) -> None:
        """``template``: a data directory made by :func:`relay_template` to start from (a
        copy of it), instead of one the relay initialises itself (see there)."""
        self.root = root
        self.exe = exe  # the backline-relay to run (another install's, for the wheel test)
        self.nofile = nofile  # RLIMIT_NOFILE (soft and hard) of the relay, when set
        self.data_dir = root / "relay"
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.env = {**os.environ, "BACKLINE_DATA_DIR": str(self.data_dir),
                    "BACKLINE_LISTEN_PORT": str(self.port),
                    "BACKLINE_LISTEN_HOST": "127.0.0.1", "BACKLINE_LOG_LEVEL": "info",
                    **(extra_env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.admin_password: str | None = None
        #: Whether the admin's one-time password was replaced already (by admin_api).
        self.admin_password_changed = False
        if template is not None:
            shutil.copytree(template, self.data_dir)
            self.admin_password, self.admin_password_changed = ADMIN_PASSWORD, True
        self.log_path = root / "relay.log"
        self.starts = 0

    def cli(self, *args: str, check: bool = True, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe, *args], env=self.env, capture_output=True, text=True,
                              check=check, input=input, timeout=60)

    def start(self) -> RelayProcess:
        self.starts += 1
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([self.exe, "serve"], env=self.env, stdout=subprocess.PIPE,
                                     stderr=log, text=True,
                                     preexec_fn=self._limit if self.nofile else None)
        assert self.proc.stdout is not None
        first_start = not (self.data_dir / "initialised").exists()
        for _ in range(10):
            line = self.proc.stdout.readline()
            if "one-time password" in line:
                self.admin_password = line.split("one-time password ")[1].split()[0]
            if ("TLS SHA-256" in line and not first_start) or "one-time password" in line:
                break
        wait_for(self.healthy, 30, "the relay to answer /healthz")
        return self

    def _limit(self) -> None:
        import resource

        assert self.nofile is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def fds(self) -> int:
        """How many descriptors the relay process holds now."""
        assert self.proc is not None
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"relay exited with {self.proc.returncode}; "
                                 f"log:\n{self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + "/healthz", verify=self.tls(),
                             timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tls(self) -> ssl.SSLContext:
        """Trust exactly this relay's self-signed certificate (its SAN has 127.0.0.1)."""
        return ssl.create_default_context(cafile=str(self.data_dir / "tls.crt"))

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.assert_audit_catalogued()

    def assert_audit_catalogued(self) -> None:
        """Fail when the relay recorded an event that is not in the catalogue
        (relay/audit_events.py): raised in a request it is a 500, but in a socket's
        task or a timer it is only logged, so the log is read too."""
        text = self.log_path.read_text() if self.log_path.exists() else ""
        bad = [line for line in text.splitlines() if "audit catalogue violation" in line]
        assert not bad, "audit events not in the catalogue:\n" + "\n".join(bad[:10])

    def token(self, *args: str) -> str:
        """An enrollment token, made by ``backline-relay token create -q ARGS`` run in
        this process (the same command, environment and umask as its own process).

        Why in this process: nearly every test enrolls agents, and each ``token create``
        process cost about 1 s of CPU, nearly all of it importing the relay (measured
        2026-12-01 with process accounting: 270 relay CLI processes per suite run). The
        command's own process is still exercised by the tests that call ``cli``."""
        from typer.testing import CliRunner

        from backline.relay.cli import app

        mask = os.umask(0o077)  # as relay.cli.main sets it
        try:
            result = CliRunner().invoke(app, ["token", "create", "-q", *args], env=self.env)
        finally:
            os.umask(mask)
        if result.exit_code != 0:
            raise subprocess.CalledProcessError(result.exit_code, ["token", "create", *args],
                                                result.stdout, result.output)
        return result.stdout.strip()

    def log(self) -> str:
        return self.log_path.read_text()


class AgentProcess:
    def __init__(self, root: Path, name: str) -> None:
        self.state_dir = root / name
        self.name = name
        self.proc: subprocess.Popen[str] | None = None
        self.log_path = root / f"{name}.log"

    def cmd(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENT, "--state-dir", str(self.state_dir), *args],
                              capture_output=True, text=True, timeout=timeout)

    def enroll(self, token: str, *extra: str) -> subprocess.CompletedProcess[str]:
        return self.cmd("enroll", token, "--hostname", self.name, *extra)

    def start(self) -> AgentProcess:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([AGENT, "--state-dir", str(self.state_dir), "run"],
                                     stdout=log, stderr=subprocess.STDOUT, text=True)
        return self

    def stop(self) -> int | None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.returncode if self.proc else None

    @property
    def agent_id(self) -> str:
        import json

        return str(json.loads((self.state_dir / "enrollment.json").read_text())["agent_id"])

    def post_mortem(self) -> str:
        """What the agent left: exit status (a signal by name), status.json, its log.
        Why: an agent killed from outside (SIGKILL) writes neither a log line nor a
        status, and a timeout that only says "not online" does not tell that apart
        from an agent that runs but cannot connect."""
        code = self.proc.poll() if self.proc is not None else None
        if self.proc is None:
            how = "not started"
        elif code is None:
            how = "still running"
        elif code < 0:
            how = f"killed by {signal.Signals(-code).name}"
        else:
            how = f"exit status {code}"
        status_path = self.state_dir / "status.json"
        status = status_path.read_text().strip() if status_path.exists() else "none"
        log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
        return f"{how}; status.json: {status}; log:\n{log or '(empty)'}"


class Api:
    """An API client that signs in like the console: cookie, CSRF header, Origin."""

    def __init__(self, relay: RelayProcess) -> None:
        self.relay = relay
        self.http = httpx.Client(base_url=relay.url, verify=relay.tls(), timeout=30,
                                 headers={"origin": relay.url})
        self.csrf = ""

    def login(self, username: str, password: str, totp: str | None = None) -> httpx.Response:
        body: dict[str, str] = {"username": username, "password": password}
        if totp:
            body["totp"] = totp
        r = self.http.post("/api/v1/auth/login", json=body)
        if r.status_code == 200:
            self.csrf = r.json()["csrf_token"]
            # httpx refuses to send a Secure cookie back over... it does over https: keep it.
        return r

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if method not in ("GET", "HEAD"):
            headers.setdefault("x-csrf-token", self.csrf)
        return self.http.request(method, path, headers=headers, **kw)

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("POST", path, **kw)

    def close(self) -> None:
        self.http.close()


def admin_api(relay: RelayProcess, new_password: str = ADMIN_PASSWORD) -> Api:
    """Sign in as the first admin and replace the one-time password (unless a relay
    started from a :func:`relay_template` has ``new_password`` already)."""
    api = Api(relay)
    assert relay.admin_password, "the relay printed no one-time password"
    r = api.login("admin", relay.admin_password)
    assert r.status_code == 200, r.text
    if relay.admin_password_changed and relay.admin_password == new_password:
        assert not r.json()["user"]["must_change_password"], r.text
        return api
    r = api.post("/api/v1/auth/password",
                 json={"current": relay.admin_password, "new": new_password})
    assert r.status_code == 200, r.text
    relay.admin_password, relay.admin_password_changed = new_password, True
    return api


def relay_template(root: Path) -> Path:
    """A relay's data directory as a relay left it after its first start and its admin's
    first sign-in (one-time password replaced by :data:`ADMIN_PASSWORD`, then signed
    out), to be copied by ``RelayProcess(..., template=)``.

    Why: the first start migrates an empty database, makes the keys and certificate and
    hashes the one-time password; the first sign-in replaces it (two more argon2
    runs). Started from a copy (2 ms), a relay took 0.6 s of CPU to a signed-in admin
    instead of 1.2 s (measured 2026-12-01, on the shared 2-core machine).
    tests/conftest.py's ``relay`` fixture (78 of the 611 tests of scripts/test's first
    run) starts from one made once per test process. Relays started from one copy share its keys and
    certificate: a test about a relay's own keys starts it without. Every relay started
    without a template (all but the ``relay`` fixture's) still does the first start and
    sign-in for real."""
    relay = RelayProcess(root).start()
    try:
        api = admin_api(relay)
        # Signed out: a copy holds no web session of its own (a test counting the
        # admin's sessions sees only those it made).
        assert api.post("/api/v1/auth/logout").status_code == 200
        api.close()
    finally:
        relay.stop()
    return relay.data_dir


def audit_actions(relay: RelayProcess) -> list[dict[str, Any]]:
    """The relay's audit trail, oldest first, as ``backline-relay audit export`` prints it
    (the same rows through the same ``row_to_event``), read in this process.

    Why not the CLI: tests poll the trail, often in loops, and each ``audit export``
    process cost about 0.6 s of CPU to import the relay's CLI (measured 2026-12-01); the
    suite ran hundreds of them. The CLI's own export is tested in test_audit_verify."""
    import json

    import sqlalchemy as sa

    from backline.relay import config as relay_config
    from backline.relay.audit import row_to_event
    from backline.relay.db import make_engine
    from backline.relay.schema import audit_events

    cfg = relay_config.load(environ=relay.env)
    engine = make_engine(cfg.effective_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(audit_events).order_by(audit_events.c.seq)
                                ).mappings().all()
    finally:
        engine.dispose()
    # Through JSON, as the CLI's lines were: the same types (lists, not tuples).
    return [json.loads(json.dumps({**row_to_event(r), "prev_hash": r["prev_hash"],
                                   "hash": r["hash"]}, ensure_ascii=False)) for r in rows]


def staged_diagnostics(closed_port: int) -> str:
    """An agent config (``agent.toml``) that stages three findings on any machine: a
    name that cannot resolve, an endpoint nobody listens on, every disk "almost full"
    (dns-lookup-failed, endpoint-unreachable, disk-almost-full)."""
    return (f'[diagnostics]\ndns_names = ["does-not-exist.invalid"]\n'
            f'endpoints = ["127.0.0.1:{closed_port}"]\n\n'
            "[thresholds]\ndisk_used_pct = 1\ndisk_critical_pct = 100\n")


@contextmanager
def bystander(root: Path, relay: RelayProcess, admin: Api) -> Iterator[AgentProcess]:
    """An enrolled agent online for the duration: proof the relay keeps serving others
    while one connection is being refused."""
    agent = AgentProcess(root, "bystander")
    assert agent.enroll(relay.token()).returncode == 0
    agent.start()

    def online() -> bool:
        assert agent.proc is not None
        if agent.proc.poll() is not None:  # dead: say so now, and how, not in 20 s
            raise AssertionError(f"the bystander ended before it was online: "
                                 f"{agent.post_mortem()}")
        return bool(admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"])

    try:
        wait_for(online, 20, "the bystander online", explain=agent.post_mortem)
        yield agent
        assert admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"], \
            f"the bystander went offline: {agent.post_mortem()}"
    finally:
        agent.stop()


@contextmanager
def browser_socket(relay: RelayProcess, api: Api, path: str) -> Iterator[Any]:
    """A WebSocket to ``path`` opened as the console opens it: the page's ``Origin`` and
    the signed-in ``api``'s session cookie."""
    from websockets.sync.client import connect

    from backline.common.tlspin import client_context

    cookie = f"__Host-backline={api.http.cookies.get('__Host-backline')}"
    with connect(relay.url.replace("https", "wss") + path, ssl=client_context(),
                 open_timeout=10,
                 additional_headers={"Origin": relay.url, "Cookie": cookie}) as ws:
        yield ws


def served(relay: RelayProcess) -> tuple[str, str]:
    """(certificate SHA-256, SPKI pin) of what the relay serves to a new connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", relay.port), 5) as raw, \
            ctx.wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True) or b""
    from backline.common.tlspin import cert_fingerprint, spki_pin_der

    return cert_fingerprint(der), spki_pin_der(der)


def send_upgrade(sock: ssl.SSLSocket, path: str, host: str = "relay", extra: str = ""
                 ) -> tuple[bytes, bytes]:
    """Send a raw WebSocket upgrade of ``path`` on ``sock``; the answer's status line
    and headers, and whatever came after them."""
    import base64

    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Key: {key}\r\n{extra}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    response, _, rest = head.partition(b"\r\n\r\n")
    return response, rest
