"""The agent's own record of what technicians did on this machine.

The relay keeps the authoritative audit trail, but the customer should not have to
trust the relay to learn what happened on their own computer: every session start
and end, every channel and every refusal is appended here as one JSON line
(``activity.jsonl`` in the state directory, mode 0600), with who asked, for what,
what the policy decided and when. An attended ``join`` keeps nothing on disk and
shows the same lines on the customer's terminal instead.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("backline.agent.activity")

ACTIVITY_NAME = "activity.jsonl"
#: Why a session ended when the customer ended it (the log's and the relay's words).
CUSTOMER_ENDED = "ended by the customer"
MAX_BYTES = 5 * 1024 * 1024  # then activity.jsonl.1 takes over; one old file is kept


class ActivityLog:
    def __init__(self, path: Path | None, echo: Callable[[dict[str, Any]], None] | None = None,
                 max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.echo = echo
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": round(time.time(), 3), "event": event,
                 **{k: v for k, v in fields.items() if v is not None}}
        if self.path is not None:
            try:
                self._append(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
            except OSError as exc:  # a full disk must not end the customer's session
                log.error("cannot write %s: %s", self.path, exc)
        if self.echo is not None:
            self.echo(entry)
        level = logging.WARNING if "refused" in event or "denied" in event else logging.INFO
        log.log(level, "%s %s", event, {k: v for k, v in entry.items()
                                         if k not in ("time", "event")})
        return entry

    def _append(self, line: str) -> None:
        assert self.path is not None
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.path.stat().st_size > self.max_bytes:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def read(self) -> list[dict[str, Any]]:
        """Every entry still in the current file (for ``status`` and tests)."""
        if self.path is None or not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out
