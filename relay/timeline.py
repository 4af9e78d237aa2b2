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

Which events are a session's (the contract in the helpers' brief): ``target ==
"session:<id>"``, or a ``session`` detail. Those with a ``session`` detail have their
own targets (``recording:<id>`` for a playback, ``agent:<id>`` for a diagnostics
report, ``report:<id>`` / ``fix_run:<id>`` when retention deleted evidence), so the
query asks for exactly those targets (indexed) and, for the agent's events, the
``"session":"<id>"`` in the canonical details: no scan of the whole trail, so a session's
first page costs the same in a trail of a million events.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from backline.relay import audit_evidence
from backline.relay.audit import SEQ_MAX, row_to_event
from backline.relay.blobs import BlobStore
from backline.relay.schema import audit_events, diagnostics_reports, fix_runs, recordings

#: Events per timeline page at most.
MAX_PAGE = 1000


def _like_literal(text: str) -> str:
    """``text`` for a LIKE pattern (ids are URL-safe: only ``_`` needs escaping)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def session_detail(session_id: str) -> str:
    """How a ``session`` detail looks in the trail's canonical JSON."""
    return json.dumps({"session": session_id}, separators=(",", ":"))[1:-1]


def _recording_ids(conn: sa.Connection, session_id: str) -> list[str]:
    return list(conn.execute(sa.select(recordings.c.id)
                             .where(recordings.c.session_id == session_id)).scalars())


def _evidence_targets(conn: sa.Connection, session_id: str) -> list[str]:
    """The targets of events about the session's evidence (a playback's
    ``recording:<id>``; retention's ``report:<id>`` and ``fix_run:<id>``)."""
    runs = conn.execute(sa.select(fix_runs.c.id).where(fix_runs.c.session_id == session_id)
                        ).scalars()
    reps = conn.execute(sa.select(diagnostics_reports.c.id)
                        .where(diagnostics_reports.c.session_id == session_id)).scalars()
    return [*(f"recording:{r}" for r in _recording_ids(conn, session_id)),
            *(f"fix_run:{r}" for r in runs), *(f"report:{r}" for r in reps)]


def events_condition(conn: sa.Connection, session: dict[str, Any]) -> Any:
    """The WHERE clause of a session's events (see the module's docstring): the one
    definition of them, shared by the timeline and the evidence bundle."""
    sid = session["id"]
    targets = [f"session:{sid}", *_evidence_targets(conn, sid)]
    cond = audit_events.c.target.in_(targets)
    if session.get("agent_id"):
        mine = f"%{_like_literal(session_detail(sid))}%"
        cond = sa.or_(cond, sa.and_(audit_events.c.target == f"agent:{session['agent_id']}",
                                    audit_events.c.details.like(mine, escape="\\")))
    return cond


def events_page(engine: sa.Engine, session: dict[str, Any], after: int = 0,
                limit: int = 200) -> tuple[list[dict[str, Any]], int | None]:
    """The session's events after ``seq`` ``after``, oldest first; and the ``after`` of
    the next page (None: this was the last)."""
    limit = max(1, min(limit, MAX_PAGE))
    if after >= SEQ_MAX:  # nothing is past the column's end (PostgreSQL would refuse it)
        return [], None
    with engine.connect() as conn:
        q = (sa.select(audit_events).where(events_condition(conn, session))
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
                    trail: TrailDigest | None) -> tuple[Path, int]:
    """:func:`check_blob` for a blob of any size: its file and size once the file,
    read in pieces (memory stays flat), hashes to the digest the trail recorded. It
    takes a moment for a long recording: call it off the event loop."""
    digest = _trail_digest(what, row_sha256, trail)
    try:
        path = blobs.path(digest)
    except ValueError as exc:  # not a SHA-256 at all: the trail's word cannot name a blob
        raise EvidenceMismatch("digest_mismatch", f"{what}: {exc}", trail) from None
    actual, size = blobs.hash_file(digest)
    _compare(what, trail, actual)
    return path, size


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


def evidence(engine: sa.Engine, session: dict[str, Any]) -> list[dict[str, Any]]:
    """The session's recordings, fix outputs and diagnostics reports, oldest first, each
    with the digest its row says and the digest the trail recorded (and where)."""
    sid = session["id"]
    with engine.connect() as conn:
        recs = conn.execute(sa.select(recordings).where(recordings.c.session_id == sid)
                            .order_by(recordings.c.started_at).limit(500)).mappings().all()
        runs = conn.execute(sa.select(fix_runs).where(fix_runs.c.session_id == sid)
                            .order_by(fix_runs.c.started_at).limit(500)).mappings().all()
        reps = conn.execute(sa.select(diagnostics_reports)
                            .where(diagnostics_reports.c.session_id == sid)
                            .order_by(diagnostics_reports.c.created_at).limit(500)
                            ).mappings().all()
    out: list[dict[str, Any]] = []
    for r in recs:
        trail = recording_trail(engine, dict(r))
        kind = "cobrowse" if r["capability"] == "cobrowse" else "terminal"
        out.append(_item(r["id"], kind, r["started_at"], r["sha256"], trail, r["bytes"],
                         deleted_at=r.get("deleted_at"), duration_s=r["duration_s"],
                         technician=r["technician"],
                         keystrokes=r["keystrokes"], capability=r["capability"]))
    for r in runs:
        if not r["output_sha256"]:
            continue
        trail = fix_run_trail(engine, dict(r))
        out.append(_item(r["id"], "fix_output", r["started_at"], r["output_sha256"], trail,
                         r["kept_bytes"], deleted_at=r.get("deleted_at"),
                         fix=f"{r['fix_id']}@{r['version']}",
                         digest=r["digest"], exit_status=r["exit_status"],
                         status=r["status"]))
    for r in reps:
        trail = report_trail(engine, dict(r))
        out.append(_item(r["id"], "diagnostics", r["created_at"], r["sha256"], trail,
                         r["size"], deleted_at=r.get("deleted_at"), findings=r["findings"],
                         worst=r["worst"]))
    out.sort(key=lambda e: e["at"])
    return out


def _item(eid: str, kind: str, at: float, sha256: str, trail: TrailDigest | None,
          size: int | None, **more: Any) -> dict[str, Any]:
    return {"id": eid, "kind": kind, "at": at, "sha256": sha256, "bytes": size,
            "trail_sha256": trail.sha256 if trail else None,
            "trail_seq": trail.seq if trail else None,
            "trail_action": trail.action if trail else None,
            "row_matches_trail": bool(trail and trail.sha256 == sha256), **more}
