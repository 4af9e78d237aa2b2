"""Comparing two reports of the same machine: what appeared, what cleared, what moved.

The console shows two reports side by side; this gives it the differences to
highlight, computed the same way wherever it runs (pure data, no psutil). Values
are compared leaf by leaf under stable keys: list items are keyed by their natural
name (mount point, interface, unit, target...) rather than by position, so a new
mount does not make every later one look changed.
"""

from __future__ import annotations

from typing import Any

from backline.common.diagnostics.schema import Report

# The field that names an item, per list; lists not named here are keyed by position.
ITEM_KEYS = {"mounts": "mountpoint", "interfaces": "name", "routes": "destination",
             "lookups": "name", "checks": "target", "failed": "unit", "installed": "path",
             "proxies": "scheme", "top_cpu": "pid", "top_memory": "pid"}
MAX_CHANGES = 500
# Values that change on every run and would drown the real differences.
VOLATILE = ("uptime.", "clock.local_time", "clock.relay_time", ".ms", ".duration_ms",
            "cpu.percent", "processes.", "logs.entries", "boot_time")


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"disk.mounts[/].used_pct": 51.0, ...}`` for every scalar in a section tree."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        name = ITEM_KEYS.get(prefix.rsplit(".", 1)[-1])
        for index, item in enumerate(value):
            label = item.get(name, index) if isinstance(item, dict) and name else index
            out.update(flatten(item, f"{prefix}[{label}]"))
    else:
        out[prefix] = value
    return out


def _volatile(path: str) -> bool:
    return any(marker in path if marker.startswith(".") else path.startswith(marker)
               for marker in VOLATILE)


def compare(before: Report, after: Report, include_volatile: bool = False) -> dict[str, Any]:
    """Findings added/resolved/kept (by rule id) and changed values (by path)."""
    old_ids = {f.rule_id: f for f in before.findings}
    new_ids = {f.rule_id: f for f in after.findings}
    old = {k: v for s in before.sections for k, v in flatten(s.data, s.name).items()}
    new = {k: v for s in after.sections for k, v in flatten(s.data, s.name).items()}
    changes = []
    for path in sorted(old.keys() | new.keys()):
        if not include_volatile and _volatile(path):
            continue
        a, b = old.get(path), new.get(path)
        if a != b or (path in old) != (path in new):
            changes.append({"path": path, "before": a, "after": b})
            if len(changes) >= MAX_CHANGES:
                break
    statuses = {s.name: s.status for s in before.sections}
    return {
        "findings": {
            "added": [f.as_dict() for rid, f in new_ids.items() if rid not in old_ids],
            "resolved": [f.as_dict() for rid, f in old_ids.items() if rid not in new_ids],
            "unchanged": sorted(old_ids.keys() & new_ids.keys()),
        },
        "sections": {s.name: {"before": statuses.get(s.name), "after": s.status}
                     for s in after.sections if statuses.get(s.name) != s.status},
        "changes": changes,
        "truncated": len(changes) >= MAX_CHANGES,
    }
