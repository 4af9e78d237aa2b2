"""Diagnostics reports the relay received through sessions, kept for later.

The relay keeps the raw JSON-lines stream exactly as the agent sent it (a blob
whose SHA-256 the audit trail records) and assembles the report when asked. The
report is the customer's machine talking: hostile input, checked again by
``report_from_lines`` and escaped by the console.
"""

from __future__ import annotations

import secrets
import time
from typing import TYPE_CHECKING, Any

from backline.common.diagnostics.schema import SEVERITIES, ReportError, report_from_lines
from backline.relay.db import writing
from backline.relay.schema import diagnostics_reports

if TYPE_CHECKING:
    from backline.relay.state import Relay

#: The largest diagnostics stream kept as a report; a real one is tens of KiB.
MAX_REPORT_BYTES = 8 * 1024 * 1024


def store(relay: Relay, agent_id: str, session_id: str, technician: str, actor: str,
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


def load(relay: Relay, row: dict[str, Any]) -> dict[str, Any]:
    """The stored report, assembled again from the kept stream (checked against its hash)."""
    raw = relay.blobs.get(row["sha256"])
    return report_from_lines(raw.decode("utf-8").splitlines()).as_dict()
