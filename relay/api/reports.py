"""The reports API: the diagnostics reports of an agent, listed and fetched.

Storing them is the diagnostics room's job (``relay/capabilities/diagnostics.py``,
which the channel runner calls when a diagnostics channel ends); reading one checks
the caller's grant on the agent, then the kept stream against the audit trail's digest,
and is audited (``evidence.viewed``), as every piece of a session's evidence is.
"""

from __future__ import annotations

import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import timeline
from backline.relay.api import evidence
from backline.relay.api import models as m
from backline.relay.api.agents import agent_by_id
from backline.relay.api.edge import endpoint, reply
from backline.relay.capabilities.diagnostics import assemble
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
          refuses=(409, 410, 500))
async def get_report(request: Request, relay: Relay, who: Principal, *,
                     path: m.ReportPath) -> Response:
    """One stored report, assembled from the kept stream once that stream is checked
    against the digest the audit trail's ``diagnostics.report`` recorded (as the session
    timeline's evidence is: relay/api/evidence.py); 409 ``digest_mismatch`` /
    ``row_altered`` / ``not_in_trail`` names both digests. Each fetch is audited
    ``evidence.viewed`` (a refusal ``evidence.refused``), on the report's session."""
    report_id = path.report_id
    with relay.engine.connect() as conn:
        found = conn.execute(sa.select(diagnostics_reports)
                             .where(diagnostics_reports.c.id == report_id)).mappings().first()
    if found is None:
        raise ApiError(404, "not_found", "no such report")
    row = dict(found)
    agent_by_id(relay, who, row["agent_id"], acting=False)
    target = f"session:{row['session_id']}"
    if row.get("deleted_at"):
        raise ApiError(410, "deleted", gone_text("report", row), action="evidence.refused",
                       target=target, evidence=row["id"], reason="deleted_by_retention")
    what = f"diagnostics report {row['id']}"
    trail = timeline.report_trail(relay.engine, row)
    data = evidence.checked_bytes(relay, what, row["sha256"], trail,
                                  action="evidence.refused", target=target, evidence=row["id"])
    assert trail is not None  # checked_bytes refuses what the trail does not name
    try:
        report = assemble(data)
    except (ValueError, KeyError, TypeError) as exc:  # vouched for, yet not a report
        raise ApiError(500, "damaged", f"the stored {what} is not a report: {exc}",
                       action="evidence.refused", target=target, evidence=row["id"]
                       ) from None
    evidence.viewed(relay, who, row["session_id"], row["id"], "diagnostics", trail, data)
    return reply(m.Report, {**row, "report": report},
                 headers={"content-disposition":
                          f'inline; filename="backline-report-{report_id}.json"',
                          "x-content-sha256": trail.sha256, "x-trail-seq": str(trail.seq)})


ROUTES = [
    Route("/api/v1/agents/{agent_id}/reports", list_reports, methods=["GET"]),
    Route("/api/v1/reports/{report_id}", get_report, methods=["GET"]),
]

