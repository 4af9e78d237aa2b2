"""Attended sessions with real processes: a technician makes a code, the customer runs
the exact command the console shows (``backline-agent join``) in a subprocess and
answers the prompt; the session works, leaves nothing behind, and the code is spent.
Wrong codes are rate-limited per address and across the relay, and audited."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from backline.common import keys, protocol
from backline.common.tlspin import client_context
from backline.relay.datadir import pem_spki_pin
from tests.harness import (
    AGENT,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
    wait_for,
)


class JoinProcess:
    """``backline-agent join ...`` as the customer runs it, in an empty home directory."""

    def __init__(self, command: str, home: Path) -> None:
        argv = shlex.split(command)
        assert argv[:2] == ["backline-agent", "join"], command
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
        env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local/share"),
                   XDG_CONFIG_HOME=str(home / ".config"), TMPDIR=str(home))
        self.proc = subprocess.Popen([AGENT, *argv[1:]], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, cwd=home, env=env)
        self._out: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            ch = self.proc.stdout.read(1)
            if not ch:
                return
            self._out.append(ch)

    @property
    def output(self) -> str:
        return "".join(self._out)

    def wait_for(self, text: str, timeout: float = 20) -> None:
        wait_for(lambda: text in self.output or self.proc.poll() is not None, timeout,
                 f"{text!r} from join")
        assert text in self.output, (self.output, self.stderr())

    def answer(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def make_code(api: Api, **body: Any) -> dict[str, Any]:
    r = api.post("/api/v1/session-codes", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


def session_state(api: Api, session_id: str) -> dict[str, Any]:
    data: dict[str, Any] = api.get(f"/api/v1/sessions/{session_id}").json()
    return data


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*"))


def test_attended_session_end_to_end(tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    code = make_code(admin, reason="printer offline", ticket="T-7")
    pin = pem_spki_pin(relay.data_dir / "tls.crt")
    assert code["command"] == (f"backline-agent join --relay {relay.url} --pin {pin} "
                               f"{code['code']}")
    assert len(code["code"]) == 11 and code["code"][3] == code["code"][7] == "-"
    assert code["expires_at"] - time.time() == pytest.approx(600, abs=30)
    assert session_state(admin, code["session_id"])["state"] == "waiting"

    home = tmp_path / "customer"
    home.mkdir()
    join = JoinProcess(code["command"], home)
    try:
        join.wait_for("Allow? [y/N]")
        assert ("Technician admin (printer offline) [ticket T-7] asks to start a support "
                "session") in join.output
        assert session_state(admin, code["session_id"])["state"] == "consent"
        join.answer("y")
        wait_for(lambda: session_state(admin, code["session_id"])["state"] == "ready", 20,
                 "the attended session to be ready")
        row = session_state(admin, code["session_id"])
        assert row["mode"] == "attended" and row["agent_id"].startswith("at_")
        assert row["remote_address"] == "127.0.0.1" and row["remote_hostname"]

        r = admin.post(f"/api/v1/sessions/{code['session_id']}/channels/info")
        assert r.status_code == 200, r.text
        info = r.json()["output"]
        assert info["session"]["mode"] == "attended"
        assert info["session"]["principal"] == row["agent_id"]

        # The code is spent: a second customer (or an attacker) gets nothing.
        again = subprocess.run([AGENT, *shlex.split(code["command"])[1:]], input="y\n",
                               capture_output=True, text=True, timeout=30, cwd=home)
        assert again.returncode == 5, again
        assert "wrong, already used or expired" in again.stderr

        r = admin.request("DELETE", f"/api/v1/sessions/{code['session_id']}")
        assert r.status_code == 200 and r.json()["close_reason"] == "technician"
        assert join.wait() == 0, join.stderr()
        assert "Session ended" in join.output and "Nothing was installed" in join.output
        assert "[backline] channel.start info" in join.output  # the customer saw it
    finally:
        join.kill()
    assert files_under(home) == [], "join left files behind"
    actions = [e["action"] for e in audit_actions(relay)
               if e["target"] in (f"session:{code['session_id']}", "session-code")]
    assert actions == ["session.code.create", "session.join", "session.join.accepted",
                       "session.start", "session.channel", "session.join.refused",
                       "session.end"]
    refused = [e for e in audit_actions(relay) if e["action"] == "session.join.refused"]
    assert refused[-1]["details"]["reason"] == "code_used"


def test_customer_declines_or_ends_the_session(tmp_path: Path, relay: RelayProcess,
                                               admin: Api) -> None:
    home = tmp_path / "customer"
    home.mkdir()
    declined = make_code(admin, reason="just checking")
    join = JoinProcess(declined["command"], home)
    try:
        join.wait_for("Allow? [y/N]")
        join.answer("n")
        assert join.wait() == 7
        assert "Declined: no session was started." in join.output
    finally:
        join.kill()
    row = session_state(admin, declined["session_id"])
    assert row["state"] == "closed" and row["close_reason"] == "declined"

    ended = make_code(admin)
    join = JoinProcess(ended["command"], home)
    try:
        join.wait_for("Allow? [y/N]")
        join.answer("yes")
        join.wait_for("Press Ctrl-C to end it")
        wait_for(lambda: session_state(admin, ended["session_id"])["state"] == "ready", 20,
                 "ready")
        join.proc.send_signal(signal.SIGINT)
        assert join.wait() == 0, join.stderr()
    finally:
        join.kill()
    row = session_state(admin, ended["session_id"])
    assert row["state"] == "closed" and row["close_reason"] == "customer"
    assert files_under(home) == []
    trail = {e["action"]: e for e in audit_actions(relay)
             if e["target"] == f"session:{ended['session_id']}"}
    assert trail["session.end"]["actor"] == "customer@127.0.0.1"
    assert [e["action"] for e in audit_actions(relay)
            if e["target"] == f"session:{declined['session_id']}"][-2:] == [
        "session.join.declined", "session.open.failed"]


def _join_frame(code: str) -> str:
    return protocol.encode("join", code=code,
                           public_key=protocol.b64e(keys.public_raw(keys.generate())),
                           hostname="guesser", os="Linux", os_version="6", arch="x86_64",
                           version="0")


def try_code(relay: RelayProcess, code: str, source: str = "127.0.0.1") -> dict[str, Any]:
    """One join attempt from ``source`` (any 127.x address reaches the relay on Linux)."""
    sock = socket.create_connection(("127.0.0.1", relay.port), timeout=10,
                                    source_address=(source, 0))
    with connect(f"wss://127.0.0.1:{relay.port}/agent/join", sock=sock, ssl=client_context(),
                 server_hostname="127.0.0.1", open_timeout=10) as ws:
        try:
            ws.send(_join_frame(code))
        except ConnectionClosed:
            pass
        reply: dict[str, Any] = json.loads(ws.recv(10))
        return reply


def test_wrong_codes_are_rate_limited_per_address_and_globally(tmp_path: Path) -> None:
    """Per address, and relay-wide for repeat guesses (an address's third try on); an
    address's first tries have their own relay-wide lane, so repeat guessers cannot lock
    out a customer who types the code they were read (docs/security.md)."""
    relay = RelayProcess(tmp_path, {"BACKLINE_SESSION_CODE_FAILURES_GLOBAL": "4"}).start()
    admin = admin_api(relay)
    try:
        real = make_code(admin)
        digits = real["code"].replace("-", "")
        wrong = f"{(int(digits) + 1) % 10**9:09d}"
        # Per address: five wrong codes, then even the right one is refused unread.
        for _ in range(5):
            assert try_code(relay, wrong)["code"] == "bad_code"
        limited = try_code(relay, digits)
        assert limited["code"] == "rate_limited" and "try again in" in limited["message"]
        # The command line says the same, with its own exit status.
        cli = subprocess.run([AGENT, *shlex.split(real["command"])[1:]], input="n\n",
                             capture_output=True, text=True, timeout=30)
        assert cli.returncode == 5 and "too many wrong codes" in cli.stderr
        bad = subprocess.run([AGENT, "join", "--relay", relay.url, "--pin", "ab" * 32,
                              "12-34"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and "nine digits" in bad.stderr
        # Relay-wide: 127.0.0.1's tries 3-5 and 127.0.0.2's third reach the repeat limit
        # of 4, so 127.0.0.2's fourth try is refused unread, even with the right code...
        for _ in range(3):
            assert try_code(relay, wrong, "127.0.0.2")["code"] == "bad_code"
        assert try_code(relay, digits, "127.0.0.2")["code"] == "rate_limited"
        # ...while an address's first try is still looked at.
        assert try_code(relay, wrong, "127.0.0.3")["code"] == "bad_code"
        # The right code was never spent by all this.
        assert session_state(admin, real["session_id"])["state"] == "waiting"
    finally:
        admin.close()
        relay.stop()
    events = audit_actions(relay)
    refused = [e for e in events if e["action"] == "session.join.refused"]
    assert [e["details"]["reason"] for e in refused] == ["code_unknown"] * 9
    assert {e["details"]["address"] for e in refused} == {"127.0.0.1", "127.0.0.2",
                                                         "127.0.0.3"}
    limited_events = [e for e in events if e["action"] == "session.join.rate_limited"]
    assert [(e["details"]["address"], e["details"]["reason"]) for e in limited_events] == [
        ("127.0.0.1", "address"), ("127.0.0.1", "address"), ("127.0.0.2", "repeat")]
    assert digits not in relay.log(), "a session code reached the log"


@contextlib.contextmanager
def live_socket(relay: RelayProcess, api: Api) -> Iterator[Any]:
    with browser_socket(relay, api, "/api/v1/live") as ws:
        assert json.loads(ws.recv(5))["type"] == "hello"
        yield ws


def session_events(ws: Any, seconds: float) -> list[dict[str, Any]]:
    """Every ``session`` event the socket gets within ``seconds``."""
    got, end = [], time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        try:
            event = json.loads(ws.recv(left))
        except TimeoutError:
            break
        if event["type"] == "session":
            got.append(event)
    return got


def test_live_events_of_an_attended_session_reach_its_technician_only(
        tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    """An attended session has no group: its technician sees it start live (the
    console's session page follows it); another technician does not."""
    apis = {}
    for name in ("ann", "bob"):
        relay.cli("user", "create", name, "--role", "technician", "--password-stdin",
                  input=f"{name}'s password 123\n")
        apis[name] = Api(relay)
        assert apis[name].login(name, f"{name}'s password 123").status_code == 200
    code = make_code(apis["ann"], reason="printer")
    home = tmp_path / "customer"
    home.mkdir()
    with (live_socket(relay, apis["ann"]) as ann_live,
          live_socket(relay, apis["bob"]) as bob_live):
        join = JoinProcess(code["command"], home)
        try:
            _watch_start(join, code, ann_live, bob_live)
        finally:
            join.kill()
    for api in apis.values():
        api.close()


def _watch_start(join: JoinProcess, code: dict[str, Any], ann_live: Any, bob_live: Any
                 ) -> None:
    join.wait_for("Allow? [y/N]")
    join.answer("y")
    deadline = time.monotonic() + 20
    start = None
    while start is None and time.monotonic() < deadline:
        start = next((e for e in session_events(ann_live, 1) if e["event"] == "start"), None)
    assert start is not None, "ann saw no start of her attended session"
    assert start["session"]["id"] == code["session_id"]
    assert start["session"]["state"] == "ready" and start["group_id"] is None
    assert session_events(bob_live, 2) == []


def test_a_yes_after_the_technician_closed_the_session_opens_nothing(
        tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    """The technician closes the session while the customer is still deciding; the
    customer's late "yes" must not move a closed session back to dialing (the state
    table refuses that move: before, the join socket's handler died on it)."""
    home = tmp_path / "customer"
    home.mkdir()
    code = make_code(admin, reason="late yes")
    join = JoinProcess(code["command"], home)
    try:
        join.wait_for("Allow? [y/N]")
        r = admin.request("DELETE", f"/api/v1/sessions/{code['session_id']}")
        assert r.status_code == 200 and r.json()["state"] == "closed", r.text
        join.answer("y")
        assert join.wait() != 0
        assert "the technician closed this session" in join.output + join.stderr()
    finally:
        join.kill()
    assert session_state(admin, code["session_id"])["state"] == "closed"
    assert "BadTransition" not in relay.log()
    assert "Exception in ASGI application" not in relay.log()
    actions = [e["action"] for e in audit_actions(relay)
               if e["target"] == f"session:{code['session_id']}"]
    assert "session.join.accepted" not in actions and "session.start" not in actions
