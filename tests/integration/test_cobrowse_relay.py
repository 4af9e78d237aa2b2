"""The co-browse room on the relay (``relay/capabilities/cobrowse.py``), with real
processes: a relay, an agent whose ``cobrowse`` room is a STAND-IN speaking the
contract's JSON lines without a browser (tests/cobrowse_standin.py: the agent's real
room is built separately), and real WebSocket clients speaking the console's side.

What is proved: the agent's lines reach two consoles (the technician's and a watcher
that joined later and catches up from the last snapshot); a line that is not the
contract's is dropped, not shown, not recorded, audited; the watcher's frames never
reach the agent; input goes on only after the agent says control is granted; hostile
frames (binary, not JSON, unknown types and fields, out-of-range numbers, too large)
are refused to that console, audited, and never reach the agent; the recording is a
blob of the agent's lines whose SHA-256 is audited and served back checked; a watcher
that does not read is dropped while the technician gets every line; a watcher whose
access is withdrawn is hung up; closing the session ends the co-browse and keeps its
recording; a customer who says no to viewing is a refusal, audited.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from backline.relay.net import conn_limits
from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
    wait_for,
)
from tests.integration.test_sessions import make_user, open_session, start_agent

REPO = Path(__file__).resolve().parents[2]
POLICY = '[capabilities]\ninfo = "allow"\ncobrowse = "allow"\n'
FRAMES, FRAME_KIB = 40, 512


class StandInAgent(AgentProcess):
    """:class:`AgentProcess`, started as ``python -m tests.cobrowse_standin``."""

    def __init__(self, root: Path, name: str, frames: int = FRAMES,
                 frame_kib: int = FRAME_KIB) -> None:
        super().__init__(root, name)
        self.lines_log = root / f"{name}.cobrowse.jsonl"
        self.frames, self.frame_kib = frames, frame_kib

    def start(self) -> StandInAgent:
        log = open(self.log_path, "a")
        env = {**os.environ, "STANDIN_LOG": str(self.lines_log), "STANDIN_TICK": "0.5",
               "STANDIN_FRAMES": str(self.frames), "STANDIN_FRAME_KIB": str(self.frame_kib)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.cobrowse_standin", "--state-dir",
             str(self.state_dir), "run"], stdout=log, stderr=subprocess.STDOUT, text=True,
            env=env, cwd=str(REPO))
        return self

    def received(self) -> list[dict[str, Any]]:
        if not self.lines_log.exists():
            return []
        return [json.loads(x) for x in self.lines_log.read_text().splitlines() if x]


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api
    watcher: Api
    agent: StandInAgent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("cobrowse")
    relay = RelayProcess(root).start()
    admin = admin_api(relay)
    agent = None
    watcher = make_user(admin, relay, "supervisor", "technician", ("default",))
    try:
        agent = StandInAgent(root, "cb-1")
        start_agent(root, relay, admin, "cb-1", policy=POLICY, agent=agent)
        yield World(root, relay, admin, watcher, agent)
    finally:
        if agent is not None:
            agent.stop()
        watcher.close()
        admin.close()
        relay.stop()


def stream(session_id: str, query: str = "") -> str:
    return f"/api/v1/sessions/{session_id}/stream/cobrowse" + (f"?{query}" if query else "")


def trail(relay: RelayProcess, session_id: str, prefix: str) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"].startswith(prefix)
            and e["target"] == f"session:{session_id}"]


class Console:
    """One console socket: frames as JSON, with what came kept."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seen: list[dict[str, Any]] = []

    def send(self, **frame: Any) -> None:
        self.ws.send(json.dumps(frame))

    def next(self, timeout: float = 20) -> dict[str, Any]:
        frame = json.loads(self.ws.recv(timeout=timeout))
        self.seen.append(frame)
        return frame

    def until(self, pred: Any, timeout: float = 20, what: str = "") -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {what or 'frame'} within {timeout} s: {self.seen[-5:]}"
            frame = self.next(left)
            if pred(frame):
                return frame

    def agent(self, kind: str, timeout: float = 20, **match: Any) -> dict[str, Any]:
        def pred(f: dict[str, Any]) -> bool:
            m = f.get("msg") or {}
            return (f["type"] == "agent" and m.get("type") == kind
                    and all(m.get(k) == v for k, v in match.items()))
        return self.until(pred, timeout, f"agent {kind} {match}")["msg"]  # type: ignore[no-any-return]

    def message(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        return self.until(lambda f: f["type"] == kind, timeout, kind)


@contextlib.contextmanager
def quiet_socket(relay: RelayProcess, api: Api, path: str) -> Iterator[Any]:
    """A console socket that buffers at most one frame in the client (``max_queue=1``):
    when the test does not read, the relay's sends back up, as a stalled browser's do."""
    from websockets.sync.client import connect

    from backline.common.tlspin import client_context

    cookie = f"__Host-backline={api.http.cookies.get('__Host-backline')}"
    with connect(relay.url.replace("https", "wss") + path, ssl=client_context(),
                 open_timeout=10, max_queue=1, max_size=4 * 2**20,
                 additional_headers={"Origin": relay.url, "Cookie": cookie}) as ws:
        yield ws


def hung_up_aborted(relay: RelayProcess) -> float:
    """Sockets the relay hung up and then aborted, as they did not close (/metrics)."""
    text = httpx.get(relay.url + "/metrics", verify=relay.tls(), timeout=10).text
    found = re.search(r'^backline_connections_timed_out_total\{phase="hung_up"\} (\S+)$',
                      text, re.M)
    return float(found[1]) if found else 0.0


def click(x: float = 40, y: float = 50) -> dict[str, Any]:
    return {"type": "input", "kind": "mouse", "event": "mousePressed", "x": x, "y": y,
            "button": "left", "clicks": 1}


def test_two_viewers_control_and_a_recording_replayable(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["info", "cobrowse"])
    sid = session["id"]
    try:
        with browser_socket(relay, admin, stream(sid)) as ws1:
            tech = Console(ws1)
            tech.send(type="start", url="https://example.test/start?token=s3cret#x",
                      reason="ticket 42")
            ready = tech.message("ready")
            assert ready["role"] == "control" and ready["recorded"] is True
            assert tech.agent("consent", what="view")["answer"] == "yes"
            assert tech.agent("nav")["url"].startswith("https://example.test/start")
            snap = tech.agent("rrweb")
            assert [e["type"] for e in snap["events"]] == [4, 2]
            tech.agent("rrweb")  # a tick: the bogus line in between was not passed on
            assert not any(f.get("msg", {}).get("type") == "bogus" for f in tech.seen)
            with browser_socket(relay, world.watcher, stream(sid, "watch=1")) as ws2:
                sup = Console(ws2)
                joined = sup.message("ready")
                assert joined["role"] == "watch" and joined["cobrowse"] == ready["cobrowse"]
                assert joined["consent"] == {"view": "yes"} and joined["control"] == "none"
                caught = sup.agent("rrweb")  # the catch-up: the last snapshot first
                assert [e["type"] for e in caught["events"]] == [4, 2]
                sup.agent("rrweb")  # and then what comes live
                # The watcher never sends: not even a well-formed request.
                sup.send(type="request_control")
                sup.send(**click(1, 1))
                sup.send(type="propose_url", url="https://bank.test/transfer")
                for _ in range(3):  # a watcher does not even propose an address
                    assert sup.message("refused")["error"] == "view_only"
                # No input before the grant.
                tech.send(**click(2, 2))
                assert tech.message("refused")["error"] == "no_control"
                tech.send(type="request_control")
                assert tech.agent("control")["state"] == "granted"
                assert sup.agent("control")["state"] == "granted"
                # Paused by the customer's own hands: the technician's input is refused,
                # with that reason, until the agent says resumed.
                tech.send(type="propose_url", url="https://example.test/#paused")
                assert tech.agent("control")["state"] == "paused"
                tech.send(**click(4, 4))
                refused = tech.message("refused")
                assert refused["error"] == "control_paused", refused
                assert "customer" in refused["detail"]
                tech.send(type="propose_url", url="https://example.test/#resumed")
                assert tech.agent("control")["state"] == "resumed"
                tech.send(**click(40.5, 50))
                tech.send(type="input", kind="key", event="char", key="a", code="KeyA",
                          text="a")
                tech.send(type="propose_url", url="https://example.test/next?code=abc")
                assert tech.agent("nav")["url"] == "https://example.test/next?code=abc"
                sup.agent("nav", url="https://example.test/next?code=abc")
                tech.send(type="release_control")
                assert tech.agent("control")["state"] == "revoked"
                tech.send(**click(3, 3))
                assert tech.message("refused")["error"] == "no_control"
                tech.send(type="end")
                ended = tech.message("exit")
                assert ended["exit_status"] == 0
                assert sup.message("exit")["recording"] == ended["recording"]
        got = agent.received()
        mine = [m for m in got if m.get("type") != "start"]
        start = next(m for m in got if m.get("type") == "start")
        assert start == {"type": "start", "url": "https://example.test/start?token=s3cret#x",
                         "technician": "admin", "reason": "ticket 42", "screencast": False}
        # What reached the agent: only the technician's, only after the grant, none
        # while paused (the two cues are the stand-in's).
        assert [m["type"] for m in mine] == [
            "request_control", "propose_url", "propose_url", "input", "input", "propose_url",
            "release_control", "end"]
        inputs = [m for m in mine if m["type"] == "input"]
        assert inputs == [click(40.5, 50), {"type": "input", "kind": "key", "event": "char",
                                            "key": "a", "code": "KeyA", "text": "a"}]
        assert {"type": "request_control"} in mine
        assert all(m.get("x") not in (1, 2, 3) for m in inputs)
        # The recording: the agent's lines, its hash audited, served checked.
        rec = ended["recording"]
        listed = admin.get(f"/api/v1/sessions/{sid}/recordings").json()["recordings"]
        row = next(r for r in listed if r["id"] == rec["id"])
        assert row["capability"] == "cobrowse" and row["sha256"] == rec["sha256"]
        r = admin.get(f"/api/v1/recordings/{rec['id']}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(
            "application/x-ndjson")
        assert hashlib.sha256(r.content).hexdigest() == rec["sha256"] == r.headers[
            "x-content-sha256"]
        lines = [json.loads(x) for x in r.content.decode().splitlines()]
        kinds = [x["type"] for x in lines]
        assert kinds[:3] == ["consent", "nav", "rrweb"] and "bogus" not in kinds
        assert kinds[-1] == "ended" and "control" in kinds
        stored = trail(relay, sid, "recording.stored")
        assert stored[-1]["details"]["sha256"] == rec["sha256"]
        assert stored[-1]["details"]["capability"] == "cobrowse"
        channel = [e for e in trail(relay, sid, "session.channel")
                   if e["action"] == "session.channel"][-1]["details"]
        assert channel["capability"] == "cobrowse" and channel["recording"] == rec["id"]
        assert channel["sha256"] == rec["sha256"] and channel["dropped_lines"] == 1
        assert channel["closed_by"] == "console"
        acts = [(e["action"], e["actor"]) for e in trail(relay, sid, "cobrowse.")]
        names = [a for a, _ in acts]
        for needed in ("cobrowse.consent", "cobrowse.control.requested",
                       "cobrowse.control.granted", "cobrowse.control.revoked",
                       "cobrowse.url.proposed", "cobrowse.navigated", "cobrowse.join",
                       "cobrowse.agent_line.dropped", "cobrowse.message.refused"):
            assert needed in names, (needed, names)
        refused = [(e["details"]["reason"], e["actor"]) for e in trail(relay, sid, "cobrowse.")
                   if e["action"] == "cobrowse.message.refused"]
        assert ("view_only", "user:supervisor") in refused
        assert ("no_control", "user:admin") in refused
        urls = [e["details"]["url"] for e in trail(relay, sid, "cobrowse.")
                if "url" in e["details"]]
        assert "https://example.test/start" in urls and "https://example.test/next" in urls
        assert not any("s3cret" in u or "code=" in u for u in urls)  # no query in the trail
        played = [e for e in audit_actions(relay) if e["action"] == "recording.played"
                  and e["target"] == f"recording:{rec['id']}"]
        assert played and played[-1]["details"]["sha256"] == rec["sha256"]
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{sid}")


HOSTILE: list[tuple[str, str | bytes]] = [
    ("binary", b"\x00\x01binary"),
    ("not JSON", "{not json"),
    ("a list", "[1, 2]"),
    ("unknown type", json.dumps({"type": "eval", "code": "alert(1)"})),
    ("unknown field", json.dumps({"type": "end", "then": "rm -rf"})),
    ("out of range", json.dumps({**click(), "x": 1e12})),
    ("NaN", '{"type":"pointer","x":NaN,"y":0}'),
    ("a javascript: URL", json.dumps({"type": "propose_url", "url": "javascript:alert(1)"})),
    ("too large", json.dumps({"type": "pointer", "x": 1, "y": 1, "pad": "x" * 5000})),
    ("a second start", json.dumps({"type": "start", "url": None})),
]


def test_hostile_frames_are_refused_audited_and_never_reach_the_agent(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["cobrowse"])
    sid = session["id"]
    try:
        # A first frame that is not a start: refused, audited, no channel opened.
        with browser_socket(relay, admin, stream(sid)) as ws:
            ws.send(json.dumps({"type": "input", "kind": "key"}))
            err = json.loads(ws.recv(timeout=20))
            assert err["type"] == "error" and err["error"] == "bad_request"
        refused = wait_for(lambda: [e for e in trail(relay, sid, "session.channel.refused")
                                    if e["details"].get("capability") == "cobrowse"],
                           10, "the refusal audited")
        assert refused[-1]["details"]["reason"] == "bad_request"
        before = len(agent.received())
        with browser_socket(relay, admin, stream(sid)) as ws1:
            tech = Console(ws1)
            tech.send(type="start", url=None)
            tech.message("ready")
            tech.send(type="request_control")
            tech.agent("control", state="granted")
            for _, frame in HOSTILE:
                ws1.send(frame)
                assert tech.message("refused")["error"] == "bad_message"
            tech.agent("rrweb")  # the co-browse goes on
            tech.send(**click(7, 7))  # and good input still passes
            tech.send(type="end")
            tech.message("exit")
        got = agent.received()[before:]
        assert [m["type"] for m in got] == ["start", "request_control", "input", "end"]
        details = [e["details"] for e in trail(relay, sid, "cobrowse.message.refused")]
        assert len(details) == len(HOSTILE)
        assert all(d["reason"] == "bad_message" and d["role"] == "control" for d in details)
        assert not any("alert" in d["detail"] or "rm -rf" in d["detail"] for d in details)
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{sid}")


def test_a_watcher_that_does_not_read_is_dropped_the_technician_gets_everything(
        world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["cobrowse"])
    sid = session["id"]
    try:
        with browser_socket(relay, admin, stream(sid)) as ws1:
            tech = Console(ws1)
            tech.send(type="start", url=None, screencast=False)
            tech.message("ready")
            tech.agent("rrweb")
            aborted_before = hung_up_aborted(relay)
            with quiet_socket(relay, world.watcher, stream(sid, "watch=1")):
                wait_for(lambda: trail(relay, sid, "cobrowse.join"), 10, "the watcher in")
                started = time.monotonic()
                tech.send(type="screencast", on=True)
                frames = 0
                while True:
                    f = tech.until(lambda f: f["type"] == "agent"
                                   and f["msg"]["type"] in ("frame", "hidden"), 60, "frames")
                    if f["msg"]["type"] == "hidden":
                        break
                    frames += 1
                took = time.monotonic() - started
                assert frames == FRAMES, frames
                dropped = wait_for(lambda: trail(relay, sid, "cobrowse.viewer.dropped"), 20,
                                   "the quiet watcher dropped")
                assert dropped[-1]["details"]["reason"] == "too_slow"
                assert dropped[-1]["details"]["role"] == "watch"
                assert dropped[-1]["actor"] == "user:supervisor"
                tech.agent("rrweb")  # the technician's view goes on
                # Its socket, whose last frames wait in a send that never returns, is
                # aborted after the hang-up's grace: it holds no socket nor task after;
                # audited as its user's.
                wait_for(lambda: hung_up_aborted(relay) > aborted_before,
                         conn_limits.HANG_UP_GRACE_S + 20, "the dropped watcher aborted")
                aborted = wait_for(lambda: [e for e in trail(
                    relay, sid, "cobrowse.viewer.dropped")
                    if e["details"]["reason"] == "not_closed"], 10, "the abort audited")
                assert aborted[-1]["actor"] == "user:supervisor", aborted
            tech.send(type="end")
            tech.message("exit")
        print(f"{FRAMES} frames of {FRAME_KIB} KiB to the technician in {took:.1f} s "
              "with a stalled watcher")
        assert relay.healthy()
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{sid}")


def test_the_customer_saying_no_is_a_refusal_audited(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["cobrowse"])
    sid = session["id"]
    try:
        with browser_socket(relay, admin, stream(sid)) as ws:
            tech = Console(ws)
            tech.send(type="start", url=None, reason="standin:refuse")
            tech.message("ready")
            assert tech.agent("consent")["answer"] == "no"
            err = tech.message("error")
            assert err["error"] == "refused_by_customer"
        refused = wait_for(lambda: [e for e in trail(relay, sid, "session.channel.refused")
                                    if e["details"].get("capability") == "cobrowse"], 10,
                           "the refusal audited")
        assert refused[-1]["details"]["reason"] == "agent_customer_declined"
        consent = trail(relay, sid, "cobrowse.consent")
        assert consent[-1]["details"] == {**consent[-1]["details"], "what": "view",
                                          "answer": "no"}
        # watch=1 is for a co-browse only: it never lets a watcher run another capability.
        with browser_socket(relay, world.watcher,
                            f"/api/v1/sessions/{sid}/stream/info?watch=1") as ws:
            err = json.loads(ws.recv(timeout=20))
            assert err["type"] == "error" and err["error"] == "bad_field"
        assert [e for e in audit_actions(relay) if e["action"] == "session.stream.refused"
                and e["actor"] == "user:supervisor"]
        # Watching when nothing is open: a clear 404 on the socket.
        with browser_socket(relay, world.watcher, stream(sid, "watch=1")) as ws:
            err = json.loads(ws.recv(timeout=20))
            assert err["type"] == "error" and err["error"] == "no_cobrowse"
    finally:
        admin.request("DELETE", f"/api/v1/sessions/{sid}")


def test_closing_the_session_ends_the_cobrowse_and_keeps_its_recording(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    session = open_session(admin, agent.agent_id, capabilities=["cobrowse"])
    sid = session["id"]
    with browser_socket(relay, admin, stream(sid)) as ws:
        tech = Console(ws)
        tech.send(type="start", url=None)
        tech.message("ready")
        tech.agent("rrweb")
        closed = admin.request("DELETE", f"/api/v1/sessions/{sid}")
        assert closed.status_code == 200, closed.text
        end = tech.until(lambda f: f["type"] in ("exit", "error"), 30, "the end")
        assert end.get("recording", {}).get("id"), end
    channel = wait_for(lambda: [e for e in trail(relay, sid, "session.channel")
                                if e["details"].get("capability") == "cobrowse"
                                and e["action"] in ("session.channel",
                                                    "session.channel.failed")], 20,
                       "the channel audited")
    details = channel[-1]["details"]
    assert details["recording"] == end["recording"]["id"]
    assert details["sha256"] == end["recording"]["sha256"]


def test_withdrawn_access_hangs_up_a_watcher(world: World) -> None:
    relay, admin, agent = world.relay, world.admin, world.agent
    onlooker = make_user(admin, relay, "onlooker", "technician", ("default",))
    session = open_session(admin, agent.agent_id, capabilities=["cobrowse"])
    sid = session["id"]
    try:
        with browser_socket(relay, admin, stream(sid)) as ws1:
            tech = Console(ws1)
            tech.send(type="start", url=None)
            tech.message("ready")
            with browser_socket(relay, onlooker, stream(sid, "watch=1")) as ws2:
                watcher = Console(ws2)
                watcher.message("ready")
                gid = next(g["id"] for g in admin.get("/api/v1/groups").json()["groups"]
                           if g["name"] == "default")
                assert admin.request("DELETE", f"/api/v1/groups/{gid}/grants/onlooker"
                                     ).status_code == 200
                said = watcher.message("error")
                assert said["error"] == "grant_withdrawn", said
            tech.agent("rrweb")  # the technician's co-browse goes on
            tech.send(type="end")
            tech.message("exit")
        dropped = trail(relay, sid, "cobrowse.viewer.dropped")
        assert [(e["details"]["user"], e["details"]["reason"], e["details"]["role"])
                for e in dropped] == [("onlooker", "grant_withdrawn", "watch")]
    finally:
        onlooker.close()
        admin.request("DELETE", f"/api/v1/sessions/{sid}")
