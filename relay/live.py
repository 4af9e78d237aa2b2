"""The live bus: pushes agent presence and audit events to open console sockets.

Each subscriber has a bounded queue; one that falls behind is told to reload
rather than letting the relay's memory grow without limit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

QUEUE_LIMIT = 1000


@dataclass(eq=False)
class Subscriber:
    may_see: Callable[[dict[str, Any]], bool]
    queue: asyncio.Queue[dict[str, Any]] = field(
        default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False


class LiveBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, may_see: Callable[[dict[str, Any]], bool]) -> Subscriber:
        sub = Subscriber(may_see)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def publish(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            if sub.overflowed or not sub.may_see(event):
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True

    def publish_audit(self, event: dict[str, Any]) -> None:
        self.publish({"type": "audit", "event": event})
