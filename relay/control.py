"""The agents' WebSocket endpoints: ``/agent/enroll`` and ``/agent/connect``.

Thin asyncio layers over :mod:`backline.common.protocol`: they move frames and
touch the database; the protocol module decides what a frame means. Any frame
that breaks the protocol closes that one connection with a clear error, is
counted and audited, and nothing else is disturbed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from backline.common import keys, protocol
from backline.common.protocol import ProtocolError
from backline.relay import agents, tokens
from backline.relay.agents import Connected
from backline.relay.db import writing
from backline.relay.net import conn_limits
from backline.relay.net.control_socket import LeanSocket
from backline.relay.state import Relay
from backline.relay.webauth import client_address

log = logging.getLogger("backline.relay.control")

PING_TIMEOUT_S = 10.0
# WebSocket close codes (4000-4999 are ours).
CLOSE_PROTOCOL = 4400
CLOSE_AUTH = 4401
CLOSE_REPLACED = 4409
CLOSE_TIMEOUT = 4408  # silent before its first frame, or no heartbeat


class PeerGone(Exception):
    """The peer went away."""


async def receive_frame(ws: WebSocket) -> str | bytes:
    """The next message's text or bytes; :class:`PeerGone` when the socket closed."""
    message = await ws.receive()
    if message["type"] == "websocket.disconnect":
        raise PeerGone
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""


async def _refuse(ws: WebSocket, relay: Relay, source: str, code: str, message: str,
                  close_code: int, actor: str, action: str, target: str = "",
                  **details: Any) -> None:
    """Answer a refusal (an ``error`` frame, then close) and audit it as a flood from
    ``source`` (the address of a stranger, the id of an agent): each of these can be
    repeated at will, so past the first few a minute they are counted, not written."""
    relay.metrics.errors.labels(code).inc()
    relay.record_flood(source, actor, action, target, reason=code, detail=message[:200],
                       **details)
    await _say_and_close(ws, code, message, close_code)


async def first_frame(ws: WebSocket, relay: Relay, address: str, action: str,
                      target: str = "") -> str | bytes | None:
    """A socket's first message, within ``agent_first_frame_timeout_s``; ``None`` when
    none came (silence, or the peer left first), once that is answered and audited.

    A silent socket used to be dropped without a trace: a stranger could hold and
    drop them by the thousand and the trail said nothing. Now it is audited as a flood
    from its address (``reason`` ``timeout`` or ``peer_gone``) and a silent one is told
    why it is closed."""
    timeout = relay.config.agent_first_frame_timeout_s
    try:
        async with asyncio.timeout(timeout):
            return await receive_frame(ws)
    except (TimeoutError, PeerGone, WebSocketDisconnect) as exc:
        if isinstance(exc, TimeoutError):
            _audit_silence(relay, address, action, target, "timeout",
                           f"no message within {timeout:g} s")
            await _say_and_close(ws, "timeout", f"no message within {timeout:g} s",
                                 CLOSE_TIMEOUT)
        else:
            _audit_silence(relay, address, action, target, "peer_gone",
                           "the peer left before its first message")
        return None


def _audit_silence(relay: Relay, address: str, action: str, target: str, reason: str,
                   detail: str) -> None:
    relay.metrics.errors.labels(f"first_frame_{reason}").inc()
    relay.record_flood(address, f"anonymous@{address}", action, target, reason=reason,
                       detail=detail, address=address)


async def _say_and_close(ws: WebSocket, code: str, message: str, close_code: int) -> None:
    if isinstance(ws, LeanSocket):
        ws.write_text(protocol.encode("error", code=code, message=message[:1024]))
        ws.close_now(close_code, code)
        return
    try:
        await ws.send_text(protocol.encode("error", code=code, message=message[:1024]))
        await ws.close(close_code, code)
    except Exception:  # noqa: S110 - the peer may already be gone
        pass


async def enroll_endpoint(ws: WebSocket) -> None:
    """One enrollment: the agent sends ``enroll``, the relay answers ``enrolled``."""
    relay: Relay = ws.app.state.relay
    address = client_address(ws)
    actor = f"anonymous@{address}"
    await ws.accept()
    frame = await first_frame(ws, relay, address, "agent.enroll.refused")
    if frame is None:
        return
    try:
        msg = protocol.decode(frame, frozenset({"enroll"}))
        public_key = protocol.b64d(msg["public_key"])
        signature = protocol.b64d(msg["signature"])
    except ProtocolError as err:
        await _refuse(ws, relay, address, err.code, err.message, CLOSE_PROTOCOL, actor,
                      "agent.enroll.refused", address=address)
        return
    if len(public_key) != 32 or not any(
            keys.verify(public_key, signature,
                        protocol.enroll_payload(msg["token"], public_key, bound))
            for bound in relay.tls_bindings):
        await _refuse(ws, relay, address, "bad_signature",
                      "the enrollment request is not signed by the key it registers "
                      "(or was made for another relay certificate)",
                      CLOSE_AUTH, actor, "agent.enroll.refused", address=address)
        return
    info = {k: msg[k] for k in agents.INFO_FIELDS}
    try:
        with writing(relay.engine) as conn:
            token = tokens.redeem_enroll_token(conn, msg["token"])
            agent_id = agents.register(conn, token["group_id"], public_key, info,
                                       token["id"], address)
    except tokens.TokenRefused as refused:
        await _refuse(ws, relay, address, f"token_{refused.reason}", refused.message, CLOSE_AUTH,
                      actor, "agent.enroll.refused",
                      f"enroll_token:{refused.token_id}" if refused.token_id else "",
                      address=address, hostname=info["hostname"][:100])
        return
    agent = agents.get_agent(relay.engine, relay.presence, agent_id)
    assert agent is not None
    relay.record(f"agent:{agent_id}", "agent.enroll", f"agent:{agent_id}",
                 enroll_token=token["id"], group=agent["group"], address=address,
                 hostname=info["hostname"], os=info["os"], arch=info["arch"])
    relay.bus.publish({"type": "agent", "agent_id": agent_id, "group_id": agent["group_id"],
                       "changed": {"enrolled": True}})
    await ws.send_text(protocol.encode(
        "enrolled", agent_id=agent_id, group=agent["group"],
        ca_public_key=relay.ca_public_key,
        audit_public_key=protocol.b64e(relay.audit.public_key),
        fix_keys=relay.fixes.public_keys(),
        control_url=relay.origin.replace("https://", "wss://", 1) + "/agent/connect",
        heartbeat_s=relay.config.heartbeat_s))
    await ws.close(1000)


async def connect_endpoint(ws: WebSocket) -> None:
    """The long-lived control socket of one enrolled agent."""
    relay: Relay = ws.app.state.relay
    address = client_address(ws)
    await ws.accept()
    login = await _authenticate(ws, relay, address)
    if login is None:
        return
    conn_limits.authenticated(ws)  # the signed challenge passed: no longer a stranger
    agent_id, group_id, version = login
    if isinstance(ws, LeanSocket):
        ws.agent_id = agent_id  # a frame-level violation from now on is the agent's
    conn = Connected(agent_id=agent_id, group_id=group_id, address=address,
                     connected_at=time.time(), send=ws.send_text, close=ws.close,
                     quiet=ws.set_quiet if isinstance(ws, LeanSocket) else None)
    await _replace(relay.presence.add(conn))
    relay.record_soon(f"agent:{agent_id}", "agent.connect", f"agent:{agent_id}",
                      address=address, version=version)
    relay.bus.publish({"type": "agent", "agent_id": agent_id, "group_id": group_id,
                       "changed": {"online": True, "last_seen": conn.last_seen}})
    reason = "closed"
    try:
        await ws.send_text(protocol.encode("welcome", agent_id=agent_id,
                                           heartbeat_s=relay.config.heartbeat_s,
                                           relay_time=round(time.time(), 3)))
        await relay.fixes.agent_connected(agent_id, version, ws.send_text)
        if isinstance(ws, LeanSocket):
            reason = await _CallbackServer(ws, relay, conn).run()
        else:
            reason = await _serve(ws, relay, conn)
    except (PeerGone, WebSocketDisconnect):
        reason = "closed"
    except ProtocolError as err:
        reason = f"protocol error: {err.code}"
        await _refuse(ws, relay, f"agent:{agent_id}", err.code, err.message, CLOSE_PROTOCOL,
                      f"agent:{agent_id}", violation_action(err), f"agent:{agent_id}",
                      address=address)
    finally:
        relay.fixes.push.gone(agent_id, ws.send_text)
        current = relay.presence.remove(conn)  # False: a newer socket replaced this one
        if current:
            agents.update_agent(relay.engine, agent_id, last_seen=conn.last_seen,
                                last_address=address)
            relay.bus.publish({"type": "agent", "agent_id": agent_id, "group_id": group_id,
                               "changed": {"online": False, "last_seen": conn.last_seen}})
        relay.record_soon(f"agent:{agent_id}", "agent.disconnect", f"agent:{agent_id}",
                          reason=disconnect_reason(relay, conn, reason), address=address)


def violation_action(err: ProtocolError) -> str:
    """How an authenticated agent's broken frame is audited: a self-service fix report
    as a refused one (``fix.self_service.refused``: the report an auditor looks for is
    named), anything else as ``agent.protocol_error``. Either way the socket is closed."""
    return ("fix.self_service.refused" if err.msg_type == "fix_report"
            else "agent.protocol_error")


def disconnect_reason(relay: Relay, conn: Connected, outcome: str) -> str:
    """Why a control socket ended, for its ``agent.disconnect`` event: what the relay
    closed it for (``revoked``, ``replaced``) first, then what the socket's loop saw
    (``idle timeout``, ``protocol error: ...``), then the relay stopping
    (``relay shutdown``); ``closed`` only when the agent left by itself."""
    if conn.ended:
        return conn.ended
    if outcome == "closed" and relay.stopping:
        return "relay shutdown"
    return outcome


# The helpers below return before the socket settles into its long idle life, so that
# nothing they touched (frames, nonce, parsed auth message, a replaced connection) stays
# referenced by a coroutine frame for hours: at 10,000 agents every byte is 10 KB.


async def _authenticate(ws: WebSocket, relay: Relay, address: str
                        ) -> tuple[str, int, str] | None:
    """Challenge the agent and check its signature: ``(agent_id, group_id, version)``,
    or ``None`` once the refusal (if any) has been answered and audited."""
    bindings = relay.tls_bindings
    handshake = protocol.RelayHandshake(bindings[0], also_bound=bindings[1:])
    try:
        await ws.send_text(handshake.challenge(time.time()))
    except (PeerGone, WebSocketDisconnect, OSError):
        _audit_silence(relay, address, "agent.auth.refused", "", "peer_gone",
                       "the peer left before the challenge")
        return None
    frame = await first_frame(ws, relay, address, "agent.auth.refused")
    if frame is None:
        return None
    try:
        msg = handshake.receive_auth(frame)
    except ProtocolError as err:
        await _refuse(ws, relay, address, err.code, err.message, CLOSE_PROTOCOL,
                      f"anonymous@{address}", "agent.protocol_error", address=address)
        return None
    agent_id = msg["agent_id"]
    known = agents.public_key_of(relay.engine, agent_id)
    if known is None or not handshake.verify(msg, known[0]):
        reason = "unknown or revoked agent" if known is None else "bad signature"
        await _refuse(ws, relay, address, "auth_failed", f"authentication failed: {reason}",
                      CLOSE_AUTH, f"anonymous@{address}", "agent.auth.refused", f"agent:{agent_id}",
                      address=address)
        return None
    return agent_id, known[1], msg["version"]


async def _replace(old: Connected | None) -> None:
    """Close the older socket of an agent that connected again."""
    if old is not None:
        old.ended = "replaced"
        try:
            await old.close(CLOSE_REPLACED, "replaced by a newer connection")
        except Exception:  # noqa: S110 - the old socket may already be gone
            pass


async def _serve(ws: WebSocket, relay: Relay, conn: Connected) -> str:
    """Read frames until the agent leaves or stays silent for three heartbeats.

    A frame only notes the time. One timer per socket looks at that note when it is due
    and either fires (nothing came for ``idle`` seconds) or sets itself for ``idle``
    after the last frame. An ``asyncio.timeout`` around every receive instead made,
    cancelled and re-made a timer at every heartbeat: 5 % of the relay's CPU at 10,000
    agents (docs/benchmarks.md, "Idle agents")."""
    idle = relay.config.heartbeat_s * 3
    loop = asyncio.get_running_loop()
    last = loop.time()

    def due() -> None:
        nonlocal timer
        now = loop.time()
        if now - last >= idle:
            deadline.reschedule(now)  # expires at once: the receive below is cancelled
        else:
            timer = loop.call_at(last + idle, due)

    try:
        async with asyncio.timeout(None) as deadline:
            timer = loop.call_at(last + idle, due)
            try:
                while True:
                    frame = await receive_frame(ws)
                    last = loop.time()
                    await _handle(ws, relay, conn, frame)
                    del frame  # an idle socket keeps no copy of its last message
            finally:
                timer.cancel()
    except TimeoutError:
        if not deadline.expired():
            raise
    await ws.close(CLOSE_TIMEOUT, "no heartbeat")
    return "idle timeout"


class _CallbackServer:
    """:func:`_serve` for a :class:`LeanSocket`: each message is handled in the
    connection's own callback (no future, no task switch, no coroutine step per
    heartbeat), and one timer per socket closes it after three silent heartbeats.
    The coroutine that created it only waits for the end."""

    __slots__ = ("conn", "idle", "last", "loop", "outcome", "relay", "timer", "ws")

    def __init__(self, ws: LeanSocket, relay: Relay, conn: Connected) -> None:
        self.ws, self.relay, self.conn = ws, relay, conn
        self.idle = relay.config.heartbeat_s * 3
        self.loop = asyncio.get_running_loop()
        self.last = self.loop.time()
        self.outcome = "closed"
        self.timer: asyncio.TimerHandle | None = None

    async def run(self) -> str:
        self.ws.handler = self.on_message
        if not self.conn.pending_pings:  # a ping already sent keeps its socket loud
            self.ws.set_quiet(True)  # heartbeats may wait a few ms to share a wake-up
        for frame in self.ws.take_pending():
            if self.ws.done:
                break
            self.on_message(frame)
        self.timer = self.loop.call_at(self.last + self.idle, self.due)
        try:
            await self.ws.wait_closed()
        finally:
            self.ws.handler = None
            if self.timer is not None:
                self.timer.cancel()
        return self.outcome

    def on_message(self, frame: str | bytes) -> None:
        self.last = self.loop.time()
        try:
            reply = _reply(self.relay, self.conn, frame)
        except ProtocolError as err:
            self.outcome = f"protocol error: {err.code}"
            agent = f"agent:{self.conn.agent_id}"
            self.relay.metrics.errors.labels(err.code).inc()
            self.relay.record_flood(agent, agent, violation_action(err), agent,
                                    reason=err.code, detail=err.message[:200],
                                    address=self.conn.address)
            self.ws.write_text(protocol.encode("error", code=err.code,
                                               message=err.message[:1024]))
            self.ws.close_now(CLOSE_PROTOCOL, err.code)
            return
        if reply is not None:
            self.ws.write_text(reply)

    def due(self) -> None:
        if self.ws.done:
            return
        if self.loop.time() - self.last >= self.idle:
            self.outcome = "idle timeout"
            self.ws.close_now(CLOSE_TIMEOUT, "no heartbeat")
        else:
            self.timer = self.loop.call_at(self.last + self.idle, self.due)


async def _handle(ws: WebSocket, relay: Relay, conn: Connected, frame: str | bytes) -> None:
    """One frame from an authenticated agent."""
    reply = _reply(relay, conn, frame)
    if reply is not None:
        await ws.send_text(reply)


def _reply(relay: Relay, conn: Connected, frame: str | bytes) -> str | None:
    """Act on one frame from an authenticated agent; the answer to send, if any."""
    msg = protocol.parse_agent_message(frame)
    relay.metrics.control_in += 1
    conn.last_seen = time.time()
    kind = msg["type"]
    if kind == "hb":
        if not msg.get("ack", True):
            return None  # the agent did not ask: most heartbeats need no answer
        relay.metrics.control_out += 1
        return protocol.encode_hb_ack(conn.last_seen)
    if kind == "pong":
        waiter = conn.pending_pings.pop(msg["id"], None)
        if waiter is not None and not waiter.done():
            waiter.set_result(time.perf_counter())
    elif kind == "health":
        _store_health(relay, conn, msg["alerts"])
    elif kind in ("dial_failed", "session_ended"):
        relay.sessions.from_agent(conn.agent_id, msg)
    elif kind == "fix_report":
        relay.metrics.control_out += 1
        return relay.fixes.self_service.receive(conn, msg, frame)
    return None


def _store_health(relay: Relay, conn: Connected, alerts: list[dict[str, str]]) -> None:
    """Store a health report; audit a change of its critical alerts.

    An agent reports on a timer and on every reconnect, and a compromised one can
    report every millisecond: a row per report (3,000 ``agent.health.alert`` events
    from one agent) buries the trail. So a report identical to the last one this
    socket sent is not written again; ``agent.health.alert`` is recorded when the set
    of critical alerts changes (``agent.health.cleared`` when it empties), and even
    those go through the per-agent flood aggregation, so an agent that flips its
    alerts at will gets its first few written and the rest counted in one event.

    The first report on a connection is compared with the one stored from the agent's
    last connection (read once per connection): an alert that cleared while the agent
    was offline (a customer's self-service fix, say) is ``agent.health.cleared`` when it
    reconnects, and one still there is not written again. Compared with nothing, as
    before, the first clear after a reconnect was never audited and the alert's incident
    stayed open in the trail for good."""
    if conn.health is None:
        conn.health = agents.stored_health(relay.engine, conn.agent_id)
        try:
            before = json.loads(conn.health)
            conn.critical = frozenset(a["id"] for a in before if a["severity"] == "critical")
        except (ValueError, TypeError, KeyError):
            conn.critical = frozenset()
    stored = json.dumps(alerts)
    if stored == conn.health:
        return
    conn.health = stored
    agents.update_agent(relay.engine, conn.agent_id, health=stored)
    relay.bus.publish({"type": "agent", "agent_id": conn.agent_id, "group_id": conn.group_id,
                       "changed": {"health": alerts}})
    critical = frozenset(a["id"] for a in alerts if a["severity"] == "critical")
    if critical != conn.critical:
        agent = f"agent:{conn.agent_id}"
        if critical:
            relay.record_flood(agent, agent, "agent.health.alert", agent,
                               reason="critical", alerts=[a["id"] for a in alerts],
                               critical=sorted(critical))
        else:
            relay.record_flood(agent, agent, "agent.health.cleared", agent,
                               reason="cleared", cleared=sorted(conn.critical))
        conn.critical = critical
    relay.webhooks.agent_health(conn.agent_id, conn.group_id, alerts)


async def ping(relay: Relay, conn: Connected) -> float | None:
    """Round trip in ms over the control socket, or ``None`` on timeout."""
    ping_id = secrets.token_hex(8)
    waiter: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    conn.pending_pings[ping_id] = waiter
    if conn.quiet is not None:
        conn.quiet(False)  # the pong must not wait for the quiet readers' next tick
    started = time.perf_counter()
    try:
        await conn.send(protocol.encode("ping", id=ping_id))
        async with asyncio.timeout(PING_TIMEOUT_S):
            answered = await waiter
    except (TimeoutError, Exception):
        return None
    finally:
        conn.pending_pings.pop(ping_id, None)
        if conn.quiet is not None and not conn.pending_pings:
            conn.quiet(True)
    return round((answered - started) * 1000, 2)
