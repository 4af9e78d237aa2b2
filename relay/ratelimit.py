"""Failure counting for logins and session codes: per key, sliding window, bounded.

In memory per relay node: an attacker spreading guesses across nodes gets at most
one budget per node, which the per-account limit keeps small.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque


class FailureLimiter:
    def __init__(self, limit: int, window_s: float, max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._failures.get(key)
        if q is None:
            return deque()
        while q and q[0] <= now - self.window_s:
            q.popleft()
        if not q:
            del self._failures[key]
        return q

    def retry_after(self, key: str, now: float | None = None) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        now = time.monotonic() if now is None else now
        q = self._recent(key, now)
        if len(q) < self.limit:
            return 0.0
        return max(0.0, q[0] + self.window_s - now)

    def fail(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        q = self._failures.setdefault(key, deque())
        q.append(now)
        while len(q) > self.limit:
            q.popleft()
        self._failures.move_to_end(key)
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
