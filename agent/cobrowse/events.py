"""What the page sends is untrusted: validated, capped in size and rate, then batched.

The recorder runs in the page's own world (it must, to see the page's shadow roots and
constructed stylesheets as the page makes them), so a page script can call its
binding too, with anything. Every payload is therefore checked here, in Python,
before a byte of it leaves the machine: the payload's size, its JSON, each event's
shape (an rrweb event is ``{"type": 0..6, "timestamp": number, "data": object}``;
nothing else is kept), each event's size, and a token bucket in events and bytes per
second. What is dropped is counted and said once a second as an ``error`` line; a
drop breaks the incremental stream, so the room asks the page for a new full
snapshot once the bucket has refilled.

:class:`Batcher` makes the channel's ``rrweb`` lines: at most :data:`MAX_BATCH_EVENTS`
events or :data:`MAX_BATCH_BYTES` per line; one event larger than that goes alone,
up to :data:`MAX_LINE_EVENT_BYTES` (the channel's line limit is 1 MiB). An event
larger still (the full snapshot of a very large page) is split into ``rrweb_part``
lines (:func:`parts`): its JSON text cut into pieces, each line under the limit, at
most :data:`MAX_PARTS` of them and :data:`MAX_EVENT_BYTES` in all (what the relay
takes); the console joins them back into the one event.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

MAX_PAYLOAD_CHARS = 16 * 1024 * 1024
#: The largest event that goes in one ``rrweb`` line.
MAX_LINE_EVENT_BYTES = 1024 * 1024 - 64
#: The largest event at all (under the payload's cap, so that the cap is reachable;
#: under the relay's 16 Mi characters of parts); bigger than a line: ``rrweb_part`` lines.
MAX_EVENT_BYTES = 15 * 1024 * 1024
MAX_PARTS = 64
#: One ``rrweb_part`` line at most (under the 1 MiB line limit, with room to spare).
MAX_PART_LINE_BYTES = 1024 * 1024 - 1024
PART_CHARS = 512 * 1024
MAX_BATCH_EVENTS = 200
MAX_BATCH_BYTES = 256 * 1024
#: The page's allowance: a sustained rate and a burst (a full snapshot is a burst).
EVENTS_PER_S = 600.0
EVENTS_BURST = 3000.0
BYTES_PER_S = 512 * 1024.0
BYTES_BURST = 4 * 1024 * 1024.0
EVENT_TYPES = range(0, 7)  # DomContentLoaded .. Plugin
FULL_SNAPSHOT = 2
_TYPE = re.compile(r'\{"type":([0-6]),')


class Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.level = burst
        self.at = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.burst, self.level + max(0.0, now - self.at) * self.rate)
        self.at = max(self.at, now)

    def take(self, amount: float, now: float, *, debt: bool = False) -> bool:
        """Take ``amount``; with ``debt``, an amount over the burst may be taken from a
        full bucket, leaving it below zero (one full snapshot larger than the burst:
        the sustained rate still holds, it is paid back before anything else goes)."""
        self.refill(now)
        if amount <= self.level or (debt and self.level >= self.burst):
            self.level -= amount
            return True
        return False


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def encoded_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


@dataclass
class Gate:
    """Checks one page's payloads; ``dropped_*`` count what it refused."""

    events: Bucket = field(default_factory=lambda: Bucket(EVENTS_PER_S, EVENTS_BURST))
    bytes: Bucket = field(default_factory=lambda: Bucket(BYTES_PER_S, BYTES_BURST))
    dropped_events: int = 0
    dropped_bytes: int = 0
    malformed: int = 0
    #: A drop happened since the last full snapshot: the viewer's copy is stale.
    needs_snapshot: bool = False

    def accept(self, payload: object, now: float | None = None) -> list[tuple[dict[str, Any], str]]:
        """The valid events of one binding call, each with its JSON text."""
        now = time.monotonic() if now is None else now
        if not isinstance(payload, str) or len(payload) > MAX_PAYLOAD_CHARS:
            self.malformed += 1
            self.dropped_bytes += len(payload) if isinstance(payload, str) else 0
            return []
        try:
            batch = json.loads(payload)
        except (ValueError, RecursionError):
            self.malformed += 1
            self.dropped_bytes += len(payload)
            return []
        if not isinstance(batch, list):
            self.malformed += 1
            return []
        out: list[tuple[dict[str, Any], str]] = []
        for raw in batch:
            event = clean_event(raw)
            if event is None:
                self.malformed += 1
                continue
            try:
                text = _dumps(event)
            except (ValueError, RecursionError):
                self.malformed += 1
                continue
            size = encoded_size(text)
            if size > MAX_EVENT_BYTES:
                self.dropped_events += 1
                self.dropped_bytes += size
                self.needs_snapshot = True
                continue
            big = event["type"] == FULL_SNAPSHOT
            if not self.events.take(1, now) or not self.bytes.take(size, now, debt=big):
                self.dropped_events += 1
                self.dropped_bytes += size
                self.needs_snapshot = True
                continue
            if event["type"] == FULL_SNAPSHOT:
                self.needs_snapshot = False
            out.append((event, text))
        return out

    def recovered(self, now: float | None = None) -> bool:
        """Room again for a full snapshot after drops."""
        now = time.monotonic() if now is None else now
        self.bytes.refill(now)
        self.events.refill(now)
        return self.bytes.level >= self.bytes.burst / 2 and self.events.level >= 100


def clean_event(raw: object) -> dict[str, Any] | None:
    """An rrweb event with only its three fields, or None when it is not one."""
    if not isinstance(raw, dict):
        return None
    kind = raw.get("type")
    stamp = raw.get("timestamp")
    data = raw.get("data", {})
    if (isinstance(kind, bool) or not isinstance(kind, int) or kind not in EVENT_TYPES
            or isinstance(stamp, bool) or not isinstance(stamp, int | float)
            or not (0 <= stamp < 1e14) or not isinstance(data, dict)):
        return None
    return {"type": kind, "data": data, "timestamp": stamp}


def parts(text: str, snapshot_id: str, kind: int) -> list[str]:
    """One event's JSON text too large for a line, as ``rrweb_part`` lines:
    ``{"type":"rrweb_part","id":...,"index":i,"total":n,"event":kind,"text":...}``,
    each at most :data:`MAX_PART_LINE_BYTES` (a piece is halved until its line fits:
    escaping can make a line longer than its piece); the pieces, joined, are the
    event's text. ``[]`` when more than
    :data:`MAX_PARTS` would be needed."""
    pieces: list[str] = []
    at = 0
    while at < len(text):
        n = PART_CHARS
        while True:
            piece = text[at:at + n]
            # Measured escaped to ASCII (the longest form: the room's writer falls back
            # to it for a lone surrogate); 100 bytes for the line's other fields.
            if len(json.dumps(piece)) + 100 <= MAX_PART_LINE_BYTES or n == 1:
                break
            n //= 2
        pieces.append(piece)
        at += len(piece)
        if len(pieces) > MAX_PARTS:
            return []
    total = len(pieces)
    return [_dumps({"type": "rrweb_part", "id": snapshot_id, "index": i, "total": total,
                    "event": kind, "text": piece}) for i, piece in enumerate(pieces)]


class Batcher:
    """Events in, ``{"type":"rrweb","events":[...]}`` lines out (and ``rrweb_part``
    lines for an event too large for one line)."""

    def __init__(self) -> None:
        self._texts: list[str] = []
        self._bytes = 0
        self._split = 0
        #: Events too large even for parts (not sent; the gate's cap makes this rare).
        self.unsplittable = 0

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> list[str]:
        """Add one event's JSON; the lines that are full because of it."""
        size = encoded_size(text)
        lines: list[str] = []
        if size > MAX_LINE_EVENT_BYTES:
            # Whatever is batched goes first: the parts must follow it, in order.
            if self._texts:
                lines.append(self.flush())
            self._split += 1
            head = _TYPE.match(text)  # clean_event puts "type" first
            split = parts(text, f"s{self._split}", int(head.group(1)) if head else 3)
            if not split:
                self.unsplittable += 1
            return lines + split
        if self._texts and (len(self._texts) >= MAX_BATCH_EVENTS
                            or self._bytes + size + 1 > MAX_BATCH_BYTES):
            lines.append(self.flush())
        self._texts.append(text)
        self._bytes += size + 1
        if len(self._texts) >= MAX_BATCH_EVENTS or self._bytes >= MAX_BATCH_BYTES:
            lines.append(self.flush())
        return lines

    def flush(self) -> str:
        line = '{"type":"rrweb","events":[' + ",".join(self._texts) + "]}"
        self._texts = []
        self._bytes = 0
        return line
