"""The reports API: the diagnostics reports of an agent, listed and fetched.

Storing them is ``report_store``'s job (the session manager calls it when a
diagnostics channel ends); reading one checks the caller's grant on the agent.
"""

from __future__ import annotations

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backline.relay.api import agent_by_id, agent_for, endpoint
from backline.relay.report_store import load
from backline.relay.schema import diagnostics_reports
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal


@endpoint("agents:read")
async def list_reports(request: Request, relay: Relay, who: Principal) -> Response:
    """Diagnostics reports of one agent, newest first (?limit= up to 200)."""
    agent = agent_for(request, relay, who, acting=False)
    raw_limit = request.query_params.get("limit", "50")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 200:
        raise ApiError(400, "bad_field", "limit must be a whole number from 1 to 200")
    q = (sa.select(diagnostics_reports).where(diagnostics_reports.c.agent_id == agent["id"])
         .order_by(diagnostics_reports.c.created_at.desc()).limit(int(raw_limit)))
    with relay.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    return JSONResponse({"reports": rows})


@endpoint("agents:read")
async def get_report(request: Request, relay: Relay, who: Principal) -> Response:
    """One stored report, assembled, with the SHA-256 of what the agent sent."""
    report_id = request.path_params["report_id"][:64]
    with relay.engine.connect() as conn:
        row = conn.execute(sa.select(diagnostics_reports)
                           .where(diagnostics_reports.c.id == report_id)).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", "no such report")
    agent_by_id(relay, who, row["agent_id"], acting=False)
    try:
        report = load(relay, dict(row))
    except (OSError, ValueError) as exc:
        raise ApiError(500, "damaged", f"the stored report cannot be read: {exc}") from None
    return JSONResponse({**dict(row), "report": report},
                        headers={"content-disposition":
                                 f'inline; filename="backline-report-{report_id}.json"'})


ROUTES = [
    Route("/api/v1/agents/{agent_id}/reports", list_reports, methods=["GET"]),
    Route("/api/v1/reports/{report_id}", get_report, methods=["GET"]),
]

