"""Management reports (docs/reports.md): ``GET /api/v1/management-reports`` (the numbers,
per group and period, with a trend per week or day), ``.../members`` (the incidents,
sessions and event ``seq``s one number is made of) and ``.../csv``. Each is audited: the
first two ``report.viewed`` (what the console shows, and prints), the CSV
``report.exported``.

``audit:read``: the numbers are the trail's, and whoever reads them may read the events
they link to. The report is computed in a worker thread (it reads the whole trail's
few actions it needs; bench/audit_review_report.py times it at 1,000,000 events).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay.api.edge import Params, Reply, UnixTime, endpoint, reply
from backline.relay.api.models import GROUP_NAME
from backline.relay.reports import clock, compute
from backline.relay.reports.csvfile import to_csv
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal

clock.install()  # a test's shifted trail clock (relay/reports/clock.py); else nothing

#: The longest period one report covers.
MAX_PERIOD_S = 400 * compute.DAY
DEFAULT_PERIOD_S = 28 * compute.DAY


class ReportQuery(Params):
    group: Annotated[str, Field(max_length=128, pattern=GROUP_NAME + "|^$")] = ""
    since: UnixTime | None = None
    until: UnixTime | None = None
    bucket: Literal["week", "day"] = "week"

    @model_validator(mode="after")
    def _period(self) -> ReportQuery:
        if self.since is not None and self.until is not None and self.until <= self.since:
            raise ValueError("until must be after since")
        return self

    def period(self) -> tuple[float, float]:
        until = self.until if self.until is not None else clock.now()
        since = self.since if self.since is not None else until - DEFAULT_PERIOD_S
        if until - since > MAX_PERIOD_S:
            raise ApiError(400, "bad_field", "a report covers at most 400 days")
        return since, until


class MembersQuery(ReportQuery):
    metric: Annotated[str, Field(max_length=64, pattern=r"^[a-z_.]{1,64}$")]
    key: Annotated[str, Field(max_length=128)] = ""


class ManagementReport(Reply):
    group: str
    since: float
    until: float
    bucket: str
    metrics: dict[str, dict[str, Any]]
    technicians: list[dict[str, Any]]
    top_findings: list[dict[str, Any]]
    trend: list[dict[str, Any]]
    incidents: int
    events_read: int
    compute_ms: float


class ReportMembers(Reply):
    metric: str
    key: str
    value: Any
    incidents: list[dict[str, Any]]
    sessions: list[str]
    events: list[int]


async def _full(relay: Relay, query: ReportQuery) -> dict[str, Any]:
    since, until = query.period()
    return await asyncio.to_thread(compute.report, relay.engine, since=since, until=until,
                                   group=query.group, bucket=query.bucket)


@endpoint("audit:read", query=ReportQuery, answers={200: ManagementReport})
async def get_report(request: Request, relay: Relay, who: Principal, *,
                     query: ReportQuery) -> Response:
    """The management report for ``?group=&since=&until=`` (Unix times; default the last
    28 days, at most 400) with a ``bucket=week|day`` trend. Each number says how many
    incidents, sessions and events make it up; ``/members`` lists them. Audited
    ``report.viewed``: this is what the console shows and prints."""
    full = await _full(relay, query)
    relay.record(who.actor, "report.viewed", "report", group=query.group,
                 since=full["since"], until=full["until"], address=who.address)
    return reply(ManagementReport, compute.summary(full))


@endpoint("audit:read", query=MembersQuery, answers={200: ReportMembers}, noun="metric",
          refuses=(404,))
async def get_members(request: Request, relay: Relay, who: Principal, *,
                      query: MembersQuery) -> Response:
    """What one number of the report is made of: ``?metric=`` a metric's name
    (``incidents_opened``...), or ``technician``/``finding`` with ``key=`` the name, or
    ``trend.NAME`` with ``key=`` the bucket's start; same period parameters. Audited
    ``report.viewed`` with the ``metric`` and ``key``."""
    full = await _full(relay, query)
    found = compute.members(full, query.metric, query.key)
    if found is None:
        raise ApiError(404, "not_found", "no such number in this report")
    relay.record(who.actor, "report.viewed", "report", group=query.group,
                 since=full["since"], until=full["until"], metric=query.metric,
                 key=query.key, address=who.address)
    return reply(ReportMembers, found)


@endpoint("audit:read", query=ReportQuery, answers={200: "text/csv"})
async def get_csv(request: Request, relay: Relay, who: Principal, *,
                  query: ReportQuery) -> Response:
    """The report as CSV (audited ``report.exported``)."""
    full = await _full(relay, query)
    relay.record(who.actor, "report.exported", "report", format="csv", group=query.group,
                 since=full["since"], until=full["until"], address=who.address)
    stamp = time.strftime("%Y%m%d", time.gmtime(full["until"]))
    return Response(to_csv(full), media_type="text/csv; charset=utf-8", headers={
        "content-disposition": f'attachment; filename="backline-report-{stamp}.csv"'})


ROUTES = [
    Route("/api/v1/management-reports", get_report, methods=["GET"]),
    Route("/api/v1/management-reports/members", get_members, methods=["GET"]),
    Route("/api/v1/management-reports/csv", get_csv, methods=["GET"]),
]
