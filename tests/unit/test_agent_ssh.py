"""The agent's SSH server, in process over an in-memory tunnel: only a certificate from
the pinned CA naming this agent gets in; no passwords, plain keys, other CAs, expired
or wrong-principal certificates; no forwarding, shell, exec or pty; and every
subsystem goes through the local policy first. Each refusal reaches the local log."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from backline.agent.activity import ActivityLog
from backline.agent.capabilities import Registry, SessionContext
from backline.agent.capabilities.info import run as info
from backline.agent.consent import Answer
from backline.agent.policy import Policy, from_table
from backline.agent.sshserver import EXIT_REFUSED, ServerSettings, serve
from backline.common.wstunnel import WebSocketTunnel
from tests.unit.test_wstunnel import pipe_pair, run_async

PRINCIPAL = "ag_test0000000001"


class FakeAsker:
    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.questions: list[str] = []

    available = True

    async def ask(self, question: str, timeout: float) -> Answer:
        self.questions.append(question)
        return Answer(True, "customer_allowed") if self.allowed else Answer(
            False, "customer_declined")


async def echo_handler(process: Any, ctx: SessionContext) -> int:
    process.stdout.write(f"ran {process.subsystem}\n")
    return 0


class Kit:
    def __init__(self, tmp: Path, asker_says: bool = False,
                 policy: Policy | None = None) -> None:
        self.ca = asyncssh.generate_private_key("ssh-ed25519")
        self.host = asyncssh.generate_private_key("ssh-ed25519")
        self.log = ActivityLog(tmp / "activity.jsonl")
        self.asker = FakeAsker(asker_says)
        self.policy = policy or from_table({"capabilities": {
            "info": "allow", "fix": "deny", "cobrowse": "ask", "extra": "allow"}})
        registry = Registry()
        registry.register("info", info)
        for name in ("fix", "cobrowse", "extra"):
            registry.register(name, echo_handler)
        self.registry = registry

    def settings(self, capabilities: tuple[str, ...] = ("info", "fix", "cobrowse")
                 ) -> ServerSettings:
        ctx = SessionContext(session_id="ss_test000000001", principal=PRINCIPAL,
                             technician="alice", mode="managed", policy=self.policy,
                             log=self.log, capabilities=capabilities)
        return ServerSettings(session=ctx, registry=self.registry, host_key=self.host,
                              ca_public_key=self.ca.export_public_key().decode(),
                              asker=self.asker, login_timeout_s=5)

    def cert(self, *, ca: asyncssh.SSHKey | None = None, principals: list[str] | None = None,
             after: float = -60, before: float = 600, key_id: str = "alice"
             ) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
        key = asyncssh.generate_private_key("ssh-ed25519")
        now = time.time()
        cert = (ca or self.ca).generate_user_certificate(
            key, key_id, principals=[PRINCIPAL] if principals is None else principals,
            valid_after=int(now + after), valid_before=int(now + before),
            permit_x11_forwarding=False, permit_agent_forwarding=False,
            permit_port_forwarding=False, permit_pty=False, permit_user_rc=False,
            touch_required=False)
        return key, cert

    def refusals(self) -> list[tuple[str, str]]:
        return [(e["event"], e.get("reason", "")) for e in self.log.read()
                if e["event"].endswith(".refused")]


async def connect(kit: Kit, client_keys: list[Any], username: str = PRINCIPAL,
                  capabilities: tuple[str, ...] = ("info", "fix", "cobrowse"),
                  **client: Any) -> tuple[asyncssh.SSHClientConnection, asyncio.Task[str]]:
    mine, theirs = pipe_pair()
    server = asyncio.create_task(serve(WebSocketTunnel(mine), kit.settings(capabilities)))
    try:
        conn = await asyncssh.connect(
            PRINCIPAL, tunnel=WebSocketTunnel(theirs), username=username,
            known_hosts=([kit.host.convert_to_public()], [], []), client_keys=client_keys,
            agent_path=None, config=None, gss_host=None, connect_timeout=10, **client)
    except BaseException:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        raise
    return conn, server


async def refused(kit: Kit, client_keys: list[Any], **kw: Any) -> None:
    with pytest.raises((asyncssh.PermissionDenied, asyncssh.DisconnectError)):
        conn, _ = await connect(kit, client_keys, **kw)
        conn.close()


@run_async
async def test_a_relay_certificate_gets_in_and_policy_rules_each_channel(tmp_path: Path
                                                                          ) -> None:
    kit = Kit(tmp_path, asker_says=False)
    conn, server = await connect(kit, [kit.cert()])
    async with conn:
        result = await conn.run(subsystem="info", check=False)
        assert result.exit_status == 0
        body = json.loads(str(result.stdout))
        assert body["session"]["technician"] == "alice"
        assert body["policy"]["capabilities"]["fix"] == "deny"
        # deny: the channel request itself is refused
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="fix")
        # ask, and the customer says no: the channel closes before any work
        result = await conn.run(subsystem="cobrowse", check=False)
        assert result.exit_status == EXIT_REFUSED and result.stdout == ""
        assert json.loads(str(result.stderr)) == {"refused": "customer_declined",
                                                  "capability": "cobrowse"}
        assert kit.asker.questions == [
            "Technician alice asks to use 'cobrowse' on this machine. Allow?"]
        # allowed by policy, but not one of the session's capabilities
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="extra")
        # unknown, shell, exec, pty
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="nonesuch")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process()  # a shell
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process("id")  # exec
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="info", term_type="xterm")
        # forwarding of every kind
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection("127.0.0.1", 22)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.start_server(lambda *a: None, "127.0.0.1", 0)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/docker.sock")
    await asyncio.wait_for(server, 10)
    events = [e["event"] for e in kit.log.read()]
    assert events[0] == "session.start"
    assert ("channel.refused", "policy_deny") in kit.refusals()
    assert ("channel.refused", "customer_declined") in kit.refusals()
    assert ("channel.refused", "out_of_scope") in kit.refusals()
    assert ("channel.refused", "unknown") in kit.refusals()
    reasons = {r for _, r in kit.refusals()}
    assert {"not_offered"} <= reasons
    starts = [e for e in kit.log.read() if e["event"] == "channel.start"]
    assert [e["capability"] for e in starts] == ["info"]


@run_async
async def test_ask_with_a_yes_runs_the_capability(tmp_path: Path) -> None:
    kit = Kit(tmp_path, asker_says=True)
    conn, _ = await connect(kit, [kit.cert()])
    async with conn:
        result = await conn.run(subsystem="cobrowse", check=False)
    assert result.exit_status == 0 and result.stdout == "ran cobrowse\n"
    start = next(e for e in kit.log.read() if e["event"] == "channel.start")
    assert start["decision"] == "ask" and start["how"] == "customer_allowed"


@run_async
async def test_ask_without_a_way_to_ask_means_no(tmp_path: Path) -> None:
    from backline.agent.consent import NoAsker

    kit = Kit(tmp_path)
    kit.asker = NoAsker()  # type: ignore[assignment]
    conn, _ = await connect(kit, [kit.cert()])
    async with conn:
        result = await conn.run(subsystem="cobrowse", check=False)
    assert result.exit_status == EXIT_REFUSED
    assert ("channel.refused", "no_way_to_ask") in kit.refusals()


@run_async
async def test_own_key_is_refused(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    await refused(kit, [asyncssh.generate_private_key("ssh-ed25519")])
    assert ("auth.refused", "plain_key") in kit.refusals()


@run_async
async def test_expired_and_future_certificates_are_refused(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    await refused(kit, [kit.cert(after=-7200, before=-3600)])
    await refused(kit, [kit.cert(after=3600, before=7200)])
    assert kit.refusals().count(("auth.refused", "no_valid_certificate")) == 2
    assert not [e for e in kit.log.read() if e["event"] == "session.start"]


@run_async
async def test_wrong_principal_and_no_principal_are_refused(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    await refused(kit, [kit.cert(principals=["ag_someoneelse0001"])],
                  username="ag_someoneelse0001")
    await refused(kit, [kit.cert(principals=["ag_someoneelse0001"])])
    # OpenSSH reads "no principals" as "anyone": never here.
    await refused(kit, [kit.cert(principals=[])])
    assert ("auth.refused", "wrong_user") in kit.refusals()
    assert ("auth.refused", "wrong_principal") in kit.refusals()


@run_async
async def test_certificate_from_another_ca_is_refused(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    other_ca = asyncssh.generate_private_key("ssh-ed25519")
    await refused(kit, [kit.cert(ca=other_ca)])
    assert ("auth.refused", "untrusted_ca") in kit.refusals()


@run_async
async def test_passwords_and_keyboard_interactive_are_not_offered(tmp_path: Path) -> None:
    kit = Kit(tmp_path)
    await refused(kit, [], password="hunter2", preferred_auth="password,keyboard-interactive")
    assert not [e for e in kit.log.read() if e["event"] == "session.start"]


@run_async
async def test_diagnostics_request_is_validated_by_the_agent(tmp_path: Path) -> None:
    """The relay validates the request too; the agent must not rely on that."""
    from backline.agent.capabilities.diagnostics import run as diagnostics

    kit = Kit(tmp_path, policy=from_table({"capabilities": {"diagnostics": "allow"}}))
    kit.registry.register("diagnostics", diagnostics)
    conn, server = await connect(kit, [kit.cert()], capabilities=("diagnostics",))
    async with conn:
        for garbage, why in ((b"not json\n", "not a JSON object"),
                             (b'{"sections": ["keylogger"]}', "unknown section"),
                             (b'{"sections": "dns"}', "non-empty list"),
                             (b'{"v": 9}', "version 9"),
                             (b'{"run": "rm -rf /"}', "unknown request fields"),
                             (b"x" * 5000, "larger than 4096")):
            proc = await conn.create_process(subsystem="diagnostics", encoding=None)
            proc.stdin.write(garbage)
            proc.stdin.write_eof()
            out = await asyncio.wait_for(proc.stdout.read(), 10)
            await proc.wait_closed()
            assert proc.exit_status == 2, garbage
            reply = json.loads(out)
            assert reply["type"] == "error" and reply["error"] == "bad_request"
            assert why in reply["detail"], reply

        proc = await conn.create_process(subsystem="diagnostics", encoding=None)
        proc.stdin.write(b'{"v": 1, "sections": ["system", "uptime"]}\n')
        proc.stdin.write_eof()
        lines = (await asyncio.wait_for(proc.stdout.read(), 30)).decode().splitlines()
        await proc.wait_closed()
        assert proc.exit_status == 0
        kinds = [json.loads(line)["type"] for line in lines]
        assert kinds == ["begin", "section", "section", "end"]
        assert json.loads(lines[0])["sections"] == ["system", "uptime"]
    conn.close()
    await asyncio.gather(server, return_exceptions=True)
    bad = [e for e in kit.log.read() if e["event"] == "diagnostics.bad_request"]
    assert len(bad) == 6 and all(e["session_id"] == "ss_test000000001" for e in bad)
