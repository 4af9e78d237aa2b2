"""The agent's ``fix`` room over its real SSH server (as the relay drives it: a
certificate from the pinned CA, the ``fix`` subsystem, one request line), running real
fix scripts. Acceptance point 2 from the agent's side: one changed byte, unsigned,
revoked, wrong platform, an unpinned key, an approval replayed onto another version,
hostile parameters (no file X appears), a fork that sleeps forever killed whole at the
timeout, 1 GiB of output cut at the cap with the agent's memory bounded; each refusal
one ``refused`` line, exit 77, in the agent's activity log, and the customer is asked
only after every check passed."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from backline.agent.activity import ActivityLog
from backline.agent.capabilities import SessionContext, builtin_registry
from backline.agent.consent import Answer
from backline.agent.fixes import cache, revocations
from backline.agent.fixes.executor import session_members
from backline.agent.policy import Policy, from_table
from backline.agent.sshserver import ServerSettings, serve
from backline.common.fixes.manifest import FixManifest, digest
from backline.common.wstunnel import WebSocketTunnel
from tests.unit.test_fix_agent_trust import PRINCIPAL, Signer, enrolled, fix
from tests.unit.test_wstunnel import pipe_pair, run_async

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")


class Customer:
    available = True

    def __init__(self, says: bool = True, delay: float = 0.0) -> None:
        self.says = says
        self.delay = delay
        self.questions: list[str] = []

    async def ask(self, question: str, timeout: float) -> Answer:
        self.questions.append(question)
        await asyncio.sleep(self.delay)
        return Answer(True, "customer_allowed") if self.says else Answer(
            False, "customer_declined")


class Agent:
    """One enrolled agent's SSH server, its state dir and its customer."""

    def __init__(self, tmp: Path, policy: Policy | None = None,
                 customer: Customer | None = None) -> None:
        self.relay = Signer()
        self.state = enrolled(tmp / "state", [self.relay.public])
        self.log = ActivityLog(self.state.root / "activity.jsonl")
        self.ca = asyncssh.generate_private_key("ssh-ed25519")
        self.host = asyncssh.generate_private_key("ssh-ed25519")
        self.policy = policy or from_table({"capabilities": {"fix": "ask"}})
        self.customer = customer or Customer()

    def settings(self) -> ServerSettings:
        ctx = SessionContext(session_id="ss_test000000001", principal=PRINCIPAL,
                             technician="alice", mode="managed", policy=self.policy,
                             log=self.log, state_root=self.state.root, reason="slow DNS",
                             ticket="T-7", capabilities=("info", "fix"))
        return ServerSettings(session=ctx, registry=builtin_registry(), host_key=self.host,
                              ca_public_key=self.ca.export_public_key().decode(),
                              asker=self.customer, login_timeout_s=5)

    def cert(self) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        key = asyncssh.generate_private_key("ssh-ed25519")
        now = time.time()
        return key, self.ca.generate_user_certificate(
            key, "alice", principals=[PRINCIPAL], valid_after=int(now - 60),
            valid_before=int(now + 600))

    async def connect(self) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[str]]:
        mine, theirs = pipe_pair()
        server = asyncio.create_task(serve(WebSocketTunnel(mine), self.settings()))
        conn = await asyncssh.connect(
            PRINCIPAL, tunnel=WebSocketTunnel(theirs), username=PRINCIPAL,
            known_hosts=([self.host.convert_to_public()], [], []), client_keys=[self.cert()],
            agent_path=None, config=None, gss_host=None, connect_timeout=10)
        return conn, server

    def request(self, m: FixManifest, sigs: list[str] | None = None, **over: Any) -> dict[str, Any]:
        return {"manifest": m.as_dict(), "signatures": [self.relay.sign(m)] if sigs is None
                else sigs, "params": {}, "requested_by": "alice", "reason": "slow DNS",
                "ticket": "T-7", "max_output": 1 << 20, "run_id": "fr_test1", **over}

    def refusals(self) -> list[str]:
        return [e["reason"] for e in self.log.read() if e["event"] == "fix.refused"]


class Channel:
    def __init__(self, lines: list[dict[str, Any]], status: int | None) -> None:
        self.lines = lines
        self.status = status

    def kinds(self) -> list[str]:
        out: list[str] = []
        for line in self.lines:
            if not out or line["type"] != "output" or out[-1] != "output":
                out.append(line["type"])
        return out

    def one(self, kind: str) -> dict[str, Any]:
        found = [line for line in self.lines if line["type"] == kind]
        assert len(found) == 1, (kind, self.lines[-4:])
        return found[0]

    def output(self) -> bytes:
        return b"".join(base64.b64decode(line["b64"]) for line in self.lines
                        if line["type"] == "output")


async def fix_channel(conn: asyncssh.SSHClientConnection, request: Any, *,
                      cancel_on: str | None = None, close_on: str | None = None,
                      keep_open: bool = True) -> Channel:
    proc = await conn.create_process(subsystem="fix", encoding=None)
    raw = request if isinstance(request, bytes) else (
        request if isinstance(request, str) else json.dumps(request)).encode("utf-8",
                                                                            "surrogatepass")
    proc.stdin.write(raw if raw.endswith(b"\n") else raw + b"\n")
    if not keep_open:
        proc.stdin.write_eof()
    lines: list[dict[str, Any]] = []
    async with asyncio.timeout(120):
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            assert len(line) <= 64 * 1024
            event = json.loads(line)
            lines.append(event)
            if cancel_on is not None and event["type"] == cancel_on:
                proc.stdin.write(b'{"type":"cancel"}\n')
                cancel_on = None
            if close_on is not None and event["type"] == close_on:
                proc.close()
                return Channel(lines, None)
        await proc.wait()
    return Channel(lines, proc.exit_status)


@run_async
async def test_a_signed_fix_is_checked_asked_run_streamed_and_verified(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    m = fix(consent=True)
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m, params={"NAME": "Bob"}))
    assert ch.status == 0, ch.lines
    assert ch.kinds() == ["checked", "consent", "start", "output", "end", "verify"]
    assert ch.one("checked") == {"type": "checked", "digest": digest(m),
                                 "signers": [ch.one("checked")["signers"][0]]}
    assert ch.one("checked")["signers"][0].startswith("SHA256:")
    assert ch.output() == b"hello Bob\n"
    end = ch.one("end")
    assert end["exit_status"] == 0 and end["kept_bytes"] == 10 and not end["timed_out"]
    assert ch.one("verify")["passed"] is True
    assert agent.customer.questions == [
        'Technician alice asks to run the approved fix "Say hello" (test-fix@1, risk low) '
        "with NAME=Bob (slow DNS) [ticket T-7]. Allow?"]
    events = [e["event"] for e in agent.log.read()]
    assert {"fix.consent", "fix.started", "fix.ended", "channel.start"} <= set(events)
    ended = next(e for e in agent.log.read() if e["event"] == "fix.ended")
    assert ended["digest"] == digest(m) and ended["verify_passed"] is True
    assert ended["output_sha256"] == end["output_sha256"]
    # What ran is kept, with its signatures, for self-service.
    kept = cache.find(agent.state.root, "test-fix", 1)
    assert kept is not None and len(kept.signatures) == 1 and kept.source == "run"
    assert kept.manifest == m.as_dict()


@run_async
async def test_hostile_fixes_are_refused_before_the_customer_is_asked(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    m = fix()
    stranger = Signer("stranger")
    revoked = fix(version=5)
    revocations.receive(agent.state.root, agent.relay.revocations(1, revoked),
                        (agent.relay.public,))
    windows = fix(platforms=["windows"])
    cases = [
        ("bad_signature", agent.request(fix(script=m.script.replace("hello", "hellp")),
                                         [agent.relay.sign(m)])),  # one byte changed
        ("unsigned", agent.request(m, [])),
        ("revoked", agent.request(revoked)),
        ("platform", agent.request(windows)),
        ("unpinned_key", agent.request(m, [stranger.sign(m)])),
        ("bad_signature", agent.request(fix(version=2), [agent.relay.sign(m)])),  # replayed
        ("digest_mismatch", agent.request(m, digest="sha256:" + "1" * 64)),
        ("params", agent.request(m, params={"NAME": "a\nb"})),
        ("params", agent.request(m, params={"NAME": "a\0b"})),
        ("params", agent.request(m, params={"NAME": "x" * 65})),
        ("params", agent.request(m, params={"NAME": "\ud800"})),  # not UTF-8 text
        ("params", agent.request(m, params={"NAME": 7})),
        ("params", agent.request(m, params={"OTHER": "x"})),
    ]
    conn, _ = await agent.connect()
    async with conn:
        for reason, request in cases:
            ch = await fix_channel(conn, request)
            assert ch.status == 77, (reason, ch.lines)
            assert [line["type"] for line in ch.lines] == ["refused"]
            assert ch.lines[0]["reason"] == reason, (reason, ch.lines)
        for request in ("not json", json.dumps({"manifest": {}}),
                        json.dumps({**agent.request(m), "max_output": 2**40}),
                        "x" * (1024 * 1024 + 10)):
            ch = await fix_channel(conn, request)
            assert ch.status == 2 and ch.lines[0]["reason"] == "bad_request", ch.lines
    # Bytes that are not UTF-8 on this text channel: asyncssh itself ends the connection
    # (its decoder raises), before the room sees a request.
    conn, _ = await agent.connect()
    with pytest.raises((asyncssh.Error, asyncio.IncompleteReadError)):
        async with conn:
            await fix_channel(conn, b"\xff\xfe{}")
    assert agent.customer.questions == []  # nobody was asked about any of them
    assert agent.refusals()[:len(cases) + 4] == [r for r, _ in cases] + ["bad_request"] * 4
    assert cache.entries(agent.state.root) == []


@run_async
async def test_hostile_parameter_values_reach_the_script_inert(tmp_path: Path) -> None:
    agent = Agent(tmp_path)
    target = tmp_path / "X"
    m = fix(script='printf "%s\\n" "$BACKLINE_PARAM_NAME"\n',
            parameters={"NAME": {"type": "string", "description": "x", "max_length": 200}})
    conn, _ = await agent.connect()
    values = ["; rm -rf /", f"$(touch {target})", f"`touch {target}`",
              f"'; touch {target}; '", f"\"; touch {target}; \""]
    async with conn:
        for value in values:
            ch = await fix_channel(conn, agent.request(m, params={"NAME": value}))
            assert ch.status == 0 and ch.output() == value.encode() + b"\n"
    assert not target.exists()


@run_async
async def test_the_customer_says_no_and_the_policy_says_no(tmp_path: Path) -> None:
    agent = Agent(tmp_path, customer=Customer(says=False))
    m = fix()
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m))
        assert ch.status == 77 and [x["type"] for x in ch.lines] == ["checked", "refused"]
        assert ch.lines[1]["reason"] == "consent"
    deny = Agent(tmp_path / "deny", policy=from_table({"capabilities": {"fix": "allow"},
                                                        "fix": {"decision": "deny"}}))
    conn, _ = await deny.connect()
    async with conn:
        ch = await fix_channel(conn, deny.request(m))
        assert ch.lines == [{"type": "refused", "reason": "policy", "detail": ch.lines[0][
            "detail"]}] and ch.status == 77
    only = Agent(tmp_path / "only", policy=from_table({"capabilities": {"fix": "allow"},
                                                        "fix": {"decision": "allow",
                                                                "allowed_ids": ["dns-flush"]}}))
    conn, _ = await only.connect()
    async with conn:
        ch = await fix_channel(conn, only.request(m))
        assert ch.lines[0]["reason"] == "policy"
    # allow + allow + a fix that does not ask: runs without a question.
    allow = Agent(tmp_path / "allow", policy=from_table({"capabilities": {"fix": "allow"},
                                                          "fix": {"decision": "allow"}}))
    conn, _ = await allow.connect()
    async with conn:
        ch = await fix_channel(conn, allow.request(m))
        assert ch.status == 0 and "consent" not in ch.kinds()
    assert allow.customer.questions == []
    # offline signatures required by the policy: the relay's alone is not enough
    offline = Signer("approver")
    strict = Agent(tmp_path / "strict", policy=from_table({
        "capabilities": {"fix": "allow"},
        "fix": {"decision": "allow", "offline_keys": [offline.public], "required_offline": 1}}))
    conn, _ = await strict.connect()
    async with conn:
        ch = await fix_channel(conn, strict.request(m))
        assert ch.lines[0]["reason"] == "not_enough_signatures"
        ch = await fix_channel(conn, strict.request(m, [strict.relay.sign(m), offline.sign(m)]))
        assert ch.status == 0 and len(ch.one("checked")["signers"]) == 2


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


@run_async
async def test_a_fork_sleeping_forever_is_killed_whole_at_the_timeout(tmp_path: Path) -> None:
    agent = Agent(tmp_path, policy=from_table({"capabilities": {"fix": "allow"},
                                               "fix": {"decision": "allow"}}))
    m = fix(timeout_s=1, verify=None,
            script="sh -c 'trap \"\" TERM; sleep 1000 & echo $!; wait' &\necho $!\nsleep 1000\n")
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m))
    assert ch.status == 0
    end = ch.one("end")
    assert end["timed_out"] is True and end["signal"] == "SIGTERM"
    pids = [int(p) for p in ch.output().split()]
    assert len(pids) == 2
    for _ in range(60):
        if not any(alive(p) for p in pids):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert session_members(ch.one("start")["pid"]) == []


@run_async
async def test_cancel_and_channel_close_end_the_run(tmp_path: Path) -> None:
    agent = Agent(tmp_path, policy=from_table({"capabilities": {"fix": "allow"},
                                               "fix": {"decision": "allow"}}))
    m = fix(timeout_s=600, script="echo started; sleep 1000\n")
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m), cancel_on="output")
        assert ch.status == 0 and ch.one("end")["cancelled"] is True
        assert "verify" not in ch.kinds()
        assert session_members(ch.one("start")["pid"]) == []
        ch = await fix_channel(conn, agent.request(m), close_on="output")
        sid = ch.one("start")["pid"]
        for _ in range(100):
            if not session_members(sid) and not alive(sid):
                break
            await asyncio.sleep(0.05)
        assert session_members(sid) == [] and not alive(sid)
        # the relay closing its input is a cancel too
        ch = await fix_channel(conn, agent.request(m), keep_open=False)
        assert ch.one("end")["cancelled"] is True
        # a cancel written with the request: the script never starts
        ch = await fix_channel(conn, json.dumps(agent.request(m)) + '\n{"type":"cancel"}\n')
        assert [x["type"] for x in ch.lines] == ["checked", "end"]
        assert ch.one("end")["cancelled"] is True and ch.one("end")["output_bytes"] == 0


@run_async
async def test_the_consent_program_of_the_policy_is_asked_and_a_push_is_cached(
        tmp_path: Path) -> None:
    from backline.agent.consent import CommandAsker

    asked = tmp_path / "asked.txt"
    program = tmp_path / "ask.sh"
    program.write_text(f'#!/bin/sh\nprintf "%s" "$1" > {asked}\necho yes\n')
    program.chmod(0o700)
    agent = Agent(tmp_path)
    agent.customer = CommandAsker([str(program)])  # type: ignore[assignment]
    m = fix(id="pushed-fix", consent=True)
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m, params={"NAME": "Eve"}))
        assert ch.status == 0 and "consent" in ch.kinds()
        assert asked.read_text() == (
            'Technician alice asks to run the approved fix "Say hello" (pushed-fix@1, '
            "risk low) with NAME=Eve (slow DNS) [ticket T-7]. Allow?")
        # The relay pushing a fix for self-service: checked the same way, kept, not run.
        other = fix(id="later-fix")
        ch = await fix_channel(conn, agent.request(other, cache=True))
        assert [x["type"] for x in ch.lines] == ["checked", "cached"] and ch.status == 0
        ch = await fix_channel(conn, agent.request(fix(id="forged-fix"), [], cache=True))
        assert ch.lines[0]["reason"] == "unsigned"
    kept = {c.fix_id: c.source for c in cache.entries(agent.state.root)}
    assert kept == {"pushed-fix": "run", "later-fix": "pushed"}


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@run_async
async def test_a_gibibyte_of_output_is_cut_at_the_cap_with_memory_bounded(tmp_path: Path
                                                                          ) -> None:
    agent = Agent(tmp_path, policy=from_table({"capabilities": {"fix": "allow"},
                                               "fix": {"decision": "allow"}}))
    gib = 1024 ** 3
    m = fix(timeout_s=600, verify=None, script=f"head -c {gib} /dev/zero\n")
    base = rss_kib()
    peak = [base]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            await asyncio.sleep(0.05)

    sampler = asyncio.ensure_future(sample())
    conn, _ = await agent.connect()
    try:
        async with conn:
            ch = await fix_channel(conn, agent.request(m, max_output=4 << 20))
    finally:
        done.set()
        await sampler
    assert ch.status == 0
    assert ch.one("cut") == {"type": "cut", "kept_bytes": 4 << 20}
    end = ch.one("end")
    assert end["output_bytes"] == gib and end["kept_bytes"] == 4 << 20
    assert len(ch.output()) == 4 << 20
    # This process is the agent AND the client holding all 4 MiB of lines it read.
    assert peak[0] - base < 48 * 1024, f"RSS grew {(peak[0] - base) // 1024} MiB"
