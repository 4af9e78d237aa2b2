"""Hostile SSH clients against a real agent process.

The test plays an impostor relay that holds the real relay's TLS key, so the agent's
pin matches and it takes ``dial`` orders from it, but that presents whatever SSH
credentials the test chooses: its own key, certificates from another CA, expired,
for another principal, or none at all. The agent (``backline-agent run``, a child
process) must refuse them all, log each refusal locally, carry on serving, and still
obey its policy for a genuine certificate.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from pathlib import Path
from typing import Any

import asyncssh
from websockets.asyncio.server import ServerConnection, serve

from backline.common import protocol
from backline.common.wstunnel import WebSocketTunnel
from backline.relay.datadir import pem_fingerprint
from tests.harness import AgentProcess, RelayProcess, free_port, play_relay_handshake

POLICY = '[capabilities]\ninfo = "allow"\ndiagnostics = "deny"\n'


class Impostor:
    def __init__(self, relay: RelayProcess, agent: AgentProcess) -> None:
        self.relay = relay
        self.agent = agent
        self.port = free_port()
        self.fingerprint = pem_fingerprint(relay.data_dir / "tls.crt")
        self.real_ca = asyncssh.read_private_key(str(relay.data_dir / "ca_key"))
        self.host_key = asyncssh.import_private_key(
            (agent.state_dir / "identity_key").read_bytes()).convert_to_public()
        self.control: ServerConnection | None = None
        self.connected = asyncio.Event()
        self.from_agent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.tunnels: dict[str, asyncio.Future[ServerConnection]] = {}
        self.done = asyncio.Event()

    @property
    def url(self) -> str:
        return f"wss://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.relay.data_dir / "tls.crt", self.relay.data_dir / "tls.key")
        return ctx

    async def handler(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request else ""
        if path == "/agent/connect":
            await play_relay_handshake(ws, self.fingerprint, self.agent)
            self.control = ws
            self.connected.set()
            async for frame in ws:
                await self.from_agent.put(json.loads(frame))
        elif path.startswith("/agent/tunnel/"):
            session_id = path.rsplit("/", 1)[1]
            waiter = self.tunnels.get(session_id)
            if waiter is not None and not waiter.done():
                waiter.set_result(ws)
                await self.done.wait()

    async def dial(self, capabilities: list[str], url: str | None = None
                   ) -> tuple[str, asyncio.Future[ServerConnection]]:
        session_id = "ss_" + secrets.token_urlsafe(15)
        waiter: asyncio.Future[ServerConnection] = asyncio.get_running_loop().create_future()
        self.tunnels[session_id] = waiter
        assert self.control is not None
        await self.control.send(protocol.encode(
            "dial", session_id=session_id, token=secrets.token_urlsafe(32),
            url=url or f"{self.url}/agent/tunnel/{session_id}", technician="mallory",
            reason="", ticket="", capabilities=capabilities))
        return session_id, waiter

    async def ssh(self, client_keys: list[Any], username: str | None = None,
                  capabilities: tuple[str, ...] = ("info", "diagnostics"),
                  **options: Any) -> asyncssh.SSHClientConnection:
        _, waiter = await self.dial(list(capabilities))
        ws = await asyncio.wait_for(waiter, 10)
        first = protocol.decode(await ws.recv(), frozenset({"tunnel"}))
        assert first["token"]
        return await asyncssh.connect(
            "agent", tunnel=WebSocketTunnel(ws), username=username or self.agent.agent_id,
            known_hosts=([self.host_key], [], []), client_keys=client_keys, agent_path=None,
            config=None, gss_host=None, connect_timeout=10, **options)

    def cert(self, ca: asyncssh.SSHKey | None = None, principals: list[str] | None = None,
             after: float = -60, before: float = 600) -> tuple[Any, Any]:
        """A certificate with asyncssh's defaults: every permit_* extension on. The agent
        must refuse forwarding and ptys itself, whatever a certificate permits."""
        key = asyncssh.generate_private_key("ssh-ed25519")
        now = time.time()
        cert = (ca or self.real_ca).generate_user_certificate(
            key, "mallory", principals=[self.agent.agent_id] if principals is None
            else principals, valid_after=int(now + after), valid_before=int(now + before),
            touch_required=False)
        return key, cert


def local_log(agent: AgentProcess) -> list[dict[str, Any]]:
    path = agent.state_dir / "activity.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def _scenario(imp: Impostor) -> None:
    try:
        await _attempts(imp)
    finally:
        imp.done.set()  # lets the tunnel handlers, and so the server, finish


async def _attempts(imp: Impostor) -> None:
    async with serve(imp.handler, "127.0.0.1", imp.port, ssl=imp.tls()):
        imp.agent.start()
        await asyncio.wait_for(imp.connected.wait(), 30)
        hostile: list[tuple[str, list[Any], dict[str, Any]]] = [
            ("own key", [asyncssh.generate_private_key("ssh-ed25519")], {}),
            ("foreign CA", [imp.cert(ca=asyncssh.generate_private_key("ssh-ed25519"))], {}),
            ("expired", [imp.cert(after=-7200, before=-60)], {}),
            ("wrong principal", [imp.cert(principals=["ag_someoneelse000001"])], {}),
            ("no principal", [imp.cert(principals=[])], {}),
            ("password", [], {"password": "hunter2",
                              "preferred_auth": "password,keyboard-interactive"}),
        ]
        for what, client_keys, options in hostile:
            try:
                conn = await imp.ssh(client_keys, **options)
            except (asyncssh.PermissionDenied, asyncssh.DisconnectError):
                continue
            conn.close()
            raise AssertionError(f"the agent let in a client with {what}")
        # A dial that points the tunnel somewhere else is refused before connecting.
        session_id, _ = await imp.dial(["info"], url=f"{imp.url}/agent/tunnel/ss_other0000000000")
        failed = await asyncio.wait_for(imp.from_agent.get(), 10)
        while failed.get("session_id") != session_id:  # earlier attempts report too
            failed = await asyncio.wait_for(imp.from_agent.get(), 10)
        assert failed["type"] == "dial_failed" and "does not name" in failed["reason"]
        # A genuine certificate works, and the agent's policy still rules each channel.
        async with await imp.ssh([imp.cert()]) as conn:
            info = await conn.run(subsystem="info", check=False)
            assert info.exit_status == 0
            assert json.loads(str(info.stdout))["session"]["technician"] == "mallory"
            for refused in ({"subsystem": "diagnostics"}, {}, {"command": "id"},
                            {"subsystem": "info", "term_type": "xterm"}):
                try:
                    await conn.create_process(**refused)
                except asyncssh.ChannelOpenError:
                    continue
                raise AssertionError(f"the agent opened {refused or 'a shell'}")
            try:
                await conn.open_connection("127.0.0.1", imp.port)
                raise AssertionError("the agent forwarded a TCP connection")
            except asyncssh.ChannelOpenError:
                pass
        imp.done.set()


def test_hostile_ssh_clients_get_no_channel_from_a_real_agent(tmp_path: Path,
                                                              relay: RelayProcess) -> None:
    agent = AgentProcess(tmp_path, "target")
    assert agent.enroll(relay.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(POLICY)
    imp = Impostor(relay, agent)
    enrollment = json.loads((agent.state_dir / "enrollment.json").read_text())
    enrollment["control_url"] = f"{imp.url}/agent/connect"
    (agent.state_dir / "enrollment.json").write_text(json.dumps(enrollment))
    try:
        asyncio.run(asyncio.wait_for(_scenario(imp), 120))
        assert agent.proc is not None and agent.proc.poll() is None, "the agent died"
    finally:
        code = agent.stop()
    assert code == 0
    log = local_log(agent)
    refusals = [(e["event"], e.get("reason")) for e in log if e["event"].endswith(".refused")]
    for expected in [("auth.refused", "plain_key"), ("auth.refused", "untrusted_ca"),
                     ("auth.refused", "wrong_principal"),
                     ("auth.refused", "no_valid_certificate"),
                     ("channel.refused", "policy_deny"), ("channel.refused", "not_offered"),
                     ("forwarding.refused", "not_offered")]:
        assert expected in refusals, (expected, refusals)
    starts = [e for e in log if e["event"] == "session.start"]
    assert len(starts) == 1 and starts[0]["technician"] == "mallory"
    failures = [e for e in log if e["event"] == "session.failed"]
    assert len(failures) >= 6  # each hostile attempt, and the misdirected dial
