"""The audit trail: list, verify the chain, export as JSON lines."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backline.relay.api import models as m
from backline.relay.api.edge import (
    endpoint,
    reply,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    Principal,
)


@endpoint("audit:read", query=m.AuditQuery, answers={200: m.AuditPage})
async def list_audit(request: Request, relay: Relay, who: Principal, *,
                     query: m.AuditQuery) -> Response:
    """Audit events, newest first; filter by actor, action (prefix), target, since, until;
    page with ``before`` = the smallest ``seq`` of the previous page."""
    q = query
    limit = q.limit
    events = relay.audit.query(
        actor=q.actor or None, action=q.action or None, target=q.target or None,
        since=q.since, until=q.until, before_seq=q.before, limit=limit)
    next_before = events[-1]["seq"] if len(events) == limit else None
    return reply(m.AuditPage, {"events": events, "next_before": next_before})


@endpoint("audit:read", answers={200: m.AuditVerify})
async def verify_audit(request: Request, relay: Relay, who: Principal) -> Response:
    """Walk the whole trail and report the first broken record, if any."""
    result = await asyncio.to_thread(relay.audit.verify)
    return reply(m.AuditVerify, {**result.as_dict(), "summary": result.describe()})


@endpoint("audit:read", query=m.ExportQuery, answers={200: "application/x-ndjson"})
async def export_audit(request: Request, relay: Relay, who: Principal, *,
                       query: m.ExportQuery) -> Response:
    """The trail as JSON lines, oldest first, with each record's hashes."""
    since = query.since
    relay.record(who.actor, "audit.export", "audit", since=since, address=who.address)

    def lines() -> Any:
        for event in relay.audit.export(since):
            yield json.dumps(event, ensure_ascii=False) + "\n"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return StreamingResponse(lines(), media_type="application/x-ndjson", headers={
        "content-disposition": f'attachment; filename="backline-audit-{stamp}.jsonl"'})


ROUTES = [
    Route("/api/v1/audit", list_audit, methods=["GET"]),
    Route("/api/v1/audit/verify", verify_audit, methods=["GET"]),
    Route("/api/v1/audit/export", export_audit, methods=["GET"]),
]
