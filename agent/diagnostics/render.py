"""Plain-text rendering of a report for ``backline-agent diagnose``.

The customer reads this on their own terminal, so it stays dependency-free (no rich):
findings first, most severe first, then one line per section. Every string was
cleaned of control characters when collected, so nothing here can drive the terminal.
"""

from __future__ import annotations

import datetime as dt
import textwrap

from backline.common.diagnostics.schema import Report

WIDTH = 100
_LABEL = {"critical": "CRITICAL", "warning": "WARNING", "info": "INFO"}


def render_text(report: Report) -> str:
    lines: list[str] = []
    host = report.agent.get("hostname", "?")
    when = dt.datetime.fromtimestamp(report.started_at).isoformat(timespec="seconds")
    lines.append(f"Backline diagnostics for {host} at {when} "
                 f"({report.duration_ms / 1000:.2f} s, schema v{report.schema_version})")
    lines.append("")
    counts = {s: sum(1 for f in report.findings if f.severity == s) for s in _LABEL}
    if report.findings:
        tally = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        lines.append(f"Findings ({tally})")
    else:
        lines.append("Findings: none - no known problem detected")
    for finding in report.findings:
        lines.append(f"  {_LABEL[finding.severity]:<9}{finding.title}  [{finding.rule_id}]")
        indent = " " * 11
        lines.extend(textwrap.wrap(finding.summary, WIDTH, initial_indent=indent,
                                   subsequent_indent=indent))
        lines.extend(textwrap.wrap(finding.explanation, WIDTH, initial_indent=indent,
                                   subsequent_indent=indent))
        if finding.fixes:
            lines.append(f"{indent}Fixes: {', '.join(finding.fixes)}")
        lines.append("")
    if not report.findings:
        lines.append("")
    lines.append("Sections")
    for section in report.sections:
        status = section.status
        text = section.summary if section.status == "ok" else (section.error or section.summary)
        head = f"  {section.title:<31} {status:<12}"
        lines.extend(textwrap.wrap(text or "-", WIDTH, initial_indent=head,
                                   subsequent_indent=" " * len(head)) or [head])
    lines.append("")
    lines.append("Use --json for the full report.")
    return "\n".join(line.rstrip() for line in lines) + "\n"
