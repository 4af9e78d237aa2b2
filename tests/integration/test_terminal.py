"""The terminal (``shell``), with real processes: a relay, an agent with a pty shell
(tests/shell_agent.py: the agent's own when it has one), and a real WebSocket client
speaking the console's side of the terminal protocol (docs/sessions.md) (tests/terminal_client.py).

What is proved: a command runs and its output comes back; resizes reach the pty;
the agent's ``deny`` is refused and audited on both sides; every terminal is
recorded (asciicast, SHA-256 in the audit trail, replayable through the API, the
playback audited); output is passed on as the bytes it is (invalid UTF-8, escape
garbage); a second console watches but cannot type until given control; a flood
does not grow the relay's memory; a recording that cannot be written ends the
terminal.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from backline.relay import term_index
from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
)
from tests.integration.test_sessions import activity, make_user, open_session, start_agent
from tests.terminal_client import TerminalClient

REPO = Path(__file__).resolve().parents[2]
ALLOW = '[capabilities]\ninfo = "allow"\nshell = "allow"\n'
DENY = '[capabilities]\ninfo = "allow"\nshell = "deny"\n'
MiB = 1024 * 1024


class ShellAgent(AgentProcess):
    """:class:`AgentProcess`, started as ``python -m tests.shell_agent``."""

    def start(self) -> ShellAgent:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.shell_agent", "--state-dir", str(self.state_dir),
             "run"], stdout=log, stderr=subprocess.STDOUT, text=True, cwd=str(REPO))
        return self


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    agent: AgentProcess


def start_shell_agent(root: Path, relay: RelayProcess, admin: Api, name: str,
                      policy: str = ALLOW) -> AgentProcess:
    return start_agent(root, relay, admin, name, policy=policy,
                       agent=ShellAgent(root, name))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("terminal")
    relay = RelayProcess(root).start()
    admin = admin_api(relay)
    agent = None
    try:
        agent = start_shell_agent(root, relay, admin, "term-1")
        yield World(root, relay, admin, agent)
    finally:
        if agent is not None:
            agent.stop()
        admin.close()
        relay.stop()


def stream(session_id: str, query: str = "cols=100&rows=30") -> str:
    return f"/api/v1/sessions/{session_id}/stream/shell?{query}"


def trail(relay: RelayProcess, session_id: str, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"] == action
            and e["target"] == f"session:{session_id}"]


def shell_session(world: World) -> dict[str, Any]:
    return open_session(world.admin, world.agent.agent_id, capabilities=["info", "shell"])


def test_echo_resize_exit_and_the_recording_replays(world: World) -> None:
    relay, admin = world.relay, world.admin
    session = shell_session(world)
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws)
            ready = term.message("ready")
            assert ready["role"] == "control" and ready["recorded"] is True
            assert ready["keystrokes_recorded"] is False
            assert (ready["cols"], ready["rows"]) == (100, 30)
            term.type("echo $((6*7))\r")
            term.line(b"42")
            term.type("stty size\r")
            term.line(b"30 100")
            term.resize(120, 40)
            term.type("stty size\r")
            term.line(b"40 120")
            term.type("exit\r")
            done = term.message("exit")
        assert done["exit_status"] == 0, done
        rec = done["recording"]
        assert rec["id"].startswith("rc_") and len(rec["sha256"]) == 64 and rec["bytes"] > 0

        channel = [e for e in trail(relay, session["id"], "session.channel")
                   if e["details"]["capability"] == "shell"]
        assert len(channel) == 1 and channel[0]["details"]["exit_status"] == 0
        assert channel[0]["details"]["sha256"] == rec["sha256"]
        assert channel[0]["details"]["recording"] == rec["id"]
        stored = trail(relay, session["id"], "recording.stored")
        assert [(e["details"]["recording"], e["details"]["sha256"]) for e in stored] == [
            (rec["id"], rec["sha256"])]

        listed = admin.get(f"/api/v1/sessions/{session['id']}/recordings").json()
        assert [(r["id"], r["sha256"], r["bytes"]) for r in listed["recordings"]] == [
            (rec["id"], rec["sha256"], rec["bytes"])]
        played = admin.get(f"/api/v1/recordings/{rec['id']}")
        assert played.status_code == 200, played.text
        assert played.headers["content-type"].startswith("application/x-asciicast")
        assert hashlib.sha256(played.content).hexdigest() == rec["sha256"]
        lines = played.content.decode().splitlines()
        header = json.loads(lines[0])
        assert header["version"] == 2 and (header["width"], header["height"]) == (100, 30)
        events = [json.loads(line) for line in lines[1:]]
        assert {e[1] for e in events} <= {"o", "r"}, "keystrokes are off by default"
        assert "42" in "".join(e[2] for e in events if e[1] == "o")
        assert [e[2] for e in events if e[1] == "r"] == ["120x40"]
        times = [e[0] for e in events]
        assert times == sorted(times)
        replays = [e for e in audit_actions(relay) if e["action"] == "recording.played"]
        assert replays[-1]["target"] == f"recording:{rec['id']}"
        assert replays[-1]["details"]["session"] == session["id"]
        assert replays[-1]["actor"] == "user:admin"
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")


def test_output_passes_as_bytes_and_bad_messages_are_refused(world: World) -> None:
    relay, admin = world.relay, world.admin
    session = shell_session(world)
    garbage = b"\xff\xfe\x1b[999;999H\x1b]0;\x07\xc0\x80\xe2\x82"
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws)
            term.message("ready")
            term.type("printf 'A\\377\\376\\033[999;999H\\033]0;\\007\\300\\200\\342\\202Z'\r")
            term.output(b"A" + garbage + b"Z")
            term.send(type="resize", cols=0, rows=10)  # out of bounds: ends it, audited
            said = term.message("error")
        assert said["error"] == "bad_message" and "cols" in said["detail"], said
        failed = trail(relay, session["id"], "session.channel.failed")
        assert failed[-1]["details"]["reason"] == "bad_message"
        with browser_socket(relay, admin, stream(session["id"], "cols=9999&rows=1")) as ws:
            refused = json.loads(ws.recv(10))
        assert refused["type"] == "error" and refused["error"] == "bad_field", refused
        # A bad message ends the terminal but does not erase what was done in it: the
        # recording is kept, and the failure's event names it and its SHA-256.
        assert said["recording"]["id"].startswith("rc_"), said
        rows = admin.get(f"/api/v1/sessions/{session['id']}/recordings").json()["recordings"]
        assert [(r["id"], r["sha256"]) for r in rows] == [
            (said["recording"]["id"], said["recording"]["sha256"])]
        assert failed[-1]["details"]["recording"] == rows[0]["id"]
        assert failed[-1]["details"]["sha256"] == rows[0]["sha256"]
        played = admin.get(f"/api/v1/recordings/{rows[0]['id']}")
        assert hashlib.sha256(played.content).hexdigest() == rows[0]["sha256"]
        assert "\ufffd" in played.content.decode(), "bad bytes are U+FFFD in the recording"
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")


def test_closing_the_session_ends_the_terminal_and_keeps_its_recording(world: World) -> None:
    relay, admin = world.relay, world.admin
    session = shell_session(world)
    with browser_socket(relay, admin, stream(session["id"])) as ws:
        term = TerminalClient(ws)
        term.message("ready")
        term.type("echo open$((2*21))\r")
        term.line(b"open42")
        closed = admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
        assert closed.status_code == 200 and closed.json()["state"] == "closed"
        done = term.message("exit")
    assert done["recording"]["id"], done
    channel = [e for e in trail(relay, session["id"], "session.channel")
               if e["details"]["capability"] == "shell"]
    assert channel[-1]["details"]["closed_by"] == "session_closed"
    assert not trail(relay, session["id"], "session.channel.failed")
    assert [e["details"]["reason"] for e in trail(relay, session["id"], "session.end")] == [
        "technician"]


def test_policy_deny_is_refused_and_audited_on_both_sides(world: World) -> None:
    relay, admin = world.relay, world.admin
    denied = start_shell_agent(world.root, relay, admin, "term-deny", policy=DENY)
    try:
        session = open_session(admin, denied.agent_id, capabilities=["info", "shell"])
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            said = json.loads(ws.recv(20))
        assert said["type"] == "error" and said["error"] == "refused_by_agent", said
        refused = trail(relay, session["id"], "session.channel.refused")
        assert [(e["details"]["capability"], e["details"]["reason"]) for e in refused] == [
            ("shell", "refused_by_agent")]
        local = [e for e in activity(denied) if e.get("session_id") == session["id"]
                 and e["event"] == "channel.refused"]
        assert [(e["capability"], e["reason"]) for e in local] == [("shell", "policy_deny")]
        assert admin.get(f"/api/v1/sessions/{session['id']}/recordings"
                         ).json()["recordings"] == []
        # A session not granted the shell refuses it before the agent is asked.
        plain = open_session(admin, world.agent.agent_id, capabilities=["info"])
        with browser_socket(relay, admin, stream(plain["id"])) as ws:
            said = json.loads(ws.recv(20))
        assert said["error"] == "not_in_session", said
        admin.request("DELETE", f"/api/v1/sessions/{plain['id']}")
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    finally:
        denied.stop()


def test_a_second_viewer_sees_but_types_only_when_given_control(world: World) -> None:
    relay, admin = world.relay, world.admin
    watcher = make_user(admin, relay, "watcher", "technician", ("default",))
    session = shell_session(world)
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws1:
            owner = TerminalClient(ws1)
            ready = owner.message("ready")
            owner.type("echo one$((1+1))\r")
            owner.line(b"one2")
            path = stream(session["id"], f"terminal={ready['terminal']}")
            with browser_socket(relay, watcher, path) as ws2:
                viewer = TerminalClient(ws2)
                seen = viewer.message("ready")
                assert seen["role"] == "view" and seen["terminal"] == ready["terminal"]
                viewer.type("echo viewer$((2+2))\r")  # dropped
                viewer.resize(20, 5)  # dropped too
                owner.type("echo mark$((3+3))\r")
                owner.line(b"mark6")
                viewer.line(b"mark6")
                assert b"viewer4" not in owner.out and b"viewer" not in owner.out
                owner.type("stty size\r")
                owner.line(b"30 100")
                owner.send(type="grant", to="watcher")
                assert owner.message("role")["role"] == "view"
                assert viewer.message("role")["role"] == "control"
                viewer.type("echo granted$((2+3))\r")
                viewer.line(b"granted5")
                owner.line(b"granted5")
                owner.type("echo owner$((4+4))\r")  # no longer the controller: dropped
                viewer.type("echo after$((5+5))\r")
                viewer.line(b"after10")
                owner.line(b"after10")
                assert b"owner8" not in viewer.out
                viewer.type("exit\r")
                assert viewer.message("exit")["exit_status"] == 0
                assert owner.message("exit")["recording"]["id"]
        dropped = trail(relay, session["id"], "terminal.input.dropped")
        assert [(e["actor"], e["details"]["what"]) for e in dropped] == [
            ("user:watcher", "keystrokes"), ("user:admin", "keystrokes")]
        assert [e["details"]["to"] for e in trail(relay, session["id"], "terminal.control")
                ] == ["watcher"]
        joined = trail(relay, session["id"], "terminal.join")
        assert [e["actor"] for e in joined] == ["user:watcher"]
    finally:
        watcher.close()
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def term_index_done(relay: RelayProcess, session_id: str, timeout: float = 120) -> None:
    """Wait until the session's terminal recording is indexed (its row in
    ``recording_indexes``), read from the relay's database in this process."""
    import sqlalchemy as sa

    from backline.relay import config as relay_config
    from backline.relay.db import make_engine
    from backline.relay.schema import recording_indexes

    engine = make_engine(relay_config.load(environ=relay.env).effective_database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if conn.execute(sa.select(recording_indexes.c.rows).where(
                        recording_indexes.c.session_id == session_id)).first():
                    return
            time.sleep(0.2)
    finally:
        engine.dispose()
    raise AssertionError(f"session {session_id}'s recording was not indexed in {timeout} s")


def test_a_flood_does_not_grow_the_relay(world: World) -> None:
    """``yes | head -c 1G`` with a console that reads, then stops reading for a while
    (as a busy browser tab does), then reads on. With flow control the agent's pty
    holds the flood back: the relay keeps at most a window. Without it the relay would
    buffer everything the agent wrote while the console was not reading. The flood is
    interrupted (^C) once 48 MiB came through (the whole GiB takes minutes on a shared
    machine; ``bench/terminal.py`` runs it to the end), and the terminal answers. Then
    its recording (over 80 MiB: indexed by its head and tail) is stored, indexed (the
    word typed after the flood is found) and played back whole, all while the relay's
    memory is sampled."""
    relay, admin = world.relay, world.admin
    assert relay.proc is not None
    session = shell_session(world)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        assert relay.proc is not None
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kib(relay.proc.pid))
            stop.wait(0.05)

    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws, keep=False)
            tail = bytearray()

            def keep_tail(data: bytes) -> None:
                tail.extend(data)
                del tail[:-4096]

            term.on_output = keep_tail
            term.message("ready")
            term.type("echo warm$((1+1))\r")
            term.until(lambda: b"warm2" in tail, 20, "the shell")
            before = rss_kib(relay.proc.pid)
            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                term.type("yes | head -c 1G\r")
                term.until(lambda: term.received > 32 * MiB, 240, "32 MiB of flood")
                time.sleep(5)  # the console stops reading; the flood does not stop
                paused_at = term.received
                term.until(lambda: term.received > 48 * MiB, 240, "48 MiB of flood")
                term.type(b"\x03")
                term.type("echo still$((9*9))\r")
                term.until(lambda: b"still81" in tail, 60, "an answer after the flood")
                ws.close()
                # The terminal ends: its recording (over 80 MiB of asciicast) is
                # stored, hashed and indexed for search, still while RSS is sampled.
                # Indexing read it whole before (found 2026-12-02: hundreds of MiB).
                term_index_done(relay, session["id"])
                # And played back whole: streamed from the file, never held in memory.
                rec = admin.request("GET", f"/api/v1/sessions/{session['id']}/recordings"
                                    ).json()["recordings"][0]
                played, digest = 0, hashlib.sha256()
                with admin.http.stream("GET", f"/api/v1/recordings/{rec['id']}",
                                       timeout=120) as r:
                    assert r.status_code == 200, r.read()
                    for piece in r.iter_bytes():
                        played += len(piece)
                        digest.update(piece)
                assert (played, digest.hexdigest()) == (rec["bytes"], rec["sha256"])
                assert played > 2 * term_index.HEAD_TAIL  # indexed by head and tail
            finally:
                stop.set()
                sampler.join()
        growth_mib = (peak[0] - before) / 1024
        print(f"\nflood: {term.received / MiB:.0f} MiB received ({paused_at / MiB:.0f} MiB "
              f"at the pause), relay RSS {before / 1024:.1f} -> peak {peak[0] / 1024:.1f} MiB "
              f"(+{growth_mib:.1f} MiB), the recording stored, indexed and played back")
        assert growth_mib < 25, f"the relay grew {growth_mib:.1f} MiB during the flood"
        hits = admin.request("GET", "/api/v1/session-search",
                             params={"text": "still81"}).json()
        assert session["id"] in [s["id"] for s in hits["sessions"]], hits
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")


class FileSizeLimitedRelay(RelayProcess):
    """A relay whose files cannot grow past ``limit`` bytes (RLIMIT_FSIZE): a write past
    it fails in the kernel with EFBIG, the way a full disk fails one with ENOSPC.
    (Python ignores SIGXFSZ, so the write fails instead of killing the process.)"""

    limit = 6 * MiB

    def start(self) -> RelayProcess:
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return super().start()

    def _limit(self) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.limit, self.limit))


def test_a_recording_that_cannot_be_written_ends_the_terminal(tmp_path: Path) -> None:
    relay = FileSizeLimitedRelay(tmp_path).start()
    admin = admin_api(relay)
    agent = start_shell_agent(tmp_path, relay, admin, "term-full")
    try:
        session = open_session(admin, agent.agent_id, capabilities=["shell"])
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws, keep=False)
            term.message("ready")
            term.type("head -c 20000000 /dev/zero | od -v; echo never$((7*7))\r")
            said = term.message("error", timeout=120)
            while term.step(1):
                pass
        assert said["error"] == "recording_failed", said
        assert term.received < 7 * MiB, "output went on past what the recording could take"
        failed = trail(relay, session["id"], "session.channel.failed")
        assert [e["details"]["reason"] for e in failed] == ["recording_failed"]
        assert "EFBIG" in failed[0]["details"]["detail"] or "too large" in failed[0][
            "details"]["detail"]
        assert admin.get(f"/api/v1/sessions/{session['id']}/recordings"
                         ).json()["recordings"] == []
        leftovers = list((relay.data_dir / "blobs" / "tmp").glob("*.part"))
        assert leftovers == [], "the failed recording's partial file is removed"
        # The session is still there for what does not need a recording.
        assert admin.get(f"/api/v1/sessions/{session['id']}").json()["state"] == "ready"
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
        assert relay.healthy()
    finally:
        agent.stop()
        admin.close()
        relay.stop()


def test_a_terminal_whose_agent_is_killed_keeps_its_recording(world: World) -> None:
    relay, admin = world.relay, world.admin
    doomed = start_shell_agent(world.root, relay, admin, "term-doomed")
    try:
        session = open_session(admin, doomed.agent_id, capabilities=["shell"])
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws)
            term.message("ready")
            term.type("echo before$((6*6))\r")
            term.line(b"before36")
            assert doomed.proc is not None
            doomed.proc.kill()
            doomed.proc.wait(10)
            said = term.message("error", timeout=60)
        assert said["error"] == "agent_gone", said
        rows = admin.get(f"/api/v1/sessions/{session['id']}/recordings").json()["recordings"]
        assert len(rows) == 1, rows
        failed = [e for e in trail(relay, session["id"], "session.channel.failed")
                  if e["details"]["reason"] == "agent_gone"]
        assert [(e["details"]["recording"], e["details"]["sha256"]) for e in failed] == [
            (rows[0]["id"], rows[0]["sha256"])]
        played = admin.get(f"/api/v1/recordings/{rows[0]['id']}")
        assert hashlib.sha256(played.content).hexdigest() == rows[0]["sha256"]
        assert "before36" in played.content.decode()
    finally:
        doomed.stop()


def test_terminal_is_only_for_a_terminal_and_only_in_its_own_session(world: World) -> None:
    """A technician who may only see a session cannot run a capability in it by adding
    ``terminal=`` to the stream socket, nor join another session's terminal."""
    relay, admin = world.relay, world.admin
    peeker = make_user(admin, relay, "peeker", "technician", ("default",))
    session = shell_session(world)
    other = shell_session(world)
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws1:
            owner = TerminalClient(ws1)
            ready = owner.message("ready")
            for capability in ("info", "diagnostics"):
                path = (f"/api/v1/sessions/{session['id']}/stream/{capability}"
                        f"?terminal={ready['terminal']}")
                with browser_socket(relay, peeker, path) as ws:
                    said = json.loads(ws.recv(10))
                    with pytest.raises(ConnectionClosed) as closed:
                        ws.recv(10)
                assert said["error"] == "bad_field" and "terminal" in said["detail"], said
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
            refused = [e for e in audit_actions(relay) if e["action"] == "session.stream.refused"
                       and e["actor"] == "user:peeker"]
            assert len(refused) == 2 and all(e["details"]["reason"] == "bad_field"
                                              for e in refused), refused
            assert not [e for e in trail(relay, session["id"], "session.channel")
                        if e["actor"] == "user:peeker"], "nothing ran for the peeker"
            # Another session's terminal is not joinable from this one.
            with browser_socket(relay, admin, stream(other["id"],
                                                     f"terminal={ready['terminal']}")) as ws:
                said = json.loads(ws.recv(10))
            assert said == {"type": "error", "error": "no_such_terminal",
                            "detail": "no such terminal is open in this session"}, said
            owner.type("exit\r")
            assert owner.message("exit")["exit_status"] == 0
    finally:
        peeker.close()
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
        admin.request("DELETE", f"/api/v1/sessions/{other['id']}")


def test_withdrawn_access_hangs_up_terminals_they_watch(world: World) -> None:
    relay, admin = world.relay, world.admin
    onlooker = make_user(admin, relay, "onlooker", "technician", ("default",))
    bystander = make_user(admin, relay, "bystander", "technician", ("default",))
    session = shell_session(world)
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws1:
            owner = TerminalClient(ws1)
            ready = owner.message("ready")
            path = stream(session["id"], f"terminal={ready['terminal']}")
            with browser_socket(relay, onlooker, path) as ws2:
                viewer = TerminalClient(ws2)
                viewer.message("ready")
                uid = next(u["id"] for u in admin.get("/api/v1/users").json()["users"]
                           if u["username"] == "onlooker")
                assert admin.request("PATCH", f"/api/v1/users/{uid}",
                                     json={"disabled": True}).status_code == 200
                said = viewer.message("error")
                assert said["error"] == "technician_disabled", said
                viewer.until(lambda: viewer.closed, 10, "the hang-up")
            with browser_socket(relay, bystander, path) as ws3:
                other = TerminalClient(ws3)
                other.message("ready")
                gid = next(g["id"] for g in admin.get("/api/v1/groups").json()["groups"]
                           if g["name"] == "default")
                assert admin.request("DELETE", f"/api/v1/groups/{gid}/grants/bystander"
                                     ).status_code == 200
                said = other.message("error")
                assert said["error"] == "grant_withdrawn", said
                other.until(lambda: other.closed, 10, "the hang-up")
            owner.type("echo still$((3*3))\r")  # the owner's terminal goes on
            owner.line(b"still9")
            owner.type("exit\r")
            assert owner.message("exit")["exit_status"] == 0
        dropped = trail(relay, session["id"], "terminal.viewer.dropped")
        assert [(e["details"]["user"], e["details"]["reason"]) for e in dropped] == [
            ("onlooker", "technician_disabled"), ("bystander", "grant_withdrawn")]
    finally:
        onlooker.close()
        bystander.close()
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")


def test_a_console_that_acks_without_reading_does_not_grow_the_relay(world: World) -> None:
    """A hostile console starts a flood, then never reads its socket but acknowledges
    output as fast as it likes. Acks count only what its socket took, so the relay
    refuses acks past that (the terminal ends, ``bad_message``), and what waits for the
    console is bounded: the relay's memory stays flat either way."""
    relay, admin = world.relay, world.admin
    assert relay.proc is not None
    session = shell_session(world)
    try:
        with browser_socket(relay, admin, stream(session["id"])) as ws:
            term = TerminalClient(ws)
            term.message("ready")
            term.type("echo warm$((1+2))\r")
            term.line(b"warm3")
            before = rss_kib(relay.proc.pid)
            peak = before
            term.type("yes | head -c 1G\r")
            claimed = term.received
            time.sleep(1)  # the flood is under way, a window of it on its way here
            deadline = time.monotonic() + 10
            try:
                while time.monotonic() < deadline:
                    # "rendered" at 32 KiB a step (~3 MiB/s), never read: slower than
                    # the flood, so a relay that counted queued bytes would take every
                    # ack and buffer the flood for this console
                    claimed += 32 * 1024
                    term.send(type="ack", bytes=claimed)
                    time.sleep(0.01)
                    peak = max(peak, rss_kib(relay.proc.pid))
            except ConnectionClosed:
                pass  # dropped: the relay refused the ack and ended the terminal
            growth_mib = (peak - before) / 1024
        print(f"\nhostile acks: claimed {claimed / MiB:.0f} MiB, relay RSS "
              f"{before / 1024:.1f} -> peak {peak / 1024:.1f} MiB (+{growth_mib:.1f} MiB)")
        assert growth_mib < 12, f"the relay grew {growth_mib:.1f} MiB"
        wait = time.monotonic() + 30
        while time.monotonic() < wait:
            failed = trail(relay, session["id"], "session.channel.failed")
            if failed:
                break
            time.sleep(0.5)
        assert [e["details"]["reason"] for e in failed] == ["bad_message"], failed
        assert "delivered" in failed[0]["details"]["detail"]
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
