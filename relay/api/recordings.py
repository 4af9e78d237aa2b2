"""The recordings API: a session's recordings, listed and played back.

Recording is the rooms' job (the terminal's asciicast, ``relay/capabilities/shell.py``;
the co-browse's JSON lines, ``relay/capabilities/cobrowse.py``; both through the channel
runner); this serves what they kept, each as its own media type. Whoever may see the
session may list and play its recordings; every fetch for playback is the audit event
``recording.played`` (who, which recording, which session), and the file is checked
against the SHA-256 the audit trail recorded before a byte of it is served.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backline.relay import timeline
from backline.relay.api import evidence
from backline.relay.api import models as m
from backline.relay.api.edge import endpoint, reply
from backline.relay.api.sessions import may_see, session_for
from backline.relay.capabilities import recording
from backline.relay.retention import gone_text
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

_FIELDS = ("id", "capability", "started_at", "duration_s", "bytes", "sha256", "technician",
           "keystrokes", "deleted_at")


@endpoint("agents:read", path=m.SessionPath, noun="session", answers={200: m.Recordings})
async def list_recordings(request: Request, relay: Relay, who: Principal, *,
                          path: m.SessionPath) -> Response:
    """The recordings of one session (its terminals and co-browses), oldest first."""
    row = session_for(request, relay, who)
    rows = recording.of_session(relay.engine, row["id"])
    return reply(m.Recordings, {"recordings": [{k: r[k] for k in _FIELDS} for r in rows]})


@endpoint("agents:read", path=m.RecordingPath, noun="recording",
          answers={200: recording.MEDIA_TYPE}, refuses=(409, 410, 500))
async def get_recording(request: Request, relay: Relay, who: Principal, *,
                        path: m.RecordingPath) -> Response:
    """One recording, checked against its SHA-256: a terminal's as an asciicast v2
    file, a co-browse's as the agent's JSON lines (``application/x-ndjson``); each
    fetch is audited (``recording.played``). A file that is not what the audit trail's
    ``recording.stored`` recorded is refused, 409, naming both digests:
    ``digest_mismatch`` (the bytes were altered), ``row_altered`` (the row's digest is not
    the trail's) or ``not_in_trail``."""
    row = recording.by_id(relay.engine, path.recording_id)
    if row is None:
        raise ApiError(404, "not_found", "no such recording")
    session = relay.sessions.row(row["session_id"])
    if session is None or not may_see(relay, who, session):
        raise ApiError(404, "not_found", "no such recording",
                       action="recording.refused", target=f"recording:{row['id']}",
                       reason="not_visible")
    if row.get("deleted_at"):
        raise ApiError(410, "deleted", gone_text("recording", row),
                       action="recording.refused", target=f"recording:{row['id']}",
                       reason="deleted_by_retention")
    # Against the digest the trail recorded, not only the row (relay/api/evidence.py),
    # read in pieces off the event loop, then streamed from disk.
    file, size = await evidence.checked_file(
        relay, f"recording {row['id']}", row["sha256"],
        timeline.recording_trail(relay.engine, row), action="recording.refused",
        target=f"recording:{row['id']}", session=row["session_id"])
    relay.record(who.actor, "recording.played", f"recording:{row['id']}",
                 session=row["session_id"], sha256=row["sha256"], bytes=size,
                 address=who.address)
    kind = recording.media_type(row["capability"])
    suffix = "cast" if kind == recording.MEDIA_TYPE else "jsonl"
    # Streamed from the file that was checked, in pieces, never held whole in memory;
    # whole (no ranges: a play is the whole recording, as recording.played says).
    return StreamingResponse(evidence.streamed(file), media_type=kind, headers={
        "content-disposition": f'inline; filename="backline-{row["id"]}.{suffix}"',
        "content-length": str(size), "x-content-sha256": row["sha256"],
        "cache-control": "no-store"})


ROUTES = [
    Route("/api/v1/sessions/{session_id}/recordings", list_recordings, methods=["GET"]),
    Route("/api/v1/recordings/{recording_id}", get_recording, methods=["GET"]),
]
