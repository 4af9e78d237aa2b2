"""Heartbeats between a real agent process and a relay that stops answering.

The test plays the relay (it holds the real relay's TLS key, so the agent's pin
matches) with a one-second heartbeat, answers only the heartbeats that ask, and then
falls silent, as a relay process that hangs with its sockets open would. The agent
must ask at every fourth heartbeat, stay connected while answered, and give up and
reconnect once a requested answer does not come (docs/protocol.md, "Heartbeats").
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from backline.common import protocol
from backline.relay.datadir import pem_fingerprint
from tests.harness import AgentProcess, RelayProcess, free_port, play_relay_handshake


def posing_as(relay: RelayProcess) -> ssl.SSLContext:
    """TLS with the real relay's certificate and key, so that the agent's pin holds."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(relay.data_dir / "tls.crt", relay.data_dir / "tls.key")
    return ctx


def run_against(relay: RelayProcess, agent: AgentProcess, port: int,
                handler: Callable[[ServerConnection], Awaitable[None]],
                done: asyncio.Event) -> None:
    """Point the enrolled ``agent`` at a test playing the relay on ``port``, run it
    until ``done`` is set (60 s at most), and stop it."""
    enrollment = json.loads((agent.state_dir / "enrollment.json").read_text())
    enrollment["control_url"] = f"wss://127.0.0.1:{port}/agent/connect"
    (agent.state_dir / "enrollment.json").write_text(json.dumps(enrollment))

    async def scenario() -> None:
        async with serve(handler, "127.0.0.1", port, ssl=posing_as(relay)):
            agent.start()
            await asyncio.wait_for(done.wait(), 60)

    try:
        asyncio.run(scenario())
    finally:
        assert agent.stop() == 0


class QuietRelay:
    """Answers the asked-for heartbeats of the first connection twice, then nothing."""

    def __init__(self, relay: RelayProcess, agent: AgentProcess) -> None:
        self.relay, self.agent = relay, agent
        self.port = free_port()
        self.fingerprint = pem_fingerprint(relay.data_dir / "tls.crt")
        self.connections = 0
        self.first: list[tuple[float, bool]] = []  # (time, asked) of each heartbeat
        self.close_code: int | None = None
        self.reconnected = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        await play_relay_handshake(ws, self.fingerprint, self.agent, heartbeat_s=1)
        if self.connections > 1:
            self.reconnected.set()
            await ws.wait_closed()
            return
        answered = 0
        try:
            async for frame in ws:
                hb = protocol.parse_agent_message(frame)
                if hb["type"] != "hb":
                    continue  # the agent's health report
                self.first.append((time.monotonic(), hb["ack"]))
                if hb["ack"] and answered < 2:
                    answered += 1
                    await ws.send(protocol.encode_hb_ack(time.time()))
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None


def test_agent_asks_for_answers_sparingly_and_leaves_a_relay_that_stops_giving_them(
        tmp_path: Path, relay: RelayProcess) -> None:
    agent = AgentProcess(tmp_path, "listener")
    assert agent.enroll(relay.token()).returncode == 0
    quiet = QuietRelay(relay, agent)
    run_against(relay, agent, quiet.port, quiet.handler, quiet.reconnected)
    asked = [ask for _, ask in quiet.first]
    # Answered at the 4th and 8th heartbeats; asked from the 12th on and, unanswered,
    # dropped 5.5 s after the last answer (the 14th tick), with the agent's own 4408.
    assert asked == [False, False, False, True] * 3 + [True], asked
    assert quiet.close_code == 4408


@pytest.mark.skipif(not hasattr(socket, "TCP_USER_TIMEOUT"), reason="TCP_USER_TIMEOUT is Linux's")
def test_a_heartbeat_unacknowledged_for_two_and_a_half_periods_ends_the_connection() -> None:
    """The agent's control socket carries ``TCP_USER_TIMEOUT`` = 2.5 heartbeats, so
    the kernel drops a connection whose heartbeats the relay's host no longer
    acknowledges (a vanished host, a NAT that forgot it), with no answer awaited."""
    from websockets.asyncio.client import connect

    from backline.agent.control import _limit_unacknowledged

    async def main() -> None:
        async def echo(ws: ServerConnection) -> None:
            await ws.wait_closed()

        port = free_port()
        async with serve(echo, "127.0.0.1", port), \
                connect(f"ws://127.0.0.1:{port}/") as ws:
            sock = ws.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0
            _limit_unacknowledged(ws, 30)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 75_000

    asyncio.run(main())


class OlderRelay:
    """A relay from before ``ack``: it refuses the field, as that relay did (an
    ``error`` with its validator's message, then close 4400), and answers every
    heartbeat without it."""

    def __init__(self, relay: RelayProcess, agent: AgentProcess) -> None:
        self.relay, self.agent = relay, agent
        self.port = free_port()
        self.fingerprint = pem_fingerprint(relay.data_dir / "tls.crt")
        self.refused = 0
        self.plain: list[dict[str, object]] = []  # heartbeats it took, after the refusal
        self.settled = asyncio.Event()

    async def handler(self, ws: ServerConnection) -> None:
        await play_relay_handshake(ws, self.fingerprint, self.agent, heartbeat_s=1)
        async for frame in ws:
            hb = protocol.parse_agent_message(frame)
            if hb["type"] != "hb":
                continue
            if "ack" in hb:
                self.refused += 1
                await ws.send(protocol.encode("error", code="unknown_field",
                                              message="hb: unexpected field 'ack'"))
                await ws.close(4400, "unknown_field")
                return
            self.plain.append(hb)
            await ws.send(protocol.encode_hb_ack(time.time()))
            if len(self.plain) == 6:
                self.settled.set()


def test_agent_leaves_ack_out_for_a_relay_that_predates_it(
        tmp_path: Path, relay: RelayProcess) -> None:
    agent = AgentProcess(tmp_path, "upgraded")
    assert agent.enroll(relay.token()).returncode == 0
    older = OlderRelay(relay, agent)
    run_against(relay, agent, older.port, older.handler, older.settled)
    # Refused once; after that six heartbeats in a row on one connection (the relay
    # answers each, so none is dropped), none with the field.
    assert older.refused == 1
    assert all("ack" not in hb for hb in older.plain)
    assert "refuses 'ack' in heartbeats" in agent.log_path.read_text()
