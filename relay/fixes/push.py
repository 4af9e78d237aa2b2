"""The signed revocation list, pushed to agents over their control sockets.

Sent once after ``welcome`` and again to every online agent whenever a revocation is
added; agents keep the merged list (a revocation is never lifted; a list with a serial
not above the one they hold is ignored). Only agents whose ``auth.version`` says they
know the message get it (:func:`backline.common.protocol.takes_fix_revocations`): an
older agent refuses an unknown message type and would drop its control socket.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from backline.common import protocol

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
