"""The diagnostics report format: versioned, JSON, and described field by field.

A report is a list of *sections* (one per collector) plus the *findings* the rules
drew from them. Every field a collector may emit is listed in :data:`FIELDS`; the
rule loader refuses a condition on a field that is not there, and a test checks the
collectors emit nothing that is not there. That catalogue is the contract between
collectors, rules and the console.

Everything in a report came from the customer's machine and is hostile input to
whoever reads it: strings are cleaned of control characters and bounded when they
are collected (:func:`clean`), and :func:`report_from_dict` re-checks the shape of a
report read back from the wire or from a download.

Streaming (the SSH ``diagnostics`` subsystem) sends one JSON object per line:
``{"type": "begin", ...}``, then ``{"type": "section", "section": {...}}`` as each
collector finishes, then ``{"type": "end", "findings": [...], ...}``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1
SCHEMA_ID = f"backline.diagnostics/{SCHEMA_VERSION}"

STATUSES = ("ok", "unavailable", "error")
SEVERITIES = ("critical", "warning", "info")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}

MAX_STRING = 500
MAX_LIST = 64
MAX_EVIDENCE = 10

# Section name -> title, in display order.
SECTIONS: dict[str, str] = {
    "system": "System and OS",
    "uptime": "Uptime",
    "cpu": "CPU and load",
    "memory": "Memory and swap",
    "disk": "Disks and mounts",
    "network": "Network interfaces and routes",
    "dns": "DNS resolution",
    "endpoints": "Endpoint reachability",
    "clock": "Clock offset against the relay",
    "processes": "Top processes",
    "services": "Failed services",
    "logs": "Recent error logs",
    "proxy": "Proxy settings",
    "browsers": "Installed browsers",
}

# Sections that are local, fast and quiet enough for the scheduled health check; a
# rule marked ``cheap`` may only read these.
CHEAP_SECTIONS = frozenset({"system", "uptime", "cpu", "memory", "disk", "clock",
                            "services", "meta"})

_PROCESS_FIELDS = {"pid": "int", "name": "str", "user": "str", "cpu_pct": "number",
                   "mem_pct": "number", "rss_bytes": "int"}

# Every field a section's data may hold. Types: str, int, number, bool, list[str],
# list[object] (whose item fields follow as ``name[*].field``); a trailing ``?`` means
# the value may be null (not known on this machine). ``meta`` is made by the engine.
FIELDS: dict[str, str] = {
    "system.hostname": "str", "system.os": "str", "system.os_release": "str",
    "system.kernel": "str", "system.arch": "str", "system.agent_version": "str",
    "system.python": "str", "system.container": "bool", "system.reboot_required": "bool",
    "system.users": "int",
    "uptime.boot_time": "number", "uptime.uptime_s": "number", "uptime.uptime_days": "number",
    "cpu.logical": "int", "cpu.physical": "int?", "cpu.percent": "number",
    "cpu.iowait_pct": "number?", "cpu.load_1": "number", "cpu.load_5": "number",
    "cpu.load_15": "number", "cpu.load_per_cpu": "number", "cpu.freq_mhz": "number?",
    "memory.total_bytes": "int", "memory.available_bytes": "int", "memory.used_pct": "number",
    "memory.swap_total_bytes": "int", "memory.swap_used_bytes": "int",
    "memory.swap_used_pct": "number", "memory.pressure_some_avg60": "number?",
    "disk.mounts": "list[object]", "disk.mounts[*].device": "str",
    "disk.mounts[*].mountpoint": "str", "disk.mounts[*].fstype": "str",
    "disk.mounts[*].total_bytes": "int", "disk.mounts[*].free_bytes": "int",
    "disk.mounts[*].used_pct": "number", "disk.mounts[*].inodes_used_pct": "number?",
    "disk.mounts[*].read_only": "bool", "disk.mount_count": "int",
    "network.interfaces": "list[object]", "network.interfaces[*].name": "str",
    "network.interfaces[*].is_up": "bool", "network.interfaces[*].is_loopback": "bool",
    "network.interfaces[*].mtu": "int", "network.interfaces[*].speed_mbps": "int",
    "network.interfaces[*].addresses": "list[str]", "network.interfaces[*].rx_errors": "int",
    "network.interfaces[*].tx_errors": "int", "network.interfaces[*].rx_dropped": "int",
    "network.interfaces[*].tx_dropped": "int", "network.interfaces[*].error_pct": "number",
    "network.routes": "list[object]", "network.routes[*].destination": "str",
    "network.routes[*].gateway": "str", "network.routes[*].interface": "str",
    "network.has_default_route": "bool?", "network.default_gateway": "str?",
    "network.route_source": "str", "network.up_count": "int",
    "dns.resolvers": "list[str]", "dns.resolver_count": "int?", "dns.lookups": "list[object]",
    "dns.lookups[*].name": "str", "dns.lookups[*].ok": "bool",
    "dns.lookups[*].addresses": "list[str]", "dns.lookups[*].ms": "number",
    "dns.lookups[*].error": "str?", "dns.lookups[*].error_kind": "str?",
    "dns.lookup_count": "int", "dns.failed_count": "int",
    "endpoints.checks": "list[object]", "endpoints.checks[*].target": "str",
    "endpoints.checks[*].kind": "str", "endpoints.checks[*].host": "str",
    "endpoints.checks[*].port": "int", "endpoints.checks[*].reachable": "bool",
    "endpoints.checks[*].ms": "number?", "endpoints.checks[*].error": "str?",
    "endpoints.checks[*].http_status": "int?", "endpoints.checks[*].tls_verified": "bool?",
    "endpoints.checks[*].tls_error": "str?", "endpoints.checks[*].pinned": "bool?",
    "endpoints.checks[*].cert_not_after": "str?", "endpoints.checks[*].cert_days_left": "number?",
    "endpoints.checks[*].cert_subject": "str?", "endpoints.checks[*].cert_issuer": "str?",
    "endpoints.check_count": "int", "endpoints.unreachable_count": "int",
    "clock.known": "bool", "clock.source": "str", "clock.local_time": "number",
    "clock.relay_time": "number?", "clock.offset_s": "number?", "clock.abs_offset_s": "number?",
    "processes.count": "int", "processes.zombies": "int",
    "processes.top_cpu": "list[object]", "processes.top_memory": "list[object]",
    **{f"processes.top_cpu[*].{k}": v for k, v in _PROCESS_FIELDS.items()},
    **{f"processes.top_memory[*].{k}": v for k, v in _PROCESS_FIELDS.items()},
    "services.available": "bool", "services.manager": "str", "services.failed": "list[object]",
    "services.failed[*].unit": "str", "services.failed[*].load": "str",
    "services.failed[*].active": "str", "services.failed[*].sub": "str",
    "services.failed[*].description": "str", "services.failed_count": "int",
    "logs.source": "str", "logs.entries": "list[object]", "logs.entries[*].time": "str",
    "logs.entries[*].unit": "str", "logs.entries[*].priority": "int?",
    "logs.entries[*].message": "str", "logs.error_count": "int",
    "proxy.configured": "bool", "proxy.proxies": "list[object]",
    "proxy.proxies[*].scheme": "str", "proxy.proxies[*].url": "str", "proxy.no_proxy": "str",
    "browsers.installed": "list[object]", "browsers.installed[*].name": "str",
    "browsers.installed[*].path": "str", "browsers.installed[*].version": "str?",
    "browsers.installed[*].major": "int?", "browsers.count": "int",
    "meta.failed_sections": "list[str]", "meta.failed_count": "int", "meta.section_count": "int",
}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069]")


def clean(value: Any, limit: int = MAX_STRING) -> str:
    """A machine-supplied string made safe to show: no control or bidi characters
    (terminal escapes, line tricks), at most ``limit`` characters."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        text = value if isinstance(value, str) else str(value)
    text = _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text.replace("\t", " "))
    return text if len(text) <= limit else text[: limit - 1] + "\N{HORIZONTAL ELLIPSIS}"


def number(value: float, digits: int = 2) -> float:
    """Round for the report; NaN and infinities (not JSON) become 0."""
    return round(value, digits) if math.isfinite(value) else 0.0


@dataclass
class Section:
    """What one collector found. ``status`` is ok, unavailable (not on this machine,
    or disabled by the customer) or error (it raised or timed out: ``error`` says so)."""

    name: str
    title: str
    status: str
    data: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    error: str | None = None
    duration_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Finding:
    """One rule that matched: what is wrong, how bad, why it matters, what fixes it."""

    rule_id: str
    title: str
    severity: str
    summary: str
    explanation: str
    fixes: list[str] = field(default_factory=list)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Report:
    """A complete diagnostics run; ``thresholds`` are those the findings used, so a
    downloaded report can be re-evaluated and compared on equal terms."""

    agent: dict[str, str]
    started_at: float
    finished_at: float
    sections: list[Section]
    findings: list[Finding] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def duration_ms(self) -> float:
        return round((self.finished_at - self.started_at) * 1000, 1)

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def document(self) -> dict[str, Any]:
        """The tree rule conditions read: each section's data by name, plus ``meta``."""
        doc: dict[str, Any] = {s.name: s.data for s in self.sections if s.status != "error"}
        failed = [s.name for s in self.sections if s.status == "error"]
        doc["meta"] = {"failed_sections": failed, "failed_count": len(failed),
                       "section_count": len(self.sections)}
        return doc

    def as_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA_ID, "schema_version": self.schema_version,
                "agent": self.agent, "started_at": self.started_at,
                "finished_at": self.finished_at, "duration_ms": self.duration_ms,
                "thresholds": self.thresholds,
                "findings": [f.as_dict() for f in self.findings],
                "sections": [s.as_dict() for s in self.sections]}


def field_problems(section: Section) -> list[str]:
    """Fields in a section's data that :data:`FIELDS` does not describe, or that have
    another type: how tests hold collectors to the catalogue."""
    problems: list[str] = []

    def walk(value: Any, path: str) -> None:
        kind = FIELDS.get(path)
        if kind is None:
            problems.append(f"{path}: not in the catalogue")
            return
        if value is None:
            if not kind.endswith("?"):
                problems.append(f"{path}: null but not nullable")
            return
        base = kind.rstrip("?")
        fits = {"str": isinstance(value, str), "bool": isinstance(value, bool),
                "int": isinstance(value, int) and not isinstance(value, bool),
                "number": isinstance(value, int | float) and not isinstance(value, bool),
                "list[str]": isinstance(value, list) and all(isinstance(v, str) for v in value),
                "list[object]": isinstance(value, list)
                and all(isinstance(v, dict) for v in value)}[base]
        if not fits:
            problems.append(f"{path}: {type(value).__name__} is not {kind}")
        elif base == "list[object]":
            for item in value:
                for key, child in item.items():
                    walk(child, f"{path}[*].{key}")

    for key, value in section.data.items():
        walk(value, f"{section.name}.{key}")
    return sorted(set(problems))


def to_json(report: Report, indent: int | None = None) -> str:
    return json.dumps(report.as_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


class ReportError(ValueError):
    """A report that does not follow this schema."""


def report_from_dict(data: Any) -> Report:
    """Read a report back (a download, a stored copy) checking its shape; section data
    is kept as JSON but every string in it re-cleaned, since it crossed a boundary."""
    if not isinstance(data, dict):
        raise ReportError("a report is a JSON object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ReportError(f"unsupported schema_version {data.get('schema_version')!r}; "
                          f"this reader knows {SCHEMA_VERSION}")
    try:
        sections = [_section_from(s) for s in _list(data.get("sections"))]
        findings = [_finding_from(f) for f in _list(data.get("findings"))]
        agent = {clean(k, 64): clean(v, 256) for k, v in dict(data.get("agent") or {}).items()}
        thresholds = {clean(k, 64): float(v) for k, v in
                      dict(data.get("thresholds") or {}).items()
                      if isinstance(v, int | float) and not isinstance(v, bool)}
        return Report(agent=agent, started_at=float(data["started_at"]),
                      finished_at=float(data["finished_at"]), sections=sections,
                      findings=findings, thresholds=thresholds)
    except (KeyError, TypeError, ValueError) as exc:
        raise ReportError(f"malformed report: {exc}") from exc


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ReportError("expected a list")
    return value[:256]


def _section_from(raw: Any) -> Section:
    if not isinstance(raw, dict) or raw.get("status") not in STATUSES:
        raise ReportError("a section is an object with a known status")
    data = raw.get("data") or {}
    if not isinstance(data, dict):
        raise ReportError("section data is an object")
    error = raw.get("error")
    return Section(name=clean(raw["name"], 64), title=clean(raw.get("title", ""), 128),
                   status=raw["status"], data=_scrub(data),
                   summary=clean(raw.get("summary", "")),
                   error=None if error is None else clean(error),
                   duration_ms=float(raw.get("duration_ms") or 0))


def _finding_from(raw: Any) -> Finding:
    if not isinstance(raw, dict) or raw.get("severity") not in SEVERITIES:
        raise ReportError("a finding is an object with a known severity")
    return Finding(rule_id=clean(raw["rule_id"], 64), title=clean(raw.get("title", ""), 200),
                   severity=raw["severity"], summary=clean(raw.get("summary", "")),
                   explanation=clean(raw.get("explanation", ""), 2000),
                   fixes=[clean(x, 64) for x in _list(raw.get("fixes", []))],
                   evidence=[_scrub(e) for e in _list(raw.get("evidence", []))
                             if isinstance(e, dict)][:MAX_EVIDENCE],
                   sections=[clean(x, 64) for x in _list(raw.get("sections", []))])


def _scrub(value: Any, depth: int = 0) -> Any:
    """Re-clean decoded JSON: strings bounded and stripped, containers bounded."""
    if depth > 8:
        return None
    if isinstance(value, str):
        return clean(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, list):
        return [_scrub(v, depth + 1) for v in value[:MAX_LIST]]
    if isinstance(value, dict):
        return {clean(k, 64): _scrub(v, depth + 1) for k, v in list(value.items())[:MAX_LIST]}
    return clean(value)


_RANK = {name: i for i, name in enumerate(SECTIONS)}


def report_from_lines(lines: list[str]) -> Report:
    """Assemble a streamed run back into a report (the relay or console side; no psutil needed), its
    sections in display order. The lines are the agent's word: anything that is not
    a run raises ``ReportError`` (or ``ValueError`` for what is not JSON)."""
    begin: dict[str, Any] = {}
    end: dict[str, Any] = {}
    sections: list[Any] = []
    for line in lines:
        msg = json.loads(line)
        if not isinstance(msg, dict):
            raise ReportError("a diagnostics line is not a JSON object")
        if msg.get("type") == "begin":
            begin = msg
        elif msg.get("type") == "section":
            sections.append(msg["section"])
        elif msg.get("type") == "end":
            end = msg
    return report_from_dict({
        "schema_version": begin.get("schema_version"), "agent": begin.get("agent"),
        "started_at": begin.get("started_at"), "finished_at": end.get("finished_at"),
        "thresholds": begin.get("thresholds"),
        "sections": sorted(sections, key=lambda x: _RANK.get(
            x.get("name") if isinstance(x, dict) else None, len(_RANK))),
        "findings": end.get("findings", [])})
