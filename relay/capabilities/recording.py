"""Channel recordings, written to a blob as the channel runs: a terminal's as asciicast
v2 (:class:`Recorder`), a co-browse's as the JSON lines the agent sent
(:class:`LinesRecorder`).

Why asciicast v2: it is a plain, documented format (a JSON header line, then one JSON
array per event: ``[seconds, "o", text]`` output, ``[seconds, "r", "COLSxROWS"]``
resize, ``[seconds, "i", text]`` input), streamable (each event is a line, so a
recording cut short is still a valid prefix), and asciinema-player replays it with
speed and seek in the console.

Output is bytes, asciicast events are text: bytes are decoded with an incremental
UTF-8 decoder (a character split between two reads is kept whole) and invalid bytes
become U+FFFD, as a terminal would show them. The relay's audit trail records the
SHA-256 of the file as written.

Every event is written before the bytes it describes go on to the browser, without
buffering (:class:`backline.relay.blobs.BlobWriter`): when the disk does not take an
event, :class:`RecordingFailed` is raised and the runner ends the channel, so nothing
unrecorded happens while recording is on.

A co-browse recording is the agent's lines byte for byte, one per line (rrweb events
carry their own timestamps, so nothing is added): its SHA-256 is the hash of exactly
what the relay accepted from the agent, and the console replays the ``rrweb`` lines
with rrweb's player. Served as ``application/x-ndjson``.
"""

from __future__ import annotations

import codecs
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.relay.blobs import BlobStore, BlobWriter
from backline.relay.capabilities.base import RecordingFailed
from backline.relay.db import writing
from backline.relay.schema import recordings

MEDIA_TYPE = "application/x-asciicast"
LINES_MEDIA_TYPE = "application/x-ndjson"
__all__ = ["LINES_MEDIA_TYPE", "MEDIA_TYPE", "AnyRecorder", "LinesRecorder", "Recorder",
           "RecordingFailed", "Stored", "by_id", "media_type", "new_lines_recorder",
           "new_recorder", "of_session", "save"]


def media_type(capability: str) -> str:
    """What a recording of ``capability`` is served as (a terminal's: asciicast)."""
    return LINES_MEDIA_TYPE if capability == "cobrowse" else MEDIA_TYPE


@dataclass(frozen=True)
class Stored:
    id: str
    sha256: str
    bytes: int
    duration_s: float

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "sha256": self.sha256, "bytes": self.bytes}


class _BlobRecording:
    """What every recording does at its end: name its blob, or leave nothing behind."""

    writer: BlobWriter
    started: float
    failed: OSError | None
    done: bool

    def _commit(self) -> tuple[str, int, float]:
        try:
            digest = self.writer.commit()
        except OSError as exc:
            self.failed = exc
            self.writer.abort()
            raise RecordingFailed(f"{type(exc).__name__}: {exc}") from exc
        self.done = True
        return digest, self.writer.size, round(time.monotonic() - self.started, 3)

    def abort(self) -> None:
        """Give up a recording that was not finished (nothing is left behind)."""
        if not self.done:
            self.writer.abort()


class Recorder(_BlobRecording):
    """One terminal's asciicast, appended event by event to a blob."""

    def __init__(self, writer: BlobWriter, cols: int, rows: int, term: str,
                 keystrokes: bool, title: str = "") -> None:
        self.writer = writer
        self.keystrokes = keystrokes
        self.started = time.monotonic()
        self.started_at = time.time()
        self._out = codecs.getincrementaldecoder("utf-8")("replace")
        self._in = codecs.getincrementaldecoder("utf-8")("replace")
        self.failed: OSError | None = None
        self.done = False  # named (committed) by finish()
        header = {"version": 2, "width": cols, "height": rows,
                  "timestamp": int(self.started_at), "env": {"TERM": term},
                  **({"title": title} if title else {})}
        self._line(json.dumps(header))

    def _line(self, text: str) -> None:
        if self.failed is not None:
            raise RecordingFailed(str(self.failed))
        try:
            self.writer.write(text.encode("utf-8") + b"\n")
        except OSError as exc:
            self.failed = exc
            raise RecordingFailed(f"{type(exc).__name__}: {exc}") from exc

    def _event(self, kind: str, data: str) -> None:
        at = round(time.monotonic() - self.started, 6)
        self._line(json.dumps([at, kind, data], ensure_ascii=False))

    def output(self, data: bytes) -> None:
        text = self._out.decode(data)
        if text:
            self._event("o", text)

    def input(self, data: bytes) -> None:
        if self.keystrokes:
            text = self._in.decode(data)
            if text:
                self._event("i", text)

    def resize(self, cols: int, rows: int) -> None:
        self._event("r", f"{cols}x{rows}")

    def finish(self) -> tuple[str, int, float]:
        """Name the blob; ``(sha256, bytes, duration_s)``. ``RecordingFailed`` if the
        end could not be written."""
        tail = self._out.decode(b"", final=True)
        if tail:
            self._event("o", tail)
        return self._commit()


class LinesRecorder(_BlobRecording):
    """A room's JSON lines, appended as they came (each ends with one newline)."""

    keystrokes = False  # what the console sends is not recorded, only the agent's lines

    def __init__(self, writer: BlobWriter) -> None:
        self.writer = writer
        self.started = time.monotonic()
        self.started_at = time.time()
        self.failed: OSError | None = None
        self.done = False
        self.lines = 0

    def line(self, data: bytes) -> None:
        """One line (without its newline); ``RecordingFailed`` when not written."""
        if self.failed is not None:
            raise RecordingFailed(str(self.failed))
        try:
            self.writer.write(data + b"\n")
        except OSError as exc:
            self.failed = exc
            raise RecordingFailed(f"{type(exc).__name__}: {exc}") from exc
        self.lines += 1

    def finish(self) -> tuple[str, int, float]:
        """Name the blob; ``(sha256, bytes, duration_s)``."""
        return self._commit()



AnyRecorder = Recorder | LinesRecorder


def new_lines_recorder(blobs: BlobStore) -> LinesRecorder:
    """A lines recorder on a new blob; ``RecordingFailed`` when it cannot be started."""
    try:
        return LinesRecorder(blobs.writer())
    except OSError as exc:
        raise RecordingFailed(f"{type(exc).__name__}: {exc}") from exc


def new_recorder(blobs: BlobStore, cols: int, rows: int, term: str, keystrokes: bool,
                 title: str = "") -> Recorder:
    """A recorder on a new blob; ``RecordingFailed`` when the blob cannot be started."""
    try:
        writer = blobs.writer()
    except OSError as exc:
        raise RecordingFailed(f"{type(exc).__name__}: {exc}") from exc
    try:
        return Recorder(writer, cols, rows, term, keystrokes, title)
    except RecordingFailed:
        writer.abort()
        raise


def save(engine: sa.Engine, *, session_id: str, capability: str, agent_id: str,
         technician: str, started_at: float, duration_s: float, size: int, sha256: str,
         keystrokes: bool) -> Stored:
    """The recording's row (the blob is already named by its hash)."""
    rid = "rc_" + secrets.token_urlsafe(12)
    with writing(engine) as conn:
        conn.execute(recordings.insert().values(
            id=rid, session_id=session_id, capability=capability, agent_id=agent_id,
            technician=technician[:64], started_at=started_at, duration_s=duration_s,
            bytes=size, sha256=sha256, keystrokes=keystrokes))
    return Stored(rid, sha256, size, duration_s)


def of_session(engine: sa.Engine, session_id: str, limit: int = 200) -> list[dict[str, Any]]:
    q = (sa.select(recordings).where(recordings.c.session_id == session_id)
         .order_by(recordings.c.started_at).limit(limit))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def by_id(engine: sa.Engine, recording_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(recordings).where(
            recordings.c.id == recording_id)).mappings().first()
    return dict(row) if row else None
