"""A management report as CSV: one row per number, with the size of what makes it up.

Shared by the API's CSV export and the scheduled delivery (which attaches it), so it
lives beside the computation, not in the API module the relay's state would import.
"""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from backline.relay.reports import compute


def to_csv(full: dict[str, Any]) -> str:
    """One row per number: section, name, bucket, value, and how many incidents, sessions
    and events make it up (the drill-down API lists them)."""
    full = compute.summary(full)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["section", "name", "bucket_start_utc", "value", "incidents", "sessions",
                "events"])

    def row(section: str, name: str, bucket: str, m: dict[str, Any]) -> None:
        value = "" if m["value"] is None else m["value"]
        w.writerow([section, name, bucket, value, m["incidents"], m["sessions"],
                    m["events"]])

    for name, m in full["metrics"].items():
        row("metric", name, "", m)
    for t in full["technicians"]:
        row("technician", _cell(t["technician"]), "", t)
    for f in full["top_findings"]:
        row("finding", _cell(f["finding"]), "", f)
    for b in full["trend"]:
        day = time.strftime("%Y-%m-%d", time.gmtime(b["start"]))
        for name, m in b.items():
            if isinstance(m, dict):
                row("trend", name, day, m)
    return out.getvalue()


def _cell(text: str) -> str:
    """A name as a CSV cell a spreadsheet will not run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
