"""``rrweb_part`` lines: one rrweb event too large for a line (the full snapshot of a very
large page), sent by the agent in pieces, checked here before any is recorded or shown.

A line is at most 1 MiB (the contract), but a page of tens of thousands of nodes has a
larger full snapshot; the agent cuts the event's JSON text into pieces
(``{"type":"rrweb_part","id":"s1","index":i,"total":n,"event":2,"text":"..."}``) and the
console joins them back. The relay does not join them (it never parses the customer's
page, and 16 MiB held per co-browse for that would buy nothing): it checks that each
part is well formed and bounded, that the parts of a snapshot come in order, that
their count and their total size are bounded (:data:`MAX_PARTS`,
:data:`MAX_ASSEMBLY_CHARS`), that they come within :data:`ASSEMBLY_WAIT_S`, and that
one snapshot at a time is being assembled. A part that breaks a rule is dropped
(neither recorded nor shown); the assembly it belonged to is abandoned, and so is
one that any other rrweb line interrupts (the agent sends the parts back to back).
Consoles follow the same rules on what the relay let through, so a broken assembly
is dropped on both sides and the view waits for the next snapshot.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

#: Parts of one event, at most (the agent's pieces are at most 512 Ki characters).
MAX_PARTS = 64
#: The text of all the parts of one event, at most (characters, as decoded).
MAX_ASSEMBLY_CHARS = 16 * 1024 * 1024
#: From the first part to the last, at most.
ASSEMBLY_WAIT_S = 30.0
_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class BadPart(Exception):
    """Why a part is dropped (the reason code, as for any agent line dropped)."""


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(obj: dict[str, Any]) -> None:
    """The fields of one ``rrweb_part`` line, each typed and bounded."""
    sid, index, total, kind, text = (obj.get(k) for k in ("id", "index", "total", "event",
                                                           "text"))
    if not (isinstance(sid, str) and _ID.fullmatch(sid)):
        raise BadPart("bad_part")
    if not (_int(total) and 2 <= total <= MAX_PARTS):  # type: ignore[operator]
        raise BadPart("too_many_parts" if _int(total) else "bad_part")
    if not (_int(index) and 0 <= index < total):  # type: ignore[operator]
        raise BadPart("bad_part")
    if not (_int(kind) and 0 <= kind <= 6):  # type: ignore[operator]
        raise BadPart("bad_part")
    if not (isinstance(text, str) and text):
        raise BadPart("bad_part")
    if set(obj) - {"type", "id", "index", "total", "event", "text"}:
        raise BadPart("bad_part")


@dataclass
class Assembly:
    id: str
    total: int
    event: int
    started: float
    next: int = 1
    chars: int = 0


@dataclass
class Parts:
    """The one event being assembled on a co-browse, and what became of the others."""

    open: Assembly | None = None
    completed: int = 0
    abandoned: int = 0
    #: Why the last assembly was abandoned (for the log).
    last_abandoned: str = ""
    clock: Any = field(default=time.monotonic)

    def _abandon(self, why: str) -> None:
        if self.open is not None:
            self.open = None
            self.abandoned += 1
            self.last_abandoned = why

    def part(self, obj: dict[str, Any]) -> int | None:
        """Check one part (its fields already checked); the event's rrweb type when it
        is the last part of a whole, in-order assembly, else None. ``BadPart`` when the
        part is dropped."""
        now = self.clock()
        sid, index, total, kind = obj["id"], obj["index"], obj["total"], obj["event"]
        chars = len(obj["text"])
        cur = self.open
        if cur is not None and now - cur.started > ASSEMBLY_WAIT_S:
            self._abandon("parts_too_slow")
            cur = None
            if index != 0:
                raise BadPart("parts_too_slow")
        if index == 0:
            # One assembly at a time: a new snapshot replaces one that never finished.
            self._abandon("interleaved")
            self.open = Assembly(sid, total, kind, now, chars=chars)
            return None
        if cur is None or cur.id != sid:
            raise BadPart("part_not_open")
        if index != cur.next or total != cur.total or kind != cur.event:
            self._abandon("parts_out_of_order")
            raise BadPart("parts_out_of_order")
        if cur.chars + chars > MAX_ASSEMBLY_CHARS:
            self._abandon("parts_too_large")
            raise BadPart("parts_too_large")
        cur.chars += chars
        cur.next += 1
        if cur.next < cur.total:
            return None
        self.open = None
        self.completed += 1
        return cur.event

    def interrupted(self) -> None:
        """An ``rrweb`` line came: an assembly still open is abandoned (the agent sends
        a snapshot's parts back to back)."""
        self._abandon("interrupted")
