"""Refusals on the agents' sockets, as real clients against a real relay process: the
silent and the departed are audited (never silence), floods are aggregated (never a
row each), a disconnect says why, and the relay keeps serving throughout.

The relay runs with a 1 s first-frame timeout and a 6 s flood window, so each case
is quick; the defaults (10 s, 60 s) behave the same, only slower.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as aconnect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from backline.common import keys, protocol
from backline.common.tlspin import client_context
from backline.relay.datadir import pem_fingerprint
from tests.harness import AgentProcess, Api, RelayProcess, admin_api, audit_actions, wait_for

WINDOW_S = 6
ENV = {"BACKLINE_AUDIT_FLOOD_WINDOW_S": str(WINDOW_S),
       "BACKLINE_AGENT_FIRST_FRAME_TIMEOUT_S": "1"}


@dataclass
class World:
    root: Path
    relay: RelayProcess
    admin: Api


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("refusals")
    relay = RelayProcess(root, ENV).start()
    admin = admin_api(relay)
    try:
        yield World(root, relay, admin)
    finally:
        admin.close()
        relay.stop()


def events(relay: RelayProcess, action: str, target: str | None = None
           ) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"] == action
            and (target is None or e["target"] == target)]


def ws(relay: RelayProcess, path: str) -> Any:
    return connect(relay.url.replace("https", "wss") + path, ssl=client_context(),
                   open_timeout=10, close_timeout=2)


def enrolled_agent(world: World, name: str) -> tuple[AgentProcess, keys.PrivateKey]:
    agent = AgentProcess(world.root, name)
    assert agent.enroll(world.relay.token()).returncode == 0
    return agent, keys.load_private(agent.state_dir / "identity_key")


def sign_in(relay: RelayProcess, sock: Any, agent: AgentProcess, key: keys.PrivateKey) -> None:
    fingerprint = pem_fingerprint(relay.data_dir / "tls.crt")
    sock.send(protocol.answer_challenge(sock.recv(5), agent.agent_id, key, fingerprint, "t"))
    assert json.loads(sock.recv(5))["type"] == "welcome"


def expect_timeout_close(sock: Any) -> None:
    """The relay says why, then closes with 4408."""
    reply = json.loads(sock.recv(5))
    assert reply["type"] == "error" and reply["code"] == "timeout", reply
    with pytest.raises(ConnectionClosed) as closed:
        sock.recv(5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4408


def aggregated(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """The rows written one by one, and the count the aggregated ones add up to."""
    single = [e for e in rows if not e["details"].get("aggregated")]
    return single, sum(e["details"]["count"] for e in rows if e["details"].get("aggregated"))


# --- floods ------------------------------------------------------------------------


async def _bad_enrollments(relay: RelayProcess, count: int, parallel: int) -> list[int]:
    """``count`` enrollments with a token the relay never issued, ``parallel`` at once;
    the close code of each."""
    context = client_context()
    url = relay.url.replace("https", "wss") + "/agent/enroll"
    key = keys.generate()
    public = keys.public_raw(key)
    gate = asyncio.Semaphore(parallel)

    async def one(i: int) -> int:
        token = f"et_{i:016x}.{'A' * 43}"
        payload = protocol.enroll_payload(token, public, pem_fingerprint(
            relay.data_dir / "tls.crt"))
        frame = protocol.encode("enroll", token=token, public_key=protocol.b64e(public),
                                signature=protocol.b64e(key.sign(payload)),
                                hostname=f"flood-{i}", os="linux", os_version="1",
                                arch="x86_64", version="1")
        async with gate, aconnect(url, ssl=context, open_timeout=20) as sock:
            await sock.send(frame)
            try:
                await asyncio.wait_for(sock.recv(), 10)
                await asyncio.wait_for(sock.recv(), 10)
            except ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else 1006
            return 0

    return await asyncio.gather(*(one(i) for i in range(count)))


def test_300_bad_enrollments_write_a_handful_of_rows(world: World) -> None:
    relay = world.relay
    before = len(events(relay, "agent.enroll.refused"))
    started = time.monotonic()
    codes = asyncio.run(_bad_enrollments(relay, 300, 8))
    took = time.monotonic() - started
    assert codes == [4401] * 300  # every one refused, as an unknown token
    assert relay.healthy()

    def summed() -> Any:
        rows = events(relay, "agent.enroll.refused")[before:]
        single, count = aggregated(rows)
        return (single, count) if len(single) + count == 300 else None

    single, _ = wait_for(summed, WINDOW_S * 3 + took, "the aggregated event")
    rows = events(relay, "agent.enroll.refused")[before:]
    # a window holds 6 rows (5 one by one + its summary); the burst may straddle windows
    assert len(rows) <= 6 * (int(took / WINDOW_S) + 2), f"{len(rows)} rows in {took:.1f} s"
    assert all(e["details"]["reason"] == "token_unknown" for e in single)
    summary = [e for e in rows if e["details"].get("aggregated")]
    if took < WINDOW_S:  # the whole burst in one window (it takes 2-3 s here)
        assert len(rows) == 6 and summary[0]["details"]["count"] == 295
    assert summary[0]["details"]["addresses"] == {"127.0.0.1": summary[0]["details"]["count"]}
    assert summary[0]["details"]["reasons"] == {"token_unknown": summary[0]["details"]["count"]}
    # And real enrollments still work.
    assert AgentProcess(world.root, "after-flood").enroll(relay.token()).returncode == 0


def test_health_alert_flood_from_one_agent_is_aggregated(world: World) -> None:
    relay = world.relay
    agent, key = enrolled_agent(world, "noisy")
    target = f"agent:{agent.agent_id}"
    flips = 300
    with ws(relay, "/agent/connect") as sock:
        sign_in(relay, sock, agent, key)
        same = protocol.encode("health", alerts=[
            {"id": "disk-full", "severity": "critical", "message": "/ is full"}])
        for _ in range(50):
            sock.send(same)  # a repeat changes nothing: one event for all fifty
        for i in range(flips):
            sock.send(protocol.encode("health", alerts=[
                {"id": f"alert-{i % 2}", "severity": "critical", "message": "flip"}]))
        sock.send(protocol.encode("hb", ack=True))
        assert json.loads(sock.recv(10))["type"] == "hb_ack"  # all handled by now

        def summed() -> Any:
            single, count = aggregated(events(relay, "agent.health.alert", target))
            return (single, count) if len(single) + count == flips + 1 else None

        single, count = wait_for(summed, WINDOW_S * 3, "the aggregated health alerts")
    assert len(single) == 5 and count == flips + 1 - 5
    assert single[0]["details"]["critical"] == ["disk-full"]
    assert relay.healthy()
    online = wait_for(lambda: world.admin.get(f"/api/v1/agents/{agent.agent_id}").json(),
                      5, "the agent row")
    assert online["health"][0]["id"] == f"alert-{(flips - 1) % 2}"


def test_protocol_errors_after_auth_are_aggregated_per_agent(world: World) -> None:
    relay = world.relay
    agent, key = enrolled_agent(world, "broken")
    target = f"agent:{agent.agent_id}"
    tries = 8
    for _ in range(tries):
        with ws(relay, "/agent/connect") as sock:
            sign_in(relay, sock, agent, key)
            sock.send('{"v":1,"type":"no-such-thing"}')
            assert json.loads(sock.recv(5))["type"] == "error"
            with pytest.raises(ConnectionClosed):
                sock.recv(5)

    def summed() -> Any:
        single, count = aggregated(events(relay, "agent.protocol_error", target))
        return (single, count) if len(single) + count == tries else None

    single, count = wait_for(summed, WINDOW_S * 3, "the aggregated protocol errors")
    assert len(single) == 5 and count == tries - 5
    reasons = [e["details"]["reason"] for e in events(relay, "agent.disconnect", target)]
    assert reasons and all(r.startswith("protocol error: ") for r in reasons), reasons


# --- the silent and the departed --------------------------------------------------


def test_silent_control_socket_is_closed_and_audited(world: World) -> None:
    relay = world.relay
    before = len(events(relay, "agent.auth.refused"))
    with ws(relay, "/agent/connect") as sock:
        assert json.loads(sock.recv(5))["type"] == "challenge"
        expect_timeout_close(sock)  # nothing sent: the challenge goes unanswered
    rows = wait_for(lambda: events(relay, "agent.auth.refused")[before:], 10,
                    "the audited timeout")
    assert rows[-1]["details"]["reason"] == "timeout"
    assert rows[-1]["details"]["address"] == "127.0.0.1"
    assert rows[-1]["actor"] == "anonymous@127.0.0.1"
    assert relay.healthy()


def test_silent_tunnel_socket_is_closed_and_audited(world: World) -> None:
    relay = world.relay
    target = "session:ss_nobodywaitsforthis"
    with ws(relay, "/agent/tunnel/ss_nobodywaitsforthis") as sock:
        expect_timeout_close(sock)
    rows = wait_for(lambda: events(relay, "session.tunnel.refused", target), 10,
                    "the audited timeout")
    assert [e["details"]["reason"] for e in rows] == ["timeout"]


def test_silent_join_and_enroll_sockets_are_audited(world: World) -> None:
    relay = world.relay
    before = {a: len(events(relay, a)) for a in ("session.join.refused",
                                                  "agent.enroll.refused")}
    for path in ("/agent/join", "/agent/enroll"):
        with ws(relay, path) as sock:
            expect_timeout_close(sock)
    for action, count in before.items():
        rows = events(relay, action)[count:]
        assert [e["details"]["reason"] for e in rows] == ["timeout"], action


def test_a_peer_gone_before_its_first_frame_is_audited(world: World) -> None:
    relay = world.relay
    before = len(events(relay, "agent.enroll.refused"))
    with ws(relay, "/agent/enroll"):
        pass  # opened, then closed at once
    rows = wait_for(lambda: events(relay, "agent.enroll.refused")[before:], 10,
                    "the audited departure")
    assert rows[-1]["details"]["reason"] == "peer_gone"


def _flood_rows(relay: RelayProcess, action: str, before: int, total: int, took: float
                ) -> list[dict[str, Any]]:
    """Wait for ``total`` refusals to be accounted for (one by one or summed), and
    check they took at most 6 rows per window the burst touched."""

    def summed() -> Any:
        rows = events(relay, action)[before:]
        single, count = aggregated(rows)
        return rows if len(single) + count == total else None

    rows: list[dict[str, Any]] = wait_for(summed, WINDOW_S * 3 + took, f"{action} summed")
    assert len(rows) <= 6 * (int(took / WINDOW_S) + 2), f"{len(rows)} rows in {took:.1f} s"
    assert any(e["details"].get("aggregated") for e in rows)
    return rows


@pytest.mark.parametrize(("path", "action", "headers"), [
    ("/api/v1/live", "websocket.refused", {"Origin": "https://evil.example"}),
    ("/api/v1/sessions/ss_nope/stream/info", "session.stream.refused", {}),
])
def test_browser_socket_refusals_are_aggregated(world: World, path: str, action: str,
                                                 headers: dict[str, str]) -> None:
    relay = world.relay
    before = len(events(relay, action))
    started = time.monotonic()
    for _ in range(30):
        with pytest.raises((InvalidStatus, ConnectionClosed)):
            with connect(relay.url.replace("https", "wss") + path, ssl=client_context(),
                         open_timeout=10, additional_headers=headers) as sock:
                sock.recv(5)
    rows = _flood_rows(relay, action, before, 30, time.monotonic() - started)
    reason = "bad_origin" if headers else "unauthenticated"
    assert all(e["details"]["reason"] == reason for e in rows if "reason" in e["details"])
    assert relay.healthy()


def test_protocol_error_during_consent_is_said_and_audited(world: World) -> None:
    relay, admin = world.relay, world.admin
    r = admin.post("/api/v1/session-codes", json={"reason": "consent probe"})
    assert r.status_code == 201, r.text
    code = r.json()
    with ws(relay, "/agent/join") as sock:
        sock.send(protocol.encode(
            "join", code=code["code"].replace("-", ""),
            public_key=protocol.b64e(keys.public_raw(keys.generate())), hostname="h",
            os="linux", os_version="1", arch="x86_64", version="1"))
        assert json.loads(sock.recv(5))["type"] == "join_offer"
        sock.send(json.dumps({"v": 1, "type": "consent", "answer": "maybe"}))
        reply = json.loads(sock.recv(5))
        assert reply["type"] == "error" and reply["code"] == "bad_field", reply
        with pytest.raises(ConnectionClosed) as closed:
            sock.recv(5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    target = f"session:{code['session_id']}"
    rows = wait_for(lambda: events(relay, "session.join.protocol_error", target), 10,
                    "the audited protocol error")
    assert rows[0]["details"]["reason"] == "bad_field"


# --- why a control socket ended -------------------------------------------------------


def test_disconnect_reasons_replaced_and_revoked(world: World) -> None:
    relay, admin = world.relay, world.admin
    agent, key = enrolled_agent(world, "twice")
    target = f"agent:{agent.agent_id}"
    with ws(relay, "/agent/connect") as first:
        sign_in(relay, first, agent, key)
        with ws(relay, "/agent/connect") as second:
            sign_in(relay, second, agent, key)
            with pytest.raises(ConnectionClosed) as closed:
                first.recv(5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4409
            assert admin.request("DELETE", f"/api/v1/agents/{agent.agent_id}").status_code \
                == 200
            with pytest.raises(ConnectionClosed):
                second.recv(5)
    reasons = wait_for(lambda: [e["details"]["reason"] for e in
                                events(relay, "agent.disconnect", target)]
                       if len(events(relay, "agent.disconnect", target)) == 2 else None,
                       10, "two disconnects")
    assert reasons == ["replaced", "revoked"]


def test_disconnect_reason_relay_shutdown(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, ENV).start()
    try:
        agent = AgentProcess(tmp_path, "stays")
        assert agent.enroll(relay.token()).returncode == 0
        key = keys.load_private(agent.state_dir / "identity_key")
        with ws(relay, "/agent/connect") as sock:
            sign_in(relay, sock, agent, key)
            relay.stop()
            with pytest.raises(ConnectionClosed):
                sock.recv(5)
        rows = [e for e in audit_actions(relay) if e["action"] == "agent.disconnect"]
        assert [e["details"]["reason"] for e in rows] == ["relay shutdown"]
    finally:
        relay.stop()
