"""Legal holds: what retention must keep (relay/retention.py).

Only admins may place and lift holds (permission ``holds:write``). Auditors read the
holds but change nothing: lifting a hold lets the next retention pass delete what it
kept, so whoever may place one must not be a read-only role; an auditor who needs
evidence kept asks an admin. Both are audited with the hold's scope, subject and reason; a hold
is never deleted, lifting it stamps who and when.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import retention
from backline.relay.api.edge import Body, Params, Reply, endpoint, reply
from backline.relay.api.models import OpaqueId
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

Reason = Annotated[str, Field(min_length=3, max_length=512, pattern=r"^[^\x00-\x1f]*$")]


class HoldCreate(Body):
    scope: Literal["session", "agent", "group"]
    subject: Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
    reason: Reason


class HoldLift(Body):
    reason: Reason


class HoldPath(Params):
    hold_id: OpaqueId


class Hold(Reply):
    id: str
    scope: str
    subject: str
    reason: str
    placed_by: str
    placed_at: float
    lifted_by: str | None
    lifted_at: float | None
    lift_reason: str | None


class Holds(Reply):
    holds: list[Hold]


def _details(row: dict[str, object]) -> dict[str, object]:
    return {"hold": row["id"], "scope": row["scope"], "subject": row["subject"]}


@endpoint("audit:read", answers={200: Holds})
async def list_holds(request: Request, relay: Relay, who: Principal) -> Response:
    """Every legal hold, newest first, lifted ones included (at most 1000)."""
    return reply(Holds, {"holds": retention.list_holds(relay.engine)})


@endpoint("holds:write", body=HoldCreate, answers={201: Hold})
async def place_hold(request: Request, relay: Relay, who: Principal, *,
                     body: HoldCreate) -> Response:
    """Place a hold on a session, an agent or a group (by name): retention keeps
    their recordings and reports until it is lifted."""
    row = retention.place_hold(relay.engine, body.scope, body.subject, body.reason,
                               who.user.username)
    relay.record(who.actor, "legal_hold.placed", f"legal_hold:{row['id']}", **_details(row),
                 reason=body.reason, address=who.address)
    return reply(Hold, row, status=201)


@endpoint("holds:write", path=HoldPath, body=HoldLift, noun="hold", answers={200: Hold})
async def lift_hold(request: Request, relay: Relay, who: Principal, *, path: HoldPath,
                    body: HoldLift) -> Response:
    """Lift a hold in force (with why); retention applies again at its next pass."""
    row = retention.lift_hold(relay.engine, path.hold_id, who.user.username, body.reason)
    if row is None:
        raise ApiError(404, "not_found", "no such hold in force",
                       action="legal_hold.refused", target=f"legal_hold:{path.hold_id}")
    relay.record(who.actor, "legal_hold.lifted", f"legal_hold:{row['id']}", **_details(row),
                 reason=body.reason, address=who.address)
    return reply(Hold, row)


ROUTES = [
    Route("/api/v1/legal-holds", list_holds, methods=["GET"]),
    Route("/api/v1/legal-holds", place_hold, methods=["POST"]),
    Route("/api/v1/legal-holds/{hold_id}/lift", lift_hold, methods=["POST"]),
]
