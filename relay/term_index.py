"""The text index of terminal recordings: which words were typed or printed, and when.

Why: an auditor looks for the session where someone typed ``shred`` or where a
command printed a customer's account number, and wants to land on that moment of the
replay. Teleport users have asked for this since 2017.

How: when a terminal recording is stored (:func:`index_recording`, called by the
channel runner after ``recording.stored``), its asciicast is read once: the output
(``"o"``) and, when keystrokes are recorded, input (``"i"``) events are joined into one
text, escape sequences (CSI, OSC, DCS, two-character ESC) and control characters are
blanked *in place* (so a character's position still maps to its event's time), and
the words are found in that text. A word typed at a shell is echoed one character per
event: joining the events first is what keeps ``secret`` one word instead of six.

Each word (lowercased, 2 to 64 characters; letters, digits, ``_``; and the dotted or
dashed compounds such as ``backup.tar.gz`` or ``rm-rf``) becomes a row ``(word,
recording, session, at)`` for its first :data:`MOMENTS` occurrences at least
:data:`SPACING_S` apart: enough to jump to each time it mattered, bounded for a
recording that prints the same word a million times. Plain tables and a B-tree on
``word``: the same on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.relay.blobs import BlobStore
from backline.relay.db import writing
from backline.relay.schema import recording_indexes, recording_words, recordings

log = logging.getLogger("backline.relay.term_index")

#: Occurrences kept per word and recording, and how far apart (seconds) they must be.
MOMENTS = 8
SPACING_S = 1.0
MIN_WORD, MAX_WORD = 2, 64
#: Text read from one recording at most (a flood is indexed up to here).
MAX_TEXT = 64 * 1024 * 1024
#: Rows written per statement.
BATCH = 5000

# Escape sequences: CSI (ESC [ ... final, or the 8-bit CSI), OSC/DCS/PM/APC strings up
# to BEL or ST, and two-character ESC sequences; then every other control character.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]P^_]|[\x90\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]")
#: Every other control character becomes a space (``str.translate``: no Python per hit).
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7f, 0xa0)]}
_WORD = re.compile(r"\w+(?:[.\-]\w+)*")


def blank_escapes(text: str) -> str:
    """``text`` with escape sequences and control characters replaced by spaces of the
    same length (positions are kept)."""
    return _ESCAPES.sub(lambda m: " " * len(m.group()), text).translate(_CONTROLS)


def words_of(text: str) -> Iterator[tuple[str, int]]:
    """Each indexable word of clean ``text`` and where it starts: a compound
    (``a.b-c``) and its parts."""
    for m in _WORD.finditer(text):
        token = m.group().lower()
        if MIN_WORD <= len(token) <= MAX_WORD:
            yield token, m.start()
        if "." in token or "-" in token:
            for part in re.finditer(r"\w+", token):
                if MIN_WORD <= len(part.group()) <= MAX_WORD:
                    yield part.group(), m.start() + part.start()


def normalise_query(text: str) -> list[str]:
    """The words a search for ``text`` looks for (the index's own rules)."""
    return list(dict.fromkeys(w for w, _ in words_of(blank_escapes(text))))


@dataclass(frozen=True)
class Moment:
    word: str
    at: float


def moments_of(cast: bytes, with_input: bool = True) -> list[Moment]:
    """The index rows of one asciicast v2 file (bad lines are skipped: a recording cut
    short is still a valid prefix)."""
    times: list[float] = []
    starts: list[int] = []
    chunks: list[str] = []
    size = 0
    for raw in cast.split(b"\n")[1:]:
        if not raw:
            continue
        try:
            at, kind, data = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if kind != "o" and not (with_input and kind == "i"):
            continue
        if not isinstance(data, str) or not isinstance(at, int | float):
            continue
        times.append(float(at))
        starts.append(size)
        chunks.append(data)
        size += len(data)
        if size >= MAX_TEXT:
            break
    text = blank_escapes("".join(chunks))
    kept: dict[str, list[float]] = {}
    for word, pos in words_of(text):
        mine = kept.setdefault(word, [])
        if len(mine) >= MOMENTS:
            continue
        at = times[bisect.bisect_right(starts, pos) - 1]
        if not mine or at - mine[-1] >= SPACING_S:
            mine.append(at)
    return [Moment(w, at) for w, ats in kept.items() for at in ats]


def _batches(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def index_recording(engine: sa.Engine, blobs: BlobStore, *, recording_id: str,
                    session_id: str, sha256: str, keystrokes: bool) -> int:
    """Index one stored terminal recording (again: its old rows are replaced); how many
    rows. The blob is read through the store, so a damaged one is not indexed."""
    cast = blobs.get(sha256)
    moments = moments_of(cast, with_input=keystrokes)
    rows = ({"word": m.word, "recording_id": recording_id, "session_id": session_id,
             "at": m.at} for m in moments)
    with writing(engine) as conn:
        forget(conn, recording_id)
        # Retention may have deleted it while its blob was read: leave it unfound.
        if conn.execute(sa.select(recordings.c.deleted_at)
                        .where(recordings.c.id == recording_id)).scalar() is not None:
            return 0
        for batch in _batches(rows):
            conn.execute(recording_words.insert(), batch)
        conn.execute(recording_indexes.insert().values(
            recording_id=recording_id, session_id=session_id, sha256=sha256,
            words=len({m.word for m in moments}), rows=len(moments), indexed_at=time.time()))
    return len(moments)


def forget(conn: sa.Connection, recording_id: str) -> None:
    """Drop one recording's index rows, in the caller's transaction: retention calls it
    in the transaction that marks the recording deleted, so that its words are no
    longer found once its content is gone (relay/retention.py)."""
    conn.execute(recording_words.delete().where(
        recording_words.c.recording_id == recording_id))
    conn.execute(recording_indexes.delete().where(
        recording_indexes.c.recording_id == recording_id))


def index_quietly(engine: sa.Engine, blobs: BlobStore, **kw: Any) -> None:
    """:func:`index_recording` for a background thread: a failure is logged, never
    raised (the recording is kept whatever happens to its index; ``reindex`` mends)."""
    try:
        index_recording(engine, blobs, **kw)
    except Exception as exc:  # logged: the index is a convenience, the recording is kept
        log.error("recording %s not indexed: %r", kw.get("recording_id"), exc)


def schedule(engine: sa.Engine, blobs: BlobStore, **kw: Any) -> None:
    """Index a just-stored recording off the event loop (a long recording takes a
    moment to read); inline when there is no loop (the command line)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        index_quietly(engine, blobs, **kw)
        return
    loop.run_in_executor(None, lambda: index_quietly(engine, blobs, **kw))


def _matches(word: str) -> Any:
    """The condition on ``recording_words.word`` for one query word (``word*``: prefix)."""
    if word.endswith("*"):
        # LIKE, not a range: a range's end depends on the collation in PostgreSQL; words
        # are stored lowercase, so SQLite's case-blind LIKE and PostgreSQL's
        # case-sensitive one agree.
        stem = word[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return recording_words.c.word.like(stem + "%", escape="\\")
    return recording_words.c.word == word


def sessions_holding(words: list[str]) -> sa.Select[Any]:
    """The ids of the sessions whose terminal recordings hold every word of ``words``,
    as a subquery for the caller's own query. The caller filters (visibility, agent,
    time...) and limits in that same query, so no word's rows are ever capped before
    the filters: a common word cannot crowd out the sessions the caller may see."""
    sid = recording_words.c.session_id
    q = sa.select(sid).where(_matches(words[0]))
    for word in words[1:]:
        q = q.where(sid.in_(sa.select(recording_words.c.session_id).where(_matches(word))))
    return q


def hits(engine: sa.Engine, words: list[str], session_ids: Iterable[str] | None = None,
         limit: int = 200, moments: int = MOMENTS) -> dict[str, list[dict[str, Any]]]:
    """Sessions whose terminal recordings hold every word of ``words`` (prefix match on
    the last one when it ends with ``*``): per session, the first ``moments``
    moments of the first word (recording, second, word), oldest first. At most ``limit``
    sessions (by id); a search names its sessions in ``session_ids`` (found with
    :func:`sessions_holding` in its own filtered query), so none is left out."""
    if not words:
        return {}
    sid = recording_words.c.session_id
    chosen = sessions_holding(words)
    if session_ids is not None:
        chosen = chosen.where(sid.in_(list(session_ids)))
    chosen = chosen.distinct().order_by(sid).limit(limit)
    rank = sa.func.row_number().over(partition_by=sid, order_by=(recording_words.c.at,
                                                                 recording_words.c.recording_id))
    inner = (sa.select(sid, recording_words.c.recording_id, recording_words.c.at,
                       recording_words.c.word, rank.label("n"))
             .where(_matches(words[0]), sid.in_(chosen.scalar_subquery()))
             .subquery())
    q = (sa.select(inner.c.session_id, inner.c.recording_id, inner.c.at, inner.c.word)
         .where(inner.c.n <= moments).order_by(inner.c.session_id, inner.c.at))
    found: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for r in conn.execute(q):
            found.setdefault(r.session_id, []).append(
                {"recording": r.recording_id, "at": r.at, "word": r.word})
    return found


def unindexed(engine: sa.Engine) -> list[dict[str, Any]]:
    """Terminal recordings with no index yet (stored before migration 0009, or whose
    indexing failed): what ``backline-relay timeline reindex`` does. Not those whose
    content retention deleted: there is nothing to index, and they must stay unfound."""
    q = (sa.select(recordings.c.id, recordings.c.session_id, recordings.c.sha256,
                   recordings.c.keystrokes)
         .where(recordings.c.capability == "shell")
         .where(recordings.c.deleted_at.is_(None))
         .where(~sa.exists().where(recording_indexes.c.recording_id == recordings.c.id)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]
