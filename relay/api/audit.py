"""The audit trail: list, verify the chain, export as JSON lines."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from backline.relay import audit, audit_note, audit_tree
from backline.relay.api import models as m
from backline.relay.api.edge import (
    endpoint,
    reply,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
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


# --- proofs (issue 14, helper proofs; docs/audit-proofs.md) ---------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _no_proof(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


@endpoint("audit:read", answers={200: m.AuditCheckpoint}, refuses=(404,))
async def audit_checkpoint(request: Request, relay: Relay, who: Principal) -> Response:
    """The newest signed checkpoint (a C2SP signed note over the tree of every event so
    far, signed now if the newest does not cover them) and the relay's verifier key."""
    note = await asyncio.to_thread(relay.audit.checkpoint_now)
    if note is None:
        raise _no_proof("the audit trail is empty")
    return reply(m.AuditCheckpoint, {
        "size": note["size"], "root": _b64(bytes.fromhex(note["root"])),
        "origin": note["origin"], "note": note["note"],
        "verifier_key": audit_note.verifier_key(note["origin"], relay.audit.public_key)})


@endpoint("audit:read", query=m.InclusionQuery, answers={200: m.InclusionProof},
          refuses=(404,))
async def inclusion_proof(request: Request, relay: Relay, who: Principal, *,
                          query: m.InclusionQuery) -> Response:
    """Prove event ``seq`` is in the tree of ``size`` (a signed checkpoint's size; by
    default the newest checkpoint)."""

    def build() -> dict[str, object]:
        log = relay.audit
        note = log.note_at(query.size) if query.size else log.checkpoint_now()
        if note is None:
            raise _no_proof(f"no signed checkpoint of size {query.size}")
        if query.seq > note["size"]:
            raise _no_proof(f"event #{query.seq} is not in the tree of size {note['size']}")
        row = log.rows([query.seq])[0]
        return {"seq": query.seq, "size": note["size"],
                "leaf_hash": _b64(audit_tree.leaf_hash(audit.row_body(row))),
                "proof": [_b64(h) for h in log.inclusion_proof(query.seq, note["size"])],
                "checkpoint": note["note"]}

    return reply(m.InclusionProof, await asyncio.to_thread(build))


@endpoint("audit:read", query=m.ConsistencyQuery, answers={200: m.ConsistencyProof},
          refuses=(404,))
async def consistency_proof(request: Request, relay: Relay, who: Principal, *,
                            query: m.ConsistencyQuery) -> Response:
    """Prove the tree of ``from`` events is a prefix of the tree of ``to``."""

    def build() -> dict[str, object]:
        log, size1, size2 = relay.audit, query.from_, query.to
        if size1 > size2 or size2 > log.size():
            raise _no_proof(f"no consistency proof from {size1} to {size2} (the trail has "
                            f"{log.size()} events)")
        return {"size1": size1, "size2": size2,
                "from_root": _b64(log.root(size1)), "to_root": _b64(log.root(size2)),
                "proof": [_b64(h) for h in log.consistency_proof(size1, size2)]}

    return reply(m.ConsistencyProof, await asyncio.to_thread(build))


#: Bundles built at once. Each holds up to ``audit_bundle_max_bytes`` of evidence in
#: memory (and its encoding), so they are built one at a time: the slot is taken
#: before the build, and a request that finds it taken is refused at once (503,
#: audited), never queued.
MAX_BUNDLES_AT_ONCE = 1
_bundles_building = 0


@endpoint("audit:read", path=m.SessionPath, noun="session",
          answers={200: m.AuditBundle}, refuses=(404, 413, 503))
async def session_bundle(request: Request, relay: Relay, who: Principal, *,
                         path: m.SessionPath) -> Response:
    """The session's evidence bundle (``backline-relay audit verify-bundle`` checks it
    offline): its events, recordings, inclusion proofs and the signed checkpoint.
    Built in memory, so refused (413, audited) over ``audit_bundle_max_bytes`` of
    evidence (256 MiB) or ``audit_bundle.MAX_EVENTS`` events, and built one at a
    time: while one is being built, another is refused (503 ``busy``, audited; retry
    in a moment)."""
    global _bundles_building
    from backline.relay import audit_bundle

    sid = path.session_id
    if _bundles_building >= MAX_BUNDLES_AT_ONCE:
        # Aggregated per user: an auditor's script retrying in a loop is one event a
        # minute after the first few.
        relay.record_flood(who.actor, who.actor, "audit.bundle.refused", f"session:{sid}",
                           session=sid, reason="busy", limit=MAX_BUNDLES_AT_ONCE,
                           amount=_bundles_building, address=who.address)
        raise ApiError(503, "busy", "another evidence bundle is being built (they are "
                       "built one at a time: each may hold hundreds of MiB); retry in a "
                       "moment", headers={"retry-after": "5"})
    loop = asyncio.get_running_loop()

    def release() -> None:
        global _bundles_building
        _bundles_building -= 1

    def build() -> tuple[dict[str, Any], str]:
        # The slot is given back when the build's thread is done with the memory, even
        # if the request was cancelled meanwhile (a thread cannot be stopped).
        try:
            doc = audit_bundle.build(relay, sid, relay.config.audit_bundle_max_bytes)
            return doc, json.dumps(doc, ensure_ascii=False)
        finally:
            loop.call_soon_threadsafe(release)

    _bundles_building += 1
    try:
        doc, body = await asyncio.to_thread(build)
    except LookupError as exc:
        raise _no_proof(str(exc)) from None
    except audit_bundle.TooLarge as exc:
        relay.record(who.actor, "audit.bundle.refused", f"session:{sid}", session=sid,
                     reason=exc.reason, limit=exc.limit, amount=exc.amount,
                     address=who.address)
        raise ApiError(413, "too_large", str(exc)) from None
    relay.record(who.actor, "audit.bundle.exported", f"session:{sid}", session=sid,
                 events=len(doc["events"]), blobs=len(doc["blobs"]),
                 size=int(doc["checkpoint"].split("\n")[1]), address=who.address)
    return Response(body, media_type="application/json",
                    headers={"content-disposition":
                             f'attachment; filename="backline-bundle-{sid}.json"'})


ROUTES += [
    Route("/api/v1/audit/checkpoint", audit_checkpoint, methods=["GET"]),
    Route("/api/v1/audit/proof/inclusion", inclusion_proof, methods=["GET"]),
    Route("/api/v1/audit/proof/consistency", consistency_proof, methods=["GET"]),
    Route("/api/v1/sessions/{session_id}/bundle", session_bundle, methods=["GET"]),
]
