"""The reports API: the diagnostics reports of an agent, listed and fetched.

Storing them is the diagnostics room's job (``relay/capabilities/diagnostics.py``,
which the channel runner calls when a diagnostics channel ends); reading one checks
the caller's grant on the agent.
"""

from __future__ import annotations

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay.api import models as m
from backline.relay.api.agents import agent_by_id
from backline.relay.api.edge import endpoint, reply
from backline.relay.capabilities.diagnostics import load
from backline.relay.retention import gone_text
from backline.relay.schema import diagnostics_reports
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal


@endpoint("agents:read", path=m.AgentPath, noun="agent", query=m.ReportQuery,
          answers={200: m.Reports})
async def list_reports(request: Request, relay: Relay, who: Principal, *,
                       path: m.AgentPath, query: m.ReportQuery) -> Response:
    """Diagnostics reports of one agent, newest first (?limit= up to 200)."""
    agent = agent_by_id(relay, who, path.agent_id, acting=False)
    q = (sa.select(diagnostics_reports).where(diagnostics_reports.c.agent_id == agent["id"])
         .order_by(diagnostics_reports.c.created_at.desc()).limit(query.limit))
    with relay.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    return reply(m.Reports, {"reports": rows})


@endpoint("agents:read", path=m.ReportPath, noun="report", answers={200: m.Report},
          refuses=(410, 500))
async def get_report(request: Request, relay: Relay, who: Principal, *,
                     path: m.ReportPath) -> Response:
    """One stored report, assembled, with the SHA-256 of what the agent sent."""
    report_id = path.report_id
    with relay.engine.connect() as conn:
        row = conn.execute(sa.select(diagnostics_reports)
                           .where(diagnostics_reports.c.id == report_id)).mappings().first()
    if row is None:
        raise ApiError(404, "not_found", "no such report")
    agent_by_id(relay, who, row["agent_id"], acting=False)
    if row.get("deleted_at"):
        raise ApiError(410, "deleted", gone_text("report", row))
    try:
        report = load(relay.blobs, dict(row))
    except (OSError, ValueError) as exc:
        raise ApiError(500, "damaged", f"the stored report cannot be read: {exc}") from None
    return reply(m.Report, {**dict(row), "report": report},
                 headers={"content-disposition":
                          f'inline; filename="backline-report-{report_id}.json"'})


ROUTES = [
    Route("/api/v1/agents/{agent_id}/reports", list_reports, methods=["GET"]),
    Route("/api/v1/reports/{report_id}", get_report, methods=["GET"]),
]

