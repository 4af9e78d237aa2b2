"""``diagnostics``: the request (which sections), and the report kept when it ends.

The request is ``{"sections": [...]}`` (all sections when absent), checked by the
contract both sides read (:mod:`backline.common.diagnostics.request`). A finished run
of a managed session is kept as a report: the raw JSON-lines stream exactly as the
agent sent it (a blob whose SHA-256 the audit trail records), assembled again when
asked. The report is the customer's machine talking: hostile input, checked again by
``report_from_lines`` and escaped by the console. Attended sessions have no enrolled
agent to file it under: the console keeps the report it streamed, and the audit trail
keeps the hash of what was sent.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any, Protocol

import sqlalchemy as sa

from backline.common.diagnostics.request import DiagnosticsRequest, RequestError, parse_sections
from backline.common.diagnostics.schema import SEVERITIES, ReportError, report_from_lines
from backline.relay.blobs import BlobStore
from backline.relay.capabilities.base import ChannelSpec, KeptContext, RequestRefused, Transport
from backline.relay.db import writing
from backline.relay.schema import diagnostics_reports

#: The largest diagnostics stream kept as a report; a real one is tens of KiB.
MAX_REPORT_BYTES = 8 * 1024 * 1024


class Keeping(Protocol):
    """What keeping a report uses of the relay."""

    engine: sa.Engine
    blobs: BlobStore

    def record(self, actor: str, action: str, target: str = "", **details: Any) -> None: ...


def build_request(asked: Mapping[str, Any]) -> bytes | None:
    unknown = [k for k, v in asked.items() if k != "sections" and v is not None]
    if unknown:
        raise RequestRefused("bad_field", f"diagnostics takes no {unknown[0]!r}")
    try:
        return DiagnosticsRequest(parse_sections(asked.get("sections"))).encode()
    except RequestError as exc:
        raise RequestRefused("bad_request", str(exc)) from None


def keep(relay: Keeping, ctx: KeptContext, raw: bytes) -> str | None:
    """Store a finished diagnostics run of a managed session; the report's id."""
    if ctx.mode != "managed":
        return None
    row = store(relay, ctx.principal, ctx.session_id, ctx.technician, ctx.actor, raw)
    return row["id"] if row else None


def store(relay: Keeping, agent_id: str, session_id: str, technician: str, actor: str,
          raw: bytes) -> dict[str, Any] | None:
    """Keep one finished diagnostics stream; ``None`` if it is not a whole report (the
    refusal is audited: an agent that sends something else is worth a look)."""
    if len(raw) > MAX_REPORT_BYTES:
        relay.record(actor, "diagnostics.report.refused", f"agent:{agent_id}",
                     session=session_id, reason="too_large", bytes=len(raw))
        return None
    try:
        report = report_from_lines(raw.decode("utf-8").splitlines())
    except (ReportError, ValueError, KeyError, TypeError) as exc:
        relay.record(actor, "diagnostics.report.refused", f"agent:{agent_id}",
                     session=session_id, reason="malformed", error=str(exc)[:200])
        return None
    digest = relay.blobs.put(raw)
    severities = {f.severity for f in report.findings}
    worst = next((s for s in SEVERITIES if s in severities), "none")
    row = {"id": "rp_" + secrets.token_urlsafe(12), "agent_id": agent_id,
           "session_id": session_id, "technician": technician[:64],
           "created_at": time.time(), "sha256": digest, "size": len(raw),
           "findings": len(report.findings), "worst": worst}
    with writing(relay.engine) as conn:
        conn.execute(diagnostics_reports.insert().values(**row))
    relay.record(actor, "diagnostics.report", f"agent:{agent_id}",
                 report=row["id"], session=session_id, sha256=digest, findings=row["findings"],
                 worst=worst)
    return row


def assemble(raw: bytes) -> dict[str, Any]:
    """The report, assembled again from its kept stream (``ValueError`` if it is not
    one). The caller checks the bytes against the audit trail first
    (relay/api/evidence.py): the stream is served only when the trail vouches for it."""
    return report_from_lines(raw.decode("utf-8").splitlines()).as_dict()


SPEC = ChannelSpec("diagnostics", Transport.LINES, build_request, keep=keep,
                   summary="what is wrong with this machine (JSON lines, streamed)")
