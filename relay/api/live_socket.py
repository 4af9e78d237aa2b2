"""``/api/v1/live``: the console's WebSocket for live agent presence and audit events.

Browsers can reach it, so it is admitted by :mod:`backline.relay.api.browser_socket`
(Origin, sign-in, TOTP) before accepting, and shows each person only what they
may see through the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from backline.relay import users
from backline.relay.api.browser_socket import admit
from backline.relay.state import Relay

KEEPALIVE_S = 25.0


async def live_endpoint(ws: WebSocket) -> None:
    relay: Relay = ws.app.state.relay
    principal = await admit(ws, refused_action="live.refused")
    if principal is None:
        return
    groups = users.granted_group_ids(relay.engine, principal.user)
    reads_audit = principal.can("audit:read")
    reads_agents = principal.can("agents:read")

    def may_see(event: dict[str, Any]) -> bool:
        if event["type"] == "audit":
            return reads_audit
        if (event["type"] == "session" and reads_agents
                and event.get("technician") == principal.user.username):
            return True  # their own sessions, attended ones (no group) included
        return reads_agents and (groups is None or event.get("group_id") in groups)

    await ws.accept()
    sub = relay.bus.subscribe(may_see)
    receiver = asyncio.create_task(_drain(ws))
    try:
        await ws.send_text(json.dumps({"type": "hello", "user": principal.user.username}))
        while True:
            getter = asyncio.ensure_future(sub.queue.get())
            done, _ = await asyncio.wait({getter, receiver}, timeout=KEEPALIVE_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:  # the console went away
                getter.cancel()
                return
            if getter not in done:
                getter.cancel()
                await ws.send_text('{"type":"keepalive"}')
                continue
            if sub.overflowed:
                await ws.send_text(json.dumps({"type": "resync"}))
                return
            await ws.send_text(json.dumps(getter.result(), ensure_ascii=False))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        relay.bus.unsubscribe(sub)
        receiver.cancel()
        with contextlib.suppress(Exception):
            await ws.close(1001)


async def _drain(ws: WebSocket) -> None:
    """Nothing is expected from the console; reading just notices when it leaves."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
    except Exception:
        return
