"""One support session as the audit trail tells it: its events in order, and its evidence
(recordings, fix outputs, diagnostics reports), each with the SHA-256 the trail recorded.

Why the trail and not the tables: a ``recordings`` row is as easy to rewrite as the
blob it names; the trail is hash-chained and signed. So every piece of evidence is
looked up *in the trail* (the event that stored it: ``recording.stored``,
``fix.run.ended``, ``diagnostics.report``) and checked against that digest when it is
served (:func:`check_blob`). Three things can disagree, and each is named:
the trail has no event for it (``not_in_trail``), the row's digest is not the trail's
(``row_altered``), or the stored bytes no longer hash to the trail's digest
(``digest_mismatch``).

For the same reason the *list* of a session's evidence is the trail's
(:func:`evidence`): the pieces its store events recorded, joined with their rows and
blobs, so a row or blob removed behind the relay's back is named (``no_record``,
``no_blob``), apart from a deletion the trail records (``retention.deleted``:
``deleted``); see :data:`STATES`.

Which events are a session's (the contract in the helpers' brief): ``target ==
"session:<id>"``, or a ``session`` detail. Those with a ``session`` detail have their
own targets (``recording:<id>`` for a playback, ``agent:<id>`` for a diagnostics
report, ``report:<id>`` / ``fix_run:<id>`` when retention deleted evidence), so the
query asks for exactly those targets (indexed; of the evidence the trail stored and of
the rows, so a playback of a recording whose row is gone stays) and, for the agent's
events, the
``"session":"<id>"`` in the canonical details: no scan of the whole trail, so a session's
first page costs the same in a trail of a million events.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, BinaryIO

import sqlalchemy as sa

from backline.relay import audit_evidence
from backline.relay.audit import SEQ_MAX, row_to_event
from backline.relay.blobs import BlobStore, hash_stream
from backline.relay.schema import audit_events, diagnostics_reports, fix_runs, recordings

#: Events per timeline page at most.
MAX_PAGE = 1000


def _like_literal(text: str) -> str:
    """``text`` for a LIKE pattern (ids are URL-safe: only ``_`` needs escaping)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def session_detail(session_id: str) -> str:
    """How a ``session`` detail looks in the trail's canonical JSON."""
    return json.dumps({"session": session_id}, separators=(",", ":"))[1:-1]


#: Pieces of evidence of one session listed at most (each source: the trail's store
#: events, and each table); past it the timeline says it is cut (``truncated``).
MAX_EVIDENCE = 1000
#: The events that store a session's evidence, by the target they are filed under:
#: a recording and a fix run under the session, a diagnostics report under the agent
#: (with a ``session`` detail).
_SESSION_STORED = tuple(a for a in audit_evidence.STORED if a != "diagnostics.report")
_AGENT_STORED = "diagnostics.report"


@dataclass(frozen=True)
class Stored:
    """One store event of the trail: what it recorded (relay/audit_evidence.py's one
    reading) and the event's own facts, for showing evidence whose row is gone."""

    seq: int
    time: float
    action: str
    said: audit_evidence.Recorded
    details: dict[str, Any]


def stored_in_trail(conn: sa.Connection, session: dict[str, Any]) -> tuple[list[Stored], bool]:
    """The session's evidence as the trail recorded it, oldest first, the first event
    of each piece only; and whether there were more than :data:`MAX_EVIDENCE`.

    Indexed: the session's own target (its store actions), and the agent's target for
    its diagnostics reports (as :func:`events_condition` reads the agent's events)."""
    sid = session["id"]
    cond = sa.and_(audit_events.c.target == f"session:{sid}",
                   audit_events.c.action.in_(_SESSION_STORED))
    if session.get("agent_id"):
        mine = f"%{_like_literal(session_detail(sid))}%"
        cond = sa.or_(cond, sa.and_(audit_events.c.target == f"agent:{session['agent_id']}",
                                    audit_events.c.action == _AGENT_STORED,
                                    audit_events.c.details.like(mine, escape="\\")))
    q = (sa.select(audit_events.c.seq, audit_events.c.time, audit_events.c.action,
                   audit_events.c.details)
         .where(cond).order_by(audit_events.c.seq).limit(MAX_EVIDENCE + 1))
    rows = conn.execute(q).mappings().all()
    out: list[Stored] = []
    seen: set[tuple[str, str]] = set()
    for r in rows[:MAX_EVIDENCE]:
        details = json.loads(r["details"])
        said = audit_evidence.recorded(r["action"], details)
        if said is None or (said.kind, said.id) in seen:
            continue
        if said.kind == "diagnostics_report" and details.get("session") != sid:
            continue  # the LIKE matched a longer id, or another detail's text
        seen.add((said.kind, said.id))
        out.append(Stored(r["seq"], r["time"], r["action"], said, details))
    return out, len(rows) > MAX_EVIDENCE


def _table_ids(conn: sa.Connection, session_id: str) -> list[tuple[str, str]]:
    """``(kind, id)`` of the session's evidence as the relay's tables list it."""
    found: list[tuple[str, str]] = []
    for kind, table in (("recording", recordings), ("fix_output", fix_runs),
                        ("diagnostics_report", diagnostics_reports)):
        found += [(kind, i) for i in conn.execute(
            sa.select(table.c.id).where(table.c.session_id == session_id)).scalars()]
    return found


def _evidence_targets(conn: sa.Connection, session: dict[str, Any],
                      stored: list[Stored] | None = None) -> list[str]:
    """The targets of events about the session's evidence (a playback's
    ``recording:<id>``; retention's ``report:<id>`` and ``fix_run:<id>``): of what the
    trail stored for the session *and* of what the tables list, so that an event about
    evidence whose row was removed is still the session's."""
    if stored is None:
        stored = stored_in_trail(conn, session)[0]
    pieces = {(e.said.kind, e.said.id) for e in stored}
    pieces.update(_table_ids(conn, session["id"]))
    return sorted(audit_evidence.target(kind, ident) for kind, ident in pieces)


def events_condition(conn: sa.Connection, session: dict[str, Any],
                     stored: list[Stored] | None = None) -> Any:
    """The WHERE clause of a session's events (see the module's docstring): the one
    definition of them, shared by the timeline and the evidence bundle. ``stored``: the
    session's :func:`stored_in_trail`, when the caller read it already (reading it scans
    the session's events: about 25 ms for 10,000 on the bench's machine)."""
    sid = session["id"]
    targets = [f"session:{sid}", *_evidence_targets(conn, session, stored)]
    cond = audit_events.c.target.in_(targets)
    if session.get("agent_id"):
        mine = f"%{_like_literal(session_detail(sid))}%"
        cond = sa.or_(cond, sa.and_(audit_events.c.target == f"agent:{session['agent_id']}",
                                    audit_events.c.details.like(mine, escape="\\")))
    return cond


def events_page(engine: sa.Engine, session: dict[str, Any], after: int = 0,
                limit: int = 200, stored: list[Stored] | None = None
                ) -> tuple[list[dict[str, Any]], int | None]:
    """The session's events after ``seq`` ``after``, oldest first; and the ``after`` of
    the next page (None: this was the last)."""
    limit = max(1, min(limit, MAX_PAGE))
    if after >= SEQ_MAX:  # nothing is past the column's end (PostgreSQL would refuse it)
        return [], None
    with engine.connect() as conn:
        q = (sa.select(audit_events).where(events_condition(conn, session, stored))
             .where(audit_events.c.seq > after).order_by(audit_events.c.seq).limit(limit + 1))
        rows = conn.execute(q).mappings().all()
    events = [{**row_to_event(r), "hash": r["hash"]} for r in rows[:limit]]
    return events, (events[-1]["seq"] if len(rows) > limit else None)


def count_events(engine: sa.Engine, session: dict[str, Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(audit_events)
                                .where(events_condition(conn, session))).scalar() or 0)


@dataclass(frozen=True)
class TrailDigest:
    seq: int
    action: str
    sha256: str


def _trail_event(conn: sa.Connection, target: str, action: str, key: str,
                 value: str) -> Any:
    pattern = f"%{_like_literal(json.dumps({key: value}, separators=(',', ':'))[1:-1])}%"
    q = (sa.select(audit_events).where(audit_events.c.target == target)
         .where(audit_events.c.action == action)
         .where(audit_events.c.details.like(pattern, escape="\\"))
         .order_by(audit_events.c.seq).limit(1))
    return conn.execute(q).mappings().first()


def _digest(ev: Any, ident: str) -> TrailDigest | None:
    """The digest event ``ev`` recorded for evidence ``ident`` (relay/audit_evidence.py:
    the one reading of it the bundles share)."""
    if ev is None:
        return None
    said = audit_evidence.recorded(ev["action"], json.loads(ev["details"]))
    if said is None or said.id != ident:
        return None
    return TrailDigest(ev["seq"], ev["action"], said.sha256)


def recording_trail(engine: sa.Engine, row: dict[str, Any]) -> TrailDigest | None:
    """The ``recording.stored`` event of a recording: the digest the trail vouches for."""
    with engine.connect() as conn:
        ev = _trail_event(conn, f"session:{row['session_id']}", "recording.stored",
                          "recording", row["id"])
    return _digest(ev, row["id"])


def fix_run_trail(engine: sa.Engine, row: dict[str, Any]) -> TrailDigest | None:
    """The ``fix.run.ended`` event of a run: the kept output's digest (``blob``, else the
    agent's ``output_sha256``)."""
    with engine.connect() as conn:
        ev = _trail_event(conn, f"session:{row['session_id']}", "fix.run.ended", "run",
                          row["id"])
    return _digest(ev, row["id"])


def report_trail(engine: sa.Engine, row: dict[str, Any]) -> TrailDigest | None:
    """The ``diagnostics.report`` event of a report."""
    with engine.connect() as conn:
        ev = _trail_event(conn, f"agent:{row['agent_id']}", "diagnostics.report", "report",
                          row["id"])
    return _digest(ev, row["id"])


class EvidenceMismatch(Exception):
    """Stored evidence that the trail does not vouch for: ``reason`` is
    ``not_in_trail``, ``row_altered`` or ``digest_mismatch``; ``detail`` says it in
    words, with both digests."""

    def __init__(self, reason: str, detail: str, trail: TrailDigest | None,
                 actual: str = "") -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.trail = trail
        self.actual = actual


def check_blob(blobs: BlobStore, what: str, row_sha256: str,
               trail: TrailDigest | None) -> bytes:
    """The bytes of a piece of evidence its writer bounds (a fix's capped output, a
    diagnostics report), when they hash to the digest the trail recorded;
    :class:`EvidenceMismatch` otherwise (``OSError`` when unreadable). A recording,
    which may be gigabytes, is checked with :func:`check_blob_file` instead."""
    digest = _trail_digest(what, row_sha256, trail)
    data = _raw(blobs, what, digest, trail)
    _compare(what, trail, hashlib.sha256(data).hexdigest())
    return data


def check_blob_file(blobs: BlobStore, what: str, row_sha256: str,
                    trail: TrailDigest | None) -> tuple[BinaryIO, int]:
    """:func:`check_blob` for a blob of any size: the blob's file, open at its start,
    and its size, once what it holds, read in pieces (memory stays flat), hashes to the
    digest the trail recorded. The caller serves from this very file (and closes it):
    a blob renamed over after the check is not what is served. It takes a moment for
    a long recording: call it off the event loop."""
    digest = _trail_digest(what, row_sha256, trail)
    try:
        path = blobs.path(digest)
    except ValueError as exc:  # not a SHA-256 at all: the trail's word cannot name a blob
        raise EvidenceMismatch("digest_mismatch", f"{what}: {exc}", trail) from None
    f = path.open("rb", buffering=0)
    try:
        actual, size = hash_stream(f)
        _compare(what, trail, actual)
        f.seek(0)
    except BaseException:
        f.close()
        raise
    return f, size


def _trail_digest(what: str, row_sha256: str, trail: TrailDigest | None) -> str:
    """The digest the trail recorded, when the row agrees with it."""
    if trail is None:
        raise EvidenceMismatch("not_in_trail", f"{what} has no event in the audit trail that "
                               "recorded its SHA-256: it cannot be vouched for", None)
    if trail.sha256 != row_sha256:
        raise EvidenceMismatch("row_altered", f"{what}: the audit trail (event #{trail.seq}, "
                               f"{trail.action}) recorded SHA-256 {trail.sha256}, but the "
                               f"relay's table now says {row_sha256}", trail, row_sha256)
    return trail.sha256


def _compare(what: str, trail: TrailDigest | None, actual: str) -> None:
    assert trail is not None
    if actual != trail.sha256:
        raise EvidenceMismatch("digest_mismatch", f"{what} was altered: the audit trail "
                               f"(event #{trail.seq}, {trail.action}) recorded SHA-256 "
                               f"{trail.sha256}, the stored file now hashes to {actual}",
                               trail, actual)


def _raw(blobs: BlobStore, what: str, digest: str, trail: TrailDigest | None) -> bytes:
    """The blob's bytes as they are on disk (not checked: :func:`check_blob` checks them
    against the trail and names both digests)."""
    try:
        return blobs.path(digest).read_bytes()
    except ValueError as exc:  # not a SHA-256 at all: the trail's word cannot name a blob
        raise EvidenceMismatch("digest_mismatch", f"{what}: {exc}", trail) from None


#: What the timeline says of each piece of evidence (``state``), and why each is told
#: apart: a deletion the trail records is policy; anything else missing is not.
STATES = {
    "stored": "its record, its content and the trail's event are there (checked when shown)",
    "deleted": "deleted by the retention policy: the trail records it (retention.deleted)",
    "no_record": "in the trail, no record on the relay: its row was removed, unaudited",
    "no_blob": "its content is missing from the relay's blob store, and the trail records "
               "no deletion",
    "unaudited_deletion": "marked deleted on the relay, but the trail records no deletion",
    "not_kept": "not kept: the trail's own event says the relay could not store it",
    "not_in_trail": "a record on the relay that no event of the trail stored",
}


#: The states that say the relay and its trail disagree (what the timeline shows
#: loudly, and ``timeline.viewed`` lists as ``flagged``).
FLAGGED = frozenset({"no_record", "no_blob", "unaudited_deletion", "not_in_trail"})


def _rows(conn: sa.Connection, session_id: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The session's evidence rows by ``(kind, id)`` (kinds as relay/audit_evidence.py
    names them), oldest first; :data:`MAX_EVIDENCE` of each table at most."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for kind, table, born in (("recording", recordings, recordings.c.started_at),
                              ("fix_output", fix_runs, fix_runs.c.started_at),
                              ("diagnostics_report", diagnostics_reports,
                               diagnostics_reports.c.created_at)):
        q = (sa.select(table).where(table.c.session_id == session_id).order_by(born)
             .limit(MAX_EVIDENCE))
        out.update({(kind, r["id"]): dict(r) for r in conn.execute(q).mappings()})
    return out


def _deletions(conn: sa.Connection, pieces: list[tuple[str, str]]
               ) -> dict[tuple[str, str], tuple[int, float]]:
    """``(seq, time)`` of the ``retention.deleted`` event of each piece that has one."""
    out: dict[tuple[str, str], tuple[int, float]] = {}
    targets = sorted({audit_evidence.target(k, i) for k, i in pieces})
    for chunk in (targets[n:n + 500] for n in range(0, len(targets), 500)):
        q = (sa.select(audit_events.c.seq, audit_events.c.time, audit_events.c.details)
             .where(audit_events.c.target.in_(chunk),
                    audit_events.c.action == audit_evidence.DELETED)
             .order_by(audit_events.c.seq))
        for r in conn.execute(q).mappings():
            gone = audit_evidence.deleted(audit_evidence.DELETED, json.loads(r["details"]))
            if gone is not None:
                out.setdefault(gone, (r["seq"], r["time"]))
    return out


def _blob_present(blobs: BlobStore, digest: str) -> bool:
    try:
        return blobs._path(digest).is_file()
    except ValueError:  # not a SHA-256: it names no blob
        return False


_ROW_SHA = {"recording": "sha256", "fix_output": "output_sha256",
            "diagnostics_report": "sha256"}


def evidence(engine: sa.Engine, blobs: BlobStore, session: dict[str, Any],
             stored: tuple[list[Stored], bool] | None = None
             ) -> tuple[list[dict[str, Any]], bool]:
    """The session's recordings, fix outputs and diagnostics reports, oldest first, each
    with the digest the trail recorded (and where), the digest its row says, and its
    ``state`` (:data:`STATES`); and whether the list was cut at :data:`MAX_EVIDENCE`.

    The list is the trail's first: every piece a store event of the session recorded,
    joined with its row. So a removed row, a removed blob or a deletion the trail does
    not record is named here, not silently missing; then the rows no store event
    vouches for (``not_in_trail``)."""
    with engine.connect() as conn:
        trail, cut = stored if stored is not None else stored_in_trail(conn, session)
        rows = _rows(conn, session["id"])
        gone = _deletions(conn, [*((e.said.kind, e.said.id) for e in trail), *rows])
    out: list[dict[str, Any]] = []
    for ev in trail:
        key = (ev.said.kind, ev.said.id)
        row = rows.pop(key, None)
        kept = ev.said.sha256 if ev.said.kept else ""
        row_sha = (row or {}).get(_ROW_SHA[ev.said.kind]) or ""
        if key in gone:
            state = "deleted"
        elif row is None:
            state = "no_record"
        elif not ev.said.kept:
            state = "not_kept"
        elif row.get("deleted_at"):
            state = "unaudited_deletion"
        elif not _blob_present(blobs, ev.said.sha256):
            state = "no_blob"
        else:
            state = "stored"
        deleted_at = (row or {}).get("deleted_at") or (gone[key][1] if key in gone else None)
        out.append(_item(ev.said.kind, ev.said.id, row, ev.details, at=ev.time,
                         sha256=row_sha if row is not None else ev.said.sha256,
                         trail=TrailDigest(ev.seq, ev.action, ev.said.sha256),
                         row_matches=row is None or row_sha == kept, state=state,
                         deleted_at=deleted_at, deleted_seq=gone.get(key, (None,))[0]))
    for (kind, ident), row in rows.items():
        row_sha = row.get(_ROW_SHA[kind]) or ""
        if kind == "fix_output" and not row_sha:
            continue  # a run that kept no output (refused, or failed before it)
        out.append(_item(kind, ident, row, {}, at=0.0, sha256=row_sha, trail=None,
                         row_matches=False, state="not_in_trail",
                         deleted_at=row.get("deleted_at"),
                         deleted_seq=gone.get((kind, ident), (None,))[0]))
    out.sort(key=lambda e: (e["at"], e["trail_seq"] or 0))
    return out, cut


def _said(details: dict[str, Any], key: str, kind: type) -> Any:
    """A fact of the trail's event, when it has the type shown (else None: a timeline
    is never refused over a detail it only displays)."""
    value = details.get(key)
    if isinstance(value, bool) and kind is not bool:
        return None
    if kind is float and isinstance(value, int):
        return float(value)
    return value if isinstance(value, kind) else None


def _item(kind: str, ident: str, row: dict[str, Any] | None, details: dict[str, Any], *,
          at: float, sha256: str, trail: TrailDigest | None, row_matches: bool, state: str,
          deleted_at: float | None, deleted_seq: int | None) -> dict[str, Any]:
    """One piece as the timeline lists it: its row's facts, or (when the row is gone)
    what the trail's event says of it."""
    r = row or {}
    d = details
    base = {"id": ident, "sha256": sha256, "state": state, "has_row": row is not None,
            "trail_sha256": trail.sha256 if trail else None,
            "trail_seq": trail.seq if trail else None,
            "trail_action": trail.action if trail else None,
            "row_matches_trail": bool(trail) and row_matches,
            "deleted_at": deleted_at, "deleted_seq": deleted_seq}
    if kind == "recording":
        capability = r.get("capability") or _said(d, "capability", str)
        return {**base, "kind": "cobrowse" if capability == "cobrowse" else "terminal",
                "at": r.get("started_at") or at, "bytes": r.get("bytes", _said(d, "bytes", int)),
                "duration_s": r.get("duration_s", _said(d, "duration_s", float)),
                "technician": r.get("technician"),
                "keystrokes": r.get("keystrokes", _said(d, "keystrokes", bool)),
                "capability": capability}
    if kind == "fix_output":
        fix = f"{r['fix_id']}@{r['version']}" if row is not None else None
        return {**base, "kind": "fix_output", "at": r.get("started_at") or at,
                "bytes": r.get("kept_bytes", _said(d, "kept_bytes", int)), "fix": fix,
                "digest": r.get("digest", _said(d, "digest", str)),
                "exit_status": r.get("exit_status", _said(d, "exit_status", int)),
                "status": r.get("status")}
    return {**base, "kind": "diagnostics", "at": r.get("created_at") or at,
            "bytes": r.get("size"), "findings": r.get("findings", _said(d, "findings", int)),
            "worst": r.get("worst", _said(d, "worst", str))}
