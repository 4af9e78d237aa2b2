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

from backline.relay.blobs import CHUNK, BlobStore, read_lines
from backline.relay.db import writing
from backline.relay.schema import recording_indexes, recording_words, recordings

log = logging.getLogger("backline.relay.term_index")

#: Occurrences kept per word and recording, and how far apart (seconds) they must be.
MOMENTS = 8
SPACING_S = 1.0
MIN_WORD, MAX_WORD = 2, 64
#: What is indexed of a long recording: its first and its last HEAD_TAIL bytes. What
#: was typed before a flood and after it is found; the flood's middle is not. It bounds
#: the time one indexing takes (2.5 to 20 MiB/s of asciicast on a loaded 2-core
#: machine, docs/audit-review.md), not its memory, which :class:`_Finder` bounds.
HEAD_TAIL = 16 * 1024 * 1024
#: Text searched at a time. Small, because the regex engine holds the GIL for a whole
#: call: the event loop waits for at most one segment's search (a few ms), not for a
#: recording's.
SEGMENT = 64 * 1024
#: Distinct words kept per recording at most (a recording of random text would
#: otherwise make a row for each of millions of "words"); past it, new words are not
#: indexed (logged).
MAX_WORDS = 50_000
#: Text held back at most while no safe place to cut it comes (:func:`safe_cut`); past
#: it, it is cut anyway (a word or sequence may be split there: a line of megabytes).
WAIT_MAX = 4 * SEGMENT
#: One asciicast line at most (the relay writes one event a line, a read of at most
#: 64 KiB of output, a few times that once escaped); a longer one is skipped.
MAX_LINE = 8 * 1024 * 1024
#: Between a long recording's head and its tail (:func:`recording_lines`).
GAP = b"\x00gap"
#: Rows written per statement.
BATCH = 5000

# Escape sequences: CSI (ESC [ ... final, or the 8-bit CSI), OSC/DCS/PM/APC strings up
# to BEL or ST, and two-character ESC sequences; then every other control character.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
    r"|(?:\x1b[\]P^_]|[\x90\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|\x1b[ -/]*[0-~]")
_INTRODUCERS = "\x1b\x9b\x90\x9d\x9e\x9f"
#: Every other control character becomes a space (``str.translate``: no Python per hit).
_CONTROLS = {c: " " for c in [*range(0x20), *range(0x7f, 0xa0)]}
#: A word: a run of at least MIN_WORD (2) word characters, or a compound (``a.b``,
#: ``rm-rf``) whatever its parts' length. A lone character is never a word, so the
#: regex does not stop at each one (a flood of ``y`` lines costs no match at all).
_WORD = re.compile(r"(?:\w\w+|\w(?=[.\-]\w))(?:[.\-]\w+)*")


def blank_escapes(text: str) -> str:
    """``text`` with escape sequences and control characters replaced by spaces of the
    same length (positions are kept)."""
    if any(c in text for c in _INTRODUCERS):  # a flood of plain text skips the regex
        text = _ESCAPES.sub(lambda m: " " * len(m.group()), text)
    return text.translate(_CONTROLS)


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


def moments_of(cast: bytes | Iterable[bytes], with_input: bool = True) -> list[Moment]:
    """The index rows of one asciicast v2 file, given whole or as its lines (bad lines
    are skipped: a recording cut short is still a valid prefix). Memory stays bounded
    whatever the recording's size: the text is taken a :data:`SEGMENT` at a time
    (:class:`_Finder`), and at most :data:`MAX_WORDS` distinct words are kept. A
    :data:`GAP` line (:func:`recording_lines`) ends the text so far: no word runs
    across it."""
    lines = cast.split(b"\n") if isinstance(cast, bytes) else cast
    finder = _Finder()
    first = True
    for raw in lines:
        if first:  # the header
            first = False
            continue
        if raw == GAP:
            finder.gap()
            continue
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
        finder.add(float(at), data)
    if finder.truncated:
        log.warning("a recording held over %d distinct words: the later ones are not "
                    "indexed", MAX_WORDS)
    return finder.done()


def safe_cut(text: str) -> int:
    """Where ``text`` may be cut so that its two parts give the words and blanks the
    whole gives (0: nowhere yet). Right before an ESC always: no word, CSI or
    two-character sequence runs through one, and an OSC/DCS string stops at it. After
    the last line break, unless an OSC/DCS/PM/APC string is open there (such a string
    may hold line breaks; its content must stay blanked). Linear in the text."""
    esc = text.rfind("\x1b")
    nl = text.rfind("\n") + 1
    if nl > esc and not _string_open(text, nl):
        return nl
    return max(esc, 0)


def _string_open(text: str, end: int) -> bool:
    """Whether an OSC, DCS, PM or APC string is open (not yet terminated) at ``end``."""
    esc = text.rfind("\x1b", 0, end)
    c1 = max(text.rfind(c, 0, end) for c in "\x90\x9d\x9e\x9f")
    if c1 > esc:
        start = c1 + 1
    elif esc >= 0 and text[esc + 1:esc + 2] in ("]", "P", "^", "_"):
        start = esc + 2
    else:
        return False  # the last ESC ended whatever string came before it
    return text.find("\x07", start, end) < 0 and text.find("\x9c", start, end) < 0


class _Finder:
    """The words of a recording's text, fed event by event: the text is joined and
    searched a segment at a time, cut only where :func:`safe_cut` allows, so a word
    echoed one character per event, or an escape sequence split over two events, is
    found as if the whole text had been searched at once."""

    def __init__(self) -> None:
        self.kept: dict[str, list[float]] = {}
        self.times: list[float] = []  # each pending event's time
        self.starts: list[int] = []  # and where its text starts in the pending text
        self.pending: list[str] = []
        self.size = 0  # characters pending
        self.search_at = SEGMENT  # search when this much is pending
        self.truncated = False

    def add(self, at: float, data: str) -> None:
        """One event's text."""
        self.times.append(at)
        self.starts.append(self.size)
        self.pending.append(data)
        self.size += len(data)
        if self.size >= self.search_at:
            self._search(final=False)

    def gap(self) -> None:
        """What came so far is searched as a whole: the text after is not its sequel."""
        if self.pending:
            self._search(final=True)

    def done(self) -> list[Moment]:
        self.gap()
        return [Moment(w, at) for w, ats in self.kept.items() for at in ats]

    def _search(self, final: bool) -> None:
        text = "".join(self.pending)
        cut = len(text) if final else safe_cut(text)
        if cut == 0:
            if len(text) < WAIT_MAX:
                self.pending = [text]
                self.search_at = self.size + SEGMENT
                return  # no safe place yet: wait for one, a while
            cut = len(text)  # none in WAIT_MAX: cut anyway
        self._words(text[:cut])
        # The event the cut falls in goes on in what is left, from position 0.
        i = bisect.bisect_right(self.starts, cut) - 1
        rest = text[cut:]
        self.times = self.times[i:] if rest else []
        self.starts = [0, *(s - cut for s in self.starts[i + 1:])] if rest else []
        self.pending = [rest] if rest else []
        self.size = len(rest)
        self.search_at = self.size + SEGMENT

    def _words(self, segment: str) -> None:
        kept, times, starts = self.kept, self.times, self.starts
        for word, pos in words_of(blank_escapes(segment)):
            mine = kept.get(word)
            if mine is None:
                if len(kept) >= MAX_WORDS:
                    self.truncated = True
                    continue
                mine = kept[word] = []
            if len(mine) >= MOMENTS:
                continue
            at = times[bisect.bisect_right(starts, pos) - 1]
            if not mine or at - mine[-1] >= SPACING_S:
                mine.append(at)


def recording_lines(blobs: BlobStore, sha256: str) -> Iterator[bytes]:
    """The lines of a stored recording to index, read in pieces and checked against its
    name (a damaged blob raises ``ValueError`` at the end of the iteration, before the
    index rows are written, so nothing of it is indexed). A recording may be
    gigabytes: of one longer than twice :data:`HEAD_TAIL`, its first and last
    :data:`HEAD_TAIL` bytes (whole lines), with a :data:`GAP` between them; the whole
    file is still hashed."""
    path = blobs.path(sha256)
    size = path.stat().st_size
    if size <= 2 * HEAD_TAIL:
        yield from blobs.lines(sha256, MAX_LINE)
        return
    actual, _ = blobs.hash_file(sha256)
    if actual != sha256:
        raise ValueError(f"blob {sha256} is damaged: its content no longer matches its name")
    with path.open("rb", buffering=CHUNK) as f:
        yield from read_lines(f, MAX_LINE, until=HEAD_TAIL)
        yield GAP
        # From the byte before the tail: the rest of that line is skipped (it starts
        # before the tail), so a line starting exactly at the tail is kept.
        f.seek(size - HEAD_TAIL - 1)
        f.readline(MAX_LINE)
        yield from read_lines(f, MAX_LINE)


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
    moments = moments_of(recording_lines(blobs, sha256), with_input=keystrokes)
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
