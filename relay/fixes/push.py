"""The signed revocation list, pushed to agents over their control sockets.

Sent once after ``welcome`` and again to every online agent whenever a revocation is
added; agents keep the merged list (a revocation is never lifted; a list with a serial
not above the one they hold is ignored). A list too long for one control frame (56 KiB
of base64: about 100 entries with long reasons) is not dropped: the message is then an
announcement (empty ``list_b64`` and ``signature``) and the agent fetches the same
signed body from ``GET /agent/fix-revocations`` (:func:`revocations_endpoint`), over
its pinned TLS connection, the way it reads ``/agent/pins``. Public like that one: what
makes it trustworthy is the fix key's signature, and it names only revoked versions
(ids, digests, reasons cut to 200 characters: write no secret in a revocation reason).

Only agents whose ``auth.version`` says they know the message get it
(:func:`backline.common.protocol.takes_fix_revocations`): an older agent refuses an
unknown message type and would drop its control socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from backline.common import protocol

if TYPE_CHECKING:  # the service (and the CLI through it) needs no web framework
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger("backline.relay.fixes.push")


class RevocationPush:
    """Who can take the list (agent id -> send), and sending it."""

    def __init__(self) -> None:
        self.takers: dict[str, Any] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def connected(self, agent_id: str, version: str, send: Any) -> bool:
        """Remember an agent that can take the list; whether it can."""
        if not protocol.takes_fix_revocations(version):
            self.takers.pop(agent_id, None)
            return False
        self.takers[agent_id] = send
        return True

    def gone(self, agent_id: str, send: Any) -> None:
        """Forget an agent whose socket closed (not one that replaced it: a bound
        ``send`` of another socket compares unequal)."""
        if self.takers.get(agent_id) == send:
            del self.takers[agent_id]

    def broadcast(self, message: str) -> int:
        """Send ``message`` to every agent that takes it, in the background; how many."""
        for agent_id, send in list(self.takers.items()):
            task = asyncio.ensure_future(self._send(agent_id, send, message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(self.takers)

    @staticmethod
    async def _send(agent_id: str, send: Any, message: str) -> None:
        try:
            await send(message)
        except Exception as exc:  # the socket closing: the next welcome sends it again
            log.info("revocation list not sent to %s: %r", agent_id, exc)


async def revocations_endpoint(request: Request) -> Response:
    """``GET /agent/fix-revocations``: the whole signed list (the body of
    ``revocation.encode_message``), 404 while nothing is revoked."""
    from starlette.responses import JSONResponse
    from starlette.responses import Response as Plain

    served = request.app.state.relay.fixes.served_revocations()
    if served is None:
        return JSONResponse({"error": "no_revocations"}, status_code=404,
                            headers={"cache-control": "no-store"})
    data, sha = served  # encoded once per serial by the service, not per request
    etag = f'"{sha}"'
    headers = {"cache-control": "no-cache", "etag": etag}
    asked = [t.strip() for t in request.headers.get("if-none-match", "")[:1024].split(",")]
    if etag in asked:
        return Plain(status_code=304, headers=headers)
    return Plain(data, media_type="application/json", headers=headers)
