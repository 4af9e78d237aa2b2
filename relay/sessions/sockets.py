"""The agents' session sockets: ``/agent/tunnel/{session_id}`` and ``/agent/join``.

``/agent/tunnel/{id}``: the first frame is ``tunnel`` with the one-time token the
relay sent in ``dial``; after it, binary frames carry SSH, with the relay as client.
The token only lets the WebSocket in: the SSH handshake still has to show the host
key the agent enrolled with (or sent with its ``join``).

``/agent/join``: attended mode. Each code is checked within the code limits
(:class:`backline.relay.auth_limits.JoinCodeLimits`): reserved once the join frame is
read, right before the lookup, so sockets opened beforehand and fired at once get no
more lookups than the limits; past a limit the attempt is refused unread. Every
refusal is audited (as floods, per address). A right code is spent at once, whatever
the customer then answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.websockets import WebSocket

from backline.common import protocol
from backline.common.protocol import ProtocolError
from backline.relay.auth_limits import CodeRateLimited
from backline.relay.control import (
    CLOSE_AUTH,
    CLOSE_PROTOCOL,
    PeerGone,
    first_frame,
    receive_frame,
)
from backline.relay.net import conn_limits
from backline.relay.ratelimit import address_key
from backline.relay.sessions.session import CodeRefused, LiveSession, SessionError
from backline.relay.state import Relay
from backline.relay.webauth import client_address

CONSENT_TIMEOUT_S = 150.0  # the agent gives the customer 120 s
CLOSE_RATE_LIMITED = 4429

log = logging.getLogger("backline.relay.sessions")


async def _refuse(ws: WebSocket, code: str, message: str, close_code: int) -> None:
    with contextlib.suppress(Exception):  # the peer may already be gone
        await ws.send_text(protocol.encode("error", code=code, message=message[:1024]))
        await ws.close(close_code, code)


async def tunnel_endpoint(ws: WebSocket) -> None:
    relay: Relay = ws.app.state.relay
    address = client_address(ws)
    session_id = str(ws.path_params["session_id"])[:64]
    await ws.accept()
    frame = await first_frame(ws, relay, address, "session.tunnel.refused",
                              f"session:{session_id}")
    if frame is None:
        return
    try:
        msg = protocol.decode(frame, frozenset({"tunnel"}))
        session = relay.sessions.claim_tunnel(session_id, msg["token"])
    except (ProtocolError, SessionError) as err:
        reason = err.code
        relay.metrics.errors.labels("tunnel_refused").inc()
        # A stranger can try tunnels at will: a flood from its address.
        relay.record_flood(address, f"anonymous@{address}", "session.tunnel.refused",
                           f"session:{session_id}", reason=reason, address=address)
        await _refuse(ws, reason, "no session is waiting for this tunnel"
                      if isinstance(err, SessionError) else err.message,
                      CLOSE_AUTH if isinstance(err, SessionError) else CLOSE_PROTOCOL)
        return
    conn_limits.authenticated(ws)  # the one-time tunnel token was accepted
    await relay.sessions.run_tunnel(session, ws, address)


async def join_endpoint(ws: WebSocket) -> None:
    relay: Relay = ws.app.state.relay
    sessions = relay.sessions
    address = client_address(ws)
    actor = f"anonymous@{address}"
    source = address_key(address)
    await ws.accept()
    wait, limit = sessions.codes.retry_after(address)  # early, cheap; reserved below
    if wait > 0:
        await _code_rate_limited(ws, relay, actor, address, limit, wait)
        return
    frame = await first_frame(ws, relay, address, "session.join.refused", "session-code")
    if frame is None:
        return
    try:
        msg = protocol.decode(frame, frozenset({"join"}))
        key = protocol.b64d(msg["public_key"])
        if len(key) != 32:
            raise ProtocolError("bad_field", "join: public_key is not an Ed25519 key")
    except ProtocolError as err:
        sessions.codes.failed(address)
        relay.metrics.errors.labels(err.code).inc()
        relay.record_flood(source, actor, "session.join.refused", "session-code",
                           reason=err.code, address=address)
        await _refuse(ws, err.code, err.message, CLOSE_PROTOCOL)
        return
    try:
        session = sessions.codes.redeem(msg["code"], address, msg["hostname"], key)
    except CodeRateLimited as limited:
        await _code_rate_limited(ws, relay, actor, address, limited.limit,
                                 limited.retry_after)
        return
    except CodeRefused as refused:
        relay.metrics.errors.labels("session_code").inc()
        relay.record_flood(source, actor, "session.join.refused", "session-code",
                           reason=refused.reason, address=address,
                           hostname=msg["hostname"][:100])
        await _refuse(ws, "bad_code", "that session code is wrong, already used or expired",
                      CLOSE_AUTH)
        return
    conn_limits.authenticated(ws)  # a right session code was spent
    customer = f"customer@{address}"
    relay.record(customer, "session.join", f"session:{session.id}", principal=session.principal,
                 technician=session.technician, hostname=msg["hostname"][:100], os=msg["os"],
                 address=address)
    try:
        await _attend(ws, relay, session, customer)
    finally:
        if not session.closing:
            await sessions.close(session, "customer", "the join connection closed", customer)
        with contextlib.suppress(Exception):
            await ws.close(1000)


async def _code_rate_limited(ws: WebSocket, relay: Relay, actor: str, address: str,
                             limit: str, wait: float) -> None:
    relay.metrics.errors.labels("session_code_rate_limited").inc()
    relay.record_flood(address_key(address), actor, "session.join.rate_limited",
                       "session-code", reason=limit, address=address)
    await _refuse(ws, "rate_limited", f"too many wrong session codes; try again in "
                                      f"{int(wait) + 1} s", CLOSE_RATE_LIMITED)


async def _attend(ws: WebSocket, relay: Relay, session: LiveSession, customer: str) -> None:
    """Offer, consent, dial; then hold the join socket until the session ends."""
    await ws.send_text(protocol.encode(
        "join_offer", session_id=session.id, principal=session.principal,
        technician=session.technician, reason=session.reason, ticket=session.ticket,
        ca_public_key=relay.ca_public_key, capabilities=list(session.capabilities)))
    try:
        async with asyncio.timeout(CONSENT_TIMEOUT_S):
            consent = protocol.decode(await receive_frame(ws), frozenset({"consent"}))
    except ProtocolError as err:  # said to the customer's agent, audited, then closed
        _protocol_error(relay, session, customer, err)
        await _refuse(ws, err.code, err.message, CLOSE_PROTOCOL)
        await relay.sessions.close(session, "protocol_error", actor=customer)
        return
    except (TimeoutError, PeerGone) as exc:
        reason = "consent_timeout" if isinstance(exc, TimeoutError) else "customer_left"
        await relay.sessions.close(session, reason, actor=customer)
        return
    if consent["answer"] != "yes":
        relay.record(customer, "session.join.declined", f"session:{session.id}")
        await relay.sessions.close(session, "declined", "the customer said no", customer)
        return
    relay.record(customer, "session.join.accepted", f"session:{session.id}")
    await ws.send_text(relay.sessions.accepted(session, ws.send_text))
    ended = asyncio.ensure_future(session.closed.wait())
    left = asyncio.ensure_future(_listen(ws, relay, session))
    try:
        await asyncio.wait({ended, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
        left.cancel()


async def _listen(ws: WebSocket, relay: Relay, session: LiveSession) -> Any:
    """The join socket during the session: only ``session_ended`` may come; anything
    else ends the session (the caller closes it) and is audited."""
    customer = f"customer@{session.remote_address}"
    try:
        while True:
            msg = protocol.decode(await receive_frame(ws), frozenset({"session_ended"}))
            relay.sessions.from_agent(session.principal, msg)
    except ProtocolError as err:
        _protocol_error(relay, session, customer, err)
        await _refuse(ws, err.code, err.message, CLOSE_PROTOCOL)
    except PeerGone:  # gone: the caller ends the session
        pass
    except Exception:  # a bug: the caller still ends the session, the log says why
        log.exception("join socket of session %s failed", session.id)


def _protocol_error(relay: Relay, session: LiveSession, customer: str,
                    err: ProtocolError) -> None:
    relay.metrics.errors.labels(err.code).inc()
    relay.record_flood(session.remote_address, customer, "session.join.protocol_error",
                       f"session:{session.id}", reason=err.code, detail=err.message[:200],
                       address=session.remote_address)
