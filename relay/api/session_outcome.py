"""A session's outcome: ``POST /api/v1/sessions/{id}/outcome`` (issue 14; the contract in
the helpers' brief, docs/reports.md "Session outcome").

Who: the session's technician or an admin (the same rule as closing it). When: once the
session is closed (the console asks when the technician closes it, and offers it on a
closed session). A second call changes it: a customer who calls back a week later makes
"resolved" wrong, and refusing the change would leave the wrong value standing or push
people to open a fake session to say so. Each change is its own ``session.outcome``
event naming the ``previous`` one, so the trail never loses an earlier value, and the
reports use the last one recorded by the end of their period.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay.api import models as m
from backline.relay.api.edge import Body, endpoint, reply
from backline.relay.api.sessions import session_for
from backline.relay.db import writing
from backline.relay.reports import clock
from backline.relay.schema import support_sessions
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

OUTCOMES = ("resolved", "not_resolved", "escalated")
#: Sessions in these states are over: an outcome may be set.
ENDED = ("closed", "expired")


class OutcomeBody(Body):
    outcome: Literal["resolved", "not_resolved", "escalated"]
    # Lines are fine (a note is prose); other control characters are not.
    note: Annotated[str, Field(max_length=1024, pattern=r"^[^\x00-\x08\x0b-\x1f\x7f]*$")] = ""


@endpoint("agents:write", path=m.SessionPath, noun="session", body=OutcomeBody,
          answers={200: m.Session}, refuses=(409,))
async def set_outcome(request: Request, relay: Relay, who: Principal, *,
                      path: m.SessionPath, body: OutcomeBody) -> Response:
    """Set (or change) a closed session's outcome: ``{"outcome": "resolved" |
    "not_resolved" | "escalated", "note": "..."}``. The session's technician or an
    admin; each change is audited (``session.outcome``)."""
    row = session_for(request, relay, who, close=True)
    if row["state"] not in ENDED:
        raise ApiError(409, "not_closed", f"the session is {row['state']}: close it first, "
                       "then say how it ended", action="session.outcome.refused",
                       target=f"session:{row['id']}")
    note = body.note.strip()
    at = round(clock.now(), 6)
    with writing(relay.engine) as conn:
        conn.execute(support_sessions.update().where(support_sessions.c.id == row["id"])
                     .values(outcome=body.outcome, outcome_note=note,
                             outcome_by=who.user.username, outcome_at=at))
    extra = {"previous": row["outcome"]} if row.get("outcome") else {}
    if row.get("agent_id"):
        extra["agent"] = row["agent_id"]
    relay.record(who.actor, "session.outcome", f"session:{row['id']}", outcome=body.outcome,
                 note=note, ticket=row["ticket"], address=who.address, **extra)
    changed = relay.sessions.row(row["id"])
    if changed is not None:
        relay.sessions.announce("outcome", changed)
    return reply(m.Session, changed)


ROUTES = [
    Route("/api/v1/sessions/{session_id}/outcome", set_outcome, methods=["POST"]),
]
