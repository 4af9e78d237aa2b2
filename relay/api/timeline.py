"""The audit review API: a session's timeline, its evidence, and searching for sessions.

- ``GET /api/v1/sessions/{id}/timeline``: the session (who, agent, when, why, outcome)
  and its audit events oldest first, keyset-paged by ``?after=SEQ`` (a session with
  10,000 events shows its first page at once); the first page (``after`` absent) also
  lists its evidence, each with the digest the trail recorded (:mod:`backline.relay.timeline`).
- ``GET /api/v1/sessions/{id}/evidence/{evidence_id}``: a fix run's kept output or a
  diagnostics report's stream, checked against the trail's digest (recordings are
  served by ``GET /api/v1/recordings/{id}``, checked the same way).
- ``GET /api/v1/session-search``: sessions by agent, technician, ticket, time,
  capability, outcome and the words of their terminal recordings
  (:mod:`backline.relay.term_index`), each hit a recording and a second to jump to.

Who may: whoever may see the session (``relay/api/sessions.py`` ``may_see``; auditors
and admins see all). Everything here reads; each view, fetch and search is audited.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import term_index, timeline
from backline.relay.api import evidence
from backline.relay.api import models as m
from backline.relay.api.agents import visible_group_ids
from backline.relay.api.edge import Params, Reply, UnixTime, endpoint, reply, whole
from backline.relay.api.sessions import session_for
from backline.relay.retention import gone_text
from backline.relay.schema import diagnostics_reports, fix_runs, recordings, support_sessions
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

OUTCOMES = ("resolved", "not_resolved", "escalated")
#: Words a text search may look for at once.
MAX_WORDS = 8


class TimelineQuery(Params):
    after: whole(0, 2**62, "the last seq of the previous page") = 0
    limit: whole(1, timeline.MAX_PAGE, f"at most {timeline.MAX_PAGE}") = 200


class EvidencePath(Params):
    session_id: m.OpaqueId
    evidence_id: m.OpaqueId


class TimelineSession(Reply):
    id: str
    mode: str
    agent_id: str | None
    technician: str
    reason: str
    ticket: str
    capabilities: list[str]
    state: str
    created_at: float
    opened_at: float | None
    ready_at: float | None
    closed_at: float | None
    close_reason: str | None
    remote_hostname: str | None
    outcome: str | None = None
    outcome_note: str = ""
    outcome_by: str | None = None
    outcome_at: float | None = None


class TimelineEvent(m.AuditEvent):
    hash: str


class Evidence(Reply):
    id: str
    kind: Literal["terminal", "cobrowse", "fix_output", "diagnostics"]
    at: float
    sha256: str
    bytes: int | None
    trail_sha256: str | None
    trail_seq: int | None
    trail_action: str | None
    row_matches_trail: bool
    #: what the timeline says of it (relay/timeline.py ``STATES``): ``stored``;
    #: ``deleted`` (by retention, in the trail); or missing without the trail saying why:
    #: ``no_record`` (in the trail, no record on the relay), ``no_blob``,
    #: ``unaudited_deletion``; ``not_kept``; ``not_in_trail``
    state: Literal["stored", "deleted", "no_record", "no_blob", "unaudited_deletion",
                   "not_kept", "not_in_trail"]
    #: whether the relay still has its record (a row of its table)
    has_row: bool
    #: what ``state`` means, in words
    state_text: str
    url: str
    #: when the retention policy deleted its content (the digest stays): it is not served
    deleted_at: float | None = None
    #: the ``retention.deleted`` event that recorded the deletion
    deleted_seq: int | None = None
    duration_s: float | None = None
    technician: str | None = None
    keystrokes: bool | None = None
    fix: str | None = None
    digest: str | None = None
    exit_status: int | None = None
    status: str | None = None
    findings: int | None = None
    worst: str | None = None


class Timeline(Reply):
    session: TimelineSession | None
    events: list[TimelineEvent]
    next_after: int | None
    evidence: list[Evidence] | None
    #: the evidence list was cut at relay/timeline.py ``MAX_EVIDENCE`` pieces per source
    evidence_truncated: bool = False


def _pick(model: type[Reply], data: dict[str, Any]) -> dict[str, Any]:
    """``data``'s fields that ``model`` answers (rows carry more columns than shown)."""
    return {k: v for k, v in data.items() if k in model.model_fields}


def _session_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The session as the timeline shows it; the outcome read with ``.get()``: its
    columns come with helper reports' migration and may not exist yet."""
    return _pick(TimelineSession, {
        **row, "outcome": row.get("outcome"), "outcome_note": row.get("outcome_note") or "",
        "outcome_by": row.get("outcome_by"), "outcome_at": row.get("outcome_at")})


def _evidence_url(session_id: str, item: dict[str, Any]) -> str:
    if item["kind"] in ("terminal", "cobrowse"):
        return f"/api/v1/recordings/{item['id']}"
    return f"/api/v1/sessions/{session_id}/evidence/{item['id']}"


@endpoint("agents:read", path=m.SessionPath, noun="session", query=TimelineQuery,
          answers={200: Timeline})
async def get_timeline(request: Request, relay: Relay, who: Principal, *,
                       path: m.SessionPath, query: TimelineQuery) -> Response:
    """A session's timeline: the session and its audit events oldest first (``?after=``
    the ``next_after`` of the previous page, ``?limit=`` up to 1000); the first page
    also has the session's evidence with the digests the trail recorded."""
    row = session_for(request, relay, who)
    first = query.after == 0

    def build() -> dict[str, Any]:
        with relay.engine.connect() as conn:  # read once, for the events and the evidence
            stored = timeline.stored_in_trail(conn, row)
        events, next_after = timeline.events_page(relay.engine, row, query.after, query.limit,
                                                  stored=stored[0])
        found, cut = None, False
        if first:
            items, cut = timeline.evidence(relay.engine, relay.blobs, row, stored=stored)
            found = [_pick(Evidence, {**e, "url": _evidence_url(row["id"], e),
                                      "state_text": timeline.STATES[e["state"]]})
                     for e in items]
        return {"session": _session_fields(row) if first else None, "events": events,
                "next_after": next_after, "evidence": found, "evidence_truncated": cut}

    body = await asyncio.to_thread(build)
    if first:
        shown = body["evidence"] or []
        # What was shown as missing is part of the record of what the auditor saw.
        missing = sorted(e["id"] for e in shown if e["state"] in timeline.FLAGGED)
        relay.record(who.actor, "timeline.viewed", f"session:{row['id']}",
                     events=len(body["events"]), evidence=len(shown),
                     **({"flagged": missing[:50]} if missing else {}), address=who.address)
    return reply(Timeline, body)


def _evidence_item(relay: Relay, session_id: str, evidence_id: str
                   ) -> tuple[str, dict[str, Any], timeline.TrailDigest | None, str]:
    """(kind, row, trail digest, row digest) of a fix run or report of the session."""
    with relay.engine.connect() as conn:
        run = conn.execute(sa.select(fix_runs).where(fix_runs.c.id == evidence_id)
                           .where(fix_runs.c.session_id == session_id)).mappings().first()
        rep = None if run else conn.execute(
            sa.select(diagnostics_reports).where(diagnostics_reports.c.id == evidence_id)
            .where(diagnostics_reports.c.session_id == session_id)).mappings().first()
    if run is not None and run["output_sha256"]:
        return "fix_output", dict(run), timeline.fix_run_trail(relay.engine, dict(run)), \
            run["output_sha256"]
    if rep is not None:
        return "diagnostics", dict(rep), timeline.report_trail(relay.engine, dict(rep)), \
            rep["sha256"]
    raise ApiError(404, "not_found", "no such evidence in this session",
                   action="evidence.refused", target=f"session:{session_id}",
                   evidence=evidence_id)


@endpoint("agents:read", path=EvidencePath, noun="evidence",
          answers={200: "application/octet-stream"}, refuses=(409, 410, 500))
async def get_evidence(request: Request, relay: Relay, who: Principal, *,
                       path: EvidencePath) -> Response:
    """A fix run's kept output (text/plain) or a diagnostics report's kept stream (JSON
    lines), checked against the digest the audit trail recorded; 409 names both
    digests when they differ. Each fetch is audited (``evidence.viewed``)."""
    row = session_for(request, relay, who)
    kind, item, trail, row_sha = _evidence_item(relay, row["id"], path.evidence_id)
    what = ("fix run" if kind == "fix_output" else "diagnostics report") + f" {item['id']}"
    if item.get("deleted_at"):
        digest_field = "output_sha256" if kind == "fix_output" else "sha256"
        raise ApiError(410, "deleted", gone_text(what, item, digest_field),
                       action="evidence.refused", target=f"session:{row['id']}",
                       evidence=item["id"], reason="deleted_by_retention")
    data = evidence.checked_bytes(relay, what, row_sha, trail, action="evidence.refused",
                                  target=f"session:{row['id']}", evidence=item["id"])
    assert trail is not None  # checked_bytes refuses what the trail does not name
    evidence.viewed(relay, who, row["id"], item["id"], kind, trail, data)
    media = ("text/plain; charset=utf-8" if kind == "fix_output"
             else "application/x-ndjson")
    suffix = "txt" if kind == "fix_output" else "jsonl"
    return Response(data, media_type=media, headers={
        "x-content-sha256": trail.sha256, "x-trail-seq": str(trail.seq),
        "cache-control": "no-store", "x-content-type-options": "nosniff",
        "content-disposition": f'inline; filename="backline-{item["id"]}.{suffix}"'})


# --- search ---------------------------------------------------------------------------


class SearchQuery(Params):
    agent: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""
    technician: Annotated[str, Field(max_length=64, pattern=r"^[a-z0-9._-]{0,64}$")] = ""
    ticket: Annotated[str, Field(max_length=128)] = ""
    since: UnixTime | None = None
    until: UnixTime | None = None
    capability: Annotated[str, Field(max_length=32, pattern=r"^[a-z0-9_-]{0,32}$")] = ""
    outcome: Literal["resolved", "not_resolved", "escalated", ""] = ""
    text: Annotated[str, Field(max_length=200, description="words typed or printed in a "
                               "terminal (all of them; `word*` for a prefix)")] = ""
    limit: whole(1, 200, "at most 200") = 50


class SearchHit(Reply):
    recording: str
    at: float
    word: str


class SearchSession(Reply):
    id: str
    agent_id: str | None
    technician: str
    reason: str
    ticket: str
    state: str
    created_at: float
    closed_at: float | None
    outcome: str | None = None
    hits: list[SearchHit]


class SearchResult(Reply):
    sessions: list[SearchSession]
    words: list[str]
    truncated: bool


def _capability_used(capability: str) -> Any:
    """Sessions in which ``capability`` left something: a recording (terminal,
    co-browse), a fix run, a diagnostics report; else sessions that asked for it."""
    sid = support_sessions.c.id
    if capability in ("shell", "cobrowse"):
        return sa.exists().where(recordings.c.session_id == sid,
                                 recordings.c.capability == capability)
    if capability == "fix":
        return sa.exists().where(fix_runs.c.session_id == sid)
    if capability == "diagnostics":
        return sa.exists().where(diagnostics_reports.c.session_id == sid)
    caps = sa.literal(",") + support_sessions.c.capabilities + sa.literal(",")
    return caps.contains(f",{capability},", autoescape=True)


HITS = 20  # moments shown per session found


def search_sessions(relay: Relay, who: Principal, q: SearchQuery
                    ) -> tuple[list[dict[str, Any]], list[str], bool]:
    words = term_index.normalise_query(q.text.replace("*", " ")) if q.text else []
    if q.text.strip().endswith("*") and words:
        words[-1] += "*"
    if q.text and not words:
        raise ApiError(400, "bad_field", "text has no word to look for (a word is 2 to 64 "
                                         "letters or digits)")
    if len(words) > MAX_WORDS:
        raise ApiError(400, "bad_field", f"text is at most {MAX_WORDS} words")
    s = support_sessions
    query = sa.select(s).order_by(s.c.created_at.desc()).limit(q.limit + 1)
    allowed = visible_group_ids(relay, who)
    if allowed is not None:
        query = query.where(sa.or_(s.c.group_id.in_(allowed or {-1}),
                                   s.c.technician == who.user.username))
    if q.agent:
        query = query.where(s.c.agent_id == q.agent)
    if q.technician:
        query = query.where(s.c.technician == q.technician)
    if q.ticket:
        query = query.where(s.c.ticket == q.ticket)
    if q.since is not None:
        query = query.where(s.c.created_at >= q.since)
    if q.until is not None:
        query = query.where(s.c.created_at < q.until)
    if q.capability:
        query = query.where(_capability_used(q.capability))
    if q.outcome:
        column = s.c.get("outcome")
        if column is None:
            raise ApiError(400, "not_recorded", "this relay does not record session outcomes "
                                                "yet")
        query = query.where(column == q.outcome)
    if words:
        # The words are one more condition of this query (visibility and every filter
        # above apply with them, then the limit): never a capped word list intersected
        # afterwards, where a common word would crowd out the sessions one may see.
        query = query.where(s.c.id.in_(term_index.sessions_holding(words)))
    with relay.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    truncated = len(rows) > q.limit
    found: dict[str, list[dict[str, Any]]] = {}
    if words and rows:
        found = term_index.hits(relay.engine, words, [r["id"] for r in rows[:q.limit]],
                                limit=q.limit, moments=HITS)
    out = [_pick(SearchSession, {**r, "outcome": r.get("outcome"),
                                 "hits": found.get(r["id"], [])})
           for r in rows[:q.limit]]
    return out, words, truncated


@endpoint("agents:read", query=SearchQuery, answers={200: SearchResult})
async def search(request: Request, relay: Relay, who: Principal, *,
                 query: SearchQuery) -> Response:
    """Sessions you may see, newest first, by ``agent``, ``technician``, ``ticket``,
    ``since``/``until`` (when opened), ``capability`` (used in it), ``outcome`` and
    ``text``: words typed or printed in its terminal recordings (all of them; ``word*``
    for a prefix), each hit a recording and the second to replay it from."""
    sessions, words, truncated = await asyncio.to_thread(search_sessions, relay, who, query)
    filters = [k for k, v in query.model_dump().items() if k != "limit" and v not in ("", None)]
    relay.record(who.actor, "session.search", "sessions", filters=filters,
                 **({"words": len(words)} if words else {}), found=len(sessions),
                 address=who.address)
    return reply(SearchResult, {"sessions": sessions, "words": words, "truncated": truncated})


ROUTES = [
    Route("/api/v1/sessions/{session_id}/timeline", get_timeline, methods=["GET"]),
    Route("/api/v1/sessions/{session_id}/evidence/{evidence_id}", get_evidence,
          methods=["GET"]),
    Route("/api/v1/session-search", search, methods=["GET"]),
]
