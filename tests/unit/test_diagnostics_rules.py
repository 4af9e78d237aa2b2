"""The knowledge base: every shipped rule loads, is unique, reads real report fields,
fires on a crafted report that shows its problem and stays quiet on a healthy one;
the condition language refuses what it cannot check."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from backline.agent.diagnostics import rules
from backline.agent.diagnostics.config import DEFAULT_THRESHOLDS
from backline.agent.diagnostics.rules import RuleError, evaluate, load_rules, parse_file
from backline.common.diagnostics.schema import (
    FIELDS,
    SECTIONS,
    Report,
    Section,
    field_problems,
    report_from_dict,
    to_json,
)

PROC = {"pid": 42, "name": "editor", "user": "ann", "cpu_pct": 2.0, "mem_pct": 3.0,
        "rss_bytes": 100_000_000}

HEALTHY: dict[str, dict[str, Any]] = {
    "system": {"hostname": "pc-17", "os": "Linux", "os_release": "Debian GNU/Linux 12",
               "kernel": "6.1.0", "arch": "x86_64", "agent_version": "0.1.0",
               "python": "3.11.7", "container": False, "reboot_required": False, "users": 1},
    "uptime": {"boot_time": 1_700_000_000.0, "uptime_s": 86400.0, "uptime_days": 1.0},
    "cpu": {"logical": 4, "physical": 2, "percent": 12.0, "iowait_pct": 0.5, "load_1": 0.4,
            "load_5": 0.5, "load_15": 0.6, "load_per_cpu": 0.12, "freq_mhz": 2400.0},
    "memory": {"total_bytes": 8 << 30, "available_bytes": 4 << 30, "used_pct": 50.0,
               "swap_total_bytes": 2 << 30, "swap_used_bytes": 0, "swap_used_pct": 0.0,
               "pressure_some_avg60": 0.0},
    "disk": {"mounts": [{"device": "/dev/sda1", "mountpoint": "/", "fstype": "ext4",
                         "total_bytes": 100 << 30, "free_bytes": 50 << 30, "used_pct": 50.0,
                         "inodes_used_pct": 10.0, "read_only": False},
                        {"device": "/dev/sda2", "mountpoint": "/home", "fstype": "ext4",
                         "total_bytes": 200 << 30, "free_bytes": 150 << 30, "used_pct": 25.0,
                         "inodes_used_pct": 2.0, "read_only": False}],
             "mount_count": 2},
    "network": {"interfaces": [
        {"name": "lo", "is_up": True, "is_loopback": True, "mtu": 65536, "speed_mbps": 0,
         "addresses": ["127.0.0.1"], "rx_errors": 0, "tx_errors": 0, "rx_dropped": 0,
         "tx_dropped": 0, "error_pct": 0.0},
        {"name": "eth0", "is_up": True, "is_loopback": False, "mtu": 1500, "speed_mbps": 1000,
         "addresses": ["192.168.1.20"], "rx_errors": 0, "tx_errors": 0, "rx_dropped": 1,
         "tx_dropped": 0, "error_pct": 0.001}],
        "routes": [{"destination": "0.0.0.0/0", "gateway": "192.168.1.1", "interface": "eth0"}],
        "has_default_route": True, "default_gateway": "192.168.1.1", "route_source": "proc",
        "up_count": 1},
    "dns": {"resolvers": ["192.168.1.1"], "resolver_count": 1, "lookups": [
        {"name": "relay.example.com", "ok": True, "addresses": ["203.0.113.5"], "ms": 12.0,
         "error": None, "error_kind": None}], "lookup_count": 1, "failed_count": 0},
    "endpoints": {"checks": [
        {"target": "https://relay.example.com/healthz", "kind": "https",
         "host": "relay.example.com", "port": 443, "reachable": True, "ms": 31.0, "error": None,
         "http_status": 200, "tls_verified": None, "tls_error": None, "pinned": True,
         "cert_not_after": "2030-01-01T00:00:00+00:00", "cert_days_left": 900.0,
         "cert_subject": "CN=relay.example.com", "cert_issuer": "CN=relay.example.com"},
        {"target": "mail.example.com:993", "kind": "tcp", "host": "mail.example.com",
         "port": 993, "reachable": True, "ms": 8.0, "error": None, "http_status": None,
         "tls_verified": None, "tls_error": None, "pinned": None, "cert_not_after": None,
         "cert_days_left": None, "cert_subject": None, "cert_issuer": None}],
        "check_count": 2, "unreachable_count": 0},
    "clock": {"known": True, "source": "control", "local_time": 1_700_086_400.0,
              "relay_time": 1_700_086_400.2, "offset_s": 0.2, "abs_offset_s": 0.2},
    "processes": {"count": 180, "zombies": 0, "top_cpu": [PROC], "top_memory": [PROC]},
    "services": {"available": True, "manager": "systemd", "failed": [], "failed_count": 0},
    "logs": {"source": "journald", "entries": [], "error_count": 0},
    "proxy": {"configured": False, "proxies": [], "no_proxy": ""},
    "browsers": {"installed": [{"name": "firefox", "path": "/usr/bin/firefox",
                                "version": "128.0.3", "major": 128}], "count": 1},
}


def report_of(data: dict[str, dict[str, Any]], errors: tuple[str, ...] = ()) -> Report:
    sections = [Section(name, SECTIONS[name], "error" if name in errors else "ok",
                        {} if name in errors else data[name],
                        error="boom" if name in errors else None) for name in SECTIONS]
    return Report(agent={"hostname": "pc-17"}, started_at=1.0, finished_at=2.0,
                  sections=sections, thresholds=dict(DEFAULT_THRESHOLDS))


def healthy() -> dict[str, dict[str, Any]]:
    return copy.deepcopy(HEALTHY)


def ids(report: Report, **thresholds: float) -> set[str]:
    return {f.rule_id for f in evaluate(report, thresholds)}


def mutate(change: Callable[[dict[str, dict[str, Any]]], None]) -> Report:
    data = healthy()
    change(data)
    return report_of(data)


def _set(path: str, value: Any) -> Callable[[dict[str, dict[str, Any]]], None]:
    """A change at ``section.key`` or ``section.list.0.key``."""

    def change(data: dict[str, dict[str, Any]]) -> None:
        node: Any = data
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        node[parts[-1]] = value

    return change


def _many(*changes: Callable[[dict[str, dict[str, Any]]], None]
          ) -> Callable[[dict[str, dict[str, Any]]], None]:
    def change(data: dict[str, dict[str, Any]]) -> None:
        for c in changes:
            c(data)

    return change


def _failed_lookup(kind: str) -> Callable[[dict[str, dict[str, Any]]], None]:
    return _set("dns.lookups", [{"name": "intranet.corp", "ok": False, "addresses": [],
                                 "ms": 1500.0, "error": "no answer", "error_kind": kind}])


_UNREACHABLE = _many(_set("endpoints.checks.1.reachable", False),
                     _set("endpoints.checks.1.error", "connection refused"))

# rule id -> a change of the healthy report that shows exactly that problem.
CASES: dict[str, Callable[[dict[str, dict[str, Any]]], None]] = {
    "disk-almost-full": _set("disk.mounts.1.used_pct", 93.5),
    "disk-full": _set("disk.mounts.0.used_pct", 99.2),
    "inodes-almost-exhausted": _set("disk.mounts.1.inodes_used_pct", 97.0),
    "root-filesystem-read-only": _set("disk.mounts.0.read_only", True),
    "memory-pressure": _set("memory.pressure_some_avg60", 25.0),
    "swap-heavy": _many(_set("memory.swap_used_pct", 91.0),
                        _set("memory.swap_used_bytes", 1 << 30)),
    "high-load": _many(_set("cpu.load_5", 12.0), _set("cpu.load_per_cpu", 3.0)),
    "cpu-saturated": _set("cpu.percent", 99.0),
    "high-io-wait": _set("cpu.iowait_pct", 45.0),
    "process-memory-hog": _set("processes.top_memory.0.mem_pct", 71.0),
    "zombie-processes": _set("processes.zombies", 150),
    "no-network-interface": _many(_set("network.interfaces.1.is_up", False),
                                  _set("network.up_count", 0)),
    "no-default-route": _many(_set("network.has_default_route", False),
                              _set("network.routes", [])),
    "interface-errors": _set("network.interfaces.1.error_pct", 4.5),
    "no-dns-servers": _many(_set("dns.resolvers", []), _set("dns.resolver_count", 0)),
    "dns-lookup-failed": _failed_lookup("not_found"),
    "dns-resolver-failing": _failed_lookup("timeout"),
    "dns-slow": _set("dns.lookups.0.ms", 2500.0),
    "endpoint-unreachable": _UNREACHABLE,
    "endpoint-server-error": _set("endpoints.checks.0.http_status", 503),
    "tls-certificate-expiring": _set("endpoints.checks.0.cert_days_left", 6.5),
    "tls-certificate-expired": _set("endpoints.checks.0.cert_days_left", -3.0),
    "tls-certificate-untrusted": _many(_set("endpoints.checks.0.tls_verified", False),
                                       _set("endpoints.checks.0.tls_error",
                                            "self-signed certificate")),
    "relay-certificate-mismatch": _set("endpoints.checks.0.pinned", False),
    "proxy-may-block": _many(_UNREACHABLE, _set("proxy.configured", True), _set(
        "proxy.proxies", [{"scheme": "https", "url": "http://proxy.corp:3128"}])),
    "proxy-configured": _many(_set("proxy.configured", True), _set(
        "proxy.proxies", [{"scheme": "https", "url": "http://proxy.corp:3128"}])),
    "clock-skew": _many(_set("clock.offset_s", -95.0), _set("clock.abs_offset_s", 95.0)),
    "clock-skew-severe": _many(_set("clock.offset_s", 3600.0),
                               _set("clock.abs_offset_s", 3600.0)),
    "failed-services": _many(_set("services.failed", [
        {"unit": "cups.service", "load": "loaded", "active": "failed", "sub": "failed",
         "description": "CUPS Scheduler"}]), _set("services.failed_count", 1)),
    "reboot-required": _set("system.reboot_required", True),
    "long-uptime": _set("uptime.uptime_days", 200.0),
    "many-log-errors": _set("logs.error_count", 50),
    "no-browser": _many(_set("browsers.installed", []), _set("browsers.count", 0)),
    "diagnostics-incomplete": lambda data: None,  # made by errors=... below
}

# Problems that legitimately bring a companion finding along.
COMPANIONS = {"proxy-may-block": {"endpoint-unreachable", "proxy-configured"},
              "endpoint-unreachable": set(), "dns-resolver-failing": {"dns-lookup-failed"}}


def test_shipped_rules_load_unique_and_enough() -> None:
    shipped = load_rules()
    assert len(shipped) >= 15
    assert len({r.id for r in shipped}) == len(shipped)
    for rule in shipped:
        assert rule.explanation and rule.title and rule.severity in ("info", "warning",
                                                                     "critical")
        assert rule.sections <= set(SECTIONS) | {"meta"}


def test_every_condition_path_is_a_report_field() -> None:
    def paths(cond: rules.Condition) -> list[str]:
        if isinstance(cond, rules.Leaf):
            return [cond.path]
        if isinstance(cond, rules.Quantified):
            return [cond.path, *paths(cond.where)]
        if isinstance(cond, rules.Combined):
            return [p for c in cond.children for p in paths(c)]
        if isinstance(cond, rules.Negated):
            return paths(cond.child)
        raise AssertionError(cond)

    for rule in load_rules():
        for path in paths(rule.condition):
            assert path in FIELDS, f"{rule.id}: {path}"


def test_every_shipped_rule_has_a_case() -> None:
    assert {r.id for r in load_rules()} == set(CASES)


def test_healthy_report_is_well_formed_and_has_no_findings() -> None:
    report = report_of(healthy())
    for section in report.sections:
        assert field_problems(section) == [], section.name
    assert evaluate(report) == []


@pytest.mark.parametrize("rule_id", sorted(CASES))
def test_rule_fires_on_its_problem(rule_id: str) -> None:
    if rule_id == "diagnostics-incomplete":
        report = report_of(healthy(), errors=("logs",))
    else:
        report = mutate(CASES[rule_id])
    for section in report.sections:
        assert field_problems(section) == [], (rule_id, section.name)
    found = ids(report)
    assert rule_id in found
    assert found - {rule_id} <= COMPANIONS.get(rule_id, set()), found
    finding = next(f for f in evaluate(report) if f.rule_id == rule_id)
    assert finding.summary and "{" not in finding.summary
    assert finding.explanation


def test_findings_are_sorted_by_severity() -> None:
    report = mutate(_many(CASES["long-uptime"], CASES["disk-full"], CASES["high-load"]))
    assert [f.severity for f in evaluate(report)] == ["critical", "warning", "info"]


def test_summary_names_the_item_and_counts_the_rest() -> None:
    report = mutate(_many(_set("disk.mounts.0.used_pct", 91.0),
                          _set("disk.mounts.1.used_pct", 92.5)))
    finding = next(f for f in evaluate(report) if f.rule_id == "disk-almost-full")
    assert finding.summary == "/ is 91% full (/dev/sda1) (and 1 more)"
    assert [e["mountpoint"] for e in finding.evidence] == ["/", "/home"]


def test_thresholds_come_from_the_report_or_the_caller() -> None:
    report = report_of(healthy())
    assert "disk-almost-full" in ids(report, disk_used_pct=40)
    report.thresholds["disk_used_pct"] = 20
    assert "disk-almost-full" in ids(report)
    assert "disk-almost-full" not in ids(report, disk_used_pct=95)


def test_rule_about_a_missing_section_is_not_judged() -> None:
    # "not" over a failed section must not turn missing data into a finding.
    text = """
[[rule]]
id = "no-route-known"
title = "t"
severity = "warning"
explanation = "e"
when = { not = { path = "network.has_default_route", op = "==", value = true } }
"""
    rule_set = parse_file(text, "t.toml")
    assert evaluate(report_of(healthy(), errors=("network",)), rules=rule_set) == []
    data = healthy()
    data["network"]["has_default_route"] = False
    assert [f.rule_id for f in evaluate(report_of(data), rules=rule_set)] == ["no-route-known"]


def test_unknown_values_never_match() -> None:
    data = healthy()
    data["clock"].update(known=False, offset_s=None, abs_offset_s=None, relay_time=None)
    assert evaluate(report_of(data)) == []


def test_bools_are_not_numbers() -> None:
    assert not rules.compare("==", True, 1)
    assert not rules.compare(">=", True, 0)
    assert rules.compare("==", 0, 0.0)
    assert not rules.compare("!=", "x", 1)
    assert rules.compare("in", "timeout", ["timeout", "temporary"])
    assert rules.compare("contains", ["a", "b"], "b")
    assert not rules.compare("<", None, 5)


def test_every_and_some_bind_one_item() -> None:
    text = """
[[rule]]
id = "all-up"
title = "t"
severity = "info"
explanation = "e"
message = "{name}"
when = { every = "network.interfaces", where = { path = "is_up", op = "==", value = true } }

[[rule]]
id = "same-mount"
title = "t"
severity = "info"
explanation = "e"
when = { some = "disk.mounts", where = { all = [
    { path = "mountpoint", op = "==", value = "/home" },
    { path = "used_pct", op = ">=", value = 50 },
] } }
"""
    rule_set = parse_file(text, "t.toml")
    # "/" is 50% used and "/home" is 25%: no single mount is both /home and >= 50%.
    assert {f.rule_id for f in evaluate(report_of(healthy()), rules=rule_set)} == {"all-up"}
    data = healthy()
    data["network"]["interfaces"][1]["is_up"] = False
    data["disk"]["mounts"][1]["used_pct"] = 60.0
    assert {f.rule_id for f in evaluate(report_of(data), rules=rule_set)} == {"same-mount"}


def _rule(when: str, extra: str = "") -> str:
    return f"""
[[rule]]
id = "some-rule"
title = "A title"
severity = "warning"
explanation = "Why."
{extra}
when = {when}
"""


@pytest.mark.parametrize(("when", "extra", "complaint"), [
    ('{ path = "disk.nope", op = ">", value = 1 }', "", "not a report field"),
    ('{ path = "memory.used_pct", op = "=~", value = 1 }', "", "op"),
    ('{ path = "memory.used_pct", op = ">", value = "lots" }', "", "compares numbers"),
    ('{ path = "system.os", op = ">", value = 1 }', "", "compares numbers"),
    ('{ path = "system.container", op = "==", value = 1 }', "", "cannot equal"),
    ('{ path = "memory.used_pct", op = ">", value = "${thresholds.nope}" }', "", "threshold"),
    ('{ path = "memory.used_pct", op = ">", value = "${__import__}" }', "", "threshold"),
    ('{ path = "memory.used_pct", op = "exists", value = 1 }', "", "takes no value"),
    ('{ path = "memory.used_pct", op = ">" }', "", "needs a value"),
    ('{ path = "memory.used_pct", op = ">", value = 1, extra = 2 }', "", "unknown keys"),
    ('{ all = [] }', "", "non-empty"),
    ('{ all = [{ path = "cpu.percent", op = ">", value = 1 }], any = [] }', "", "stand alone"),
    ('{ some = "memory.used_pct", where = { path = "x", op = "exists" } }', "", "list"),
    ('{ some = "disk.mounts", where = { path = "nope", op = "exists" } }', "", "report field"),
    ('{ eval = "1" }', "", "unknown condition"),
    ('{ path = "disk.mounts[0].x", op = "exists" }', "", "bad path"),
    ('{ path = "processes.count", op = ">", value = 1 }', "cheap = true", "cheap rule"),
    ('{ path = "memory.used_pct", op = ">", value = 1 }', 'message = "{nope}"', "placeholder"),
    ('{ path = "memory.used_pct", op = ">", value = 1 }', 'fixes = ["Bad Id"]', "fix ids"),
    ('{ path = "memory.used_pct", op = ">", value = 1 }', 'colour = "red"', "unknown keys"),
])
def test_bad_rules_are_refused_with_a_clear_error(when: str, extra: str,
                                                  complaint: str) -> None:
    with pytest.raises(RuleError, match=r"t\.toml: rule 'some-rule'") as caught:
        parse_file(_rule(when, extra), "t.toml")
    assert complaint in str(caught.value)


def test_rule_file_shape_errors(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="severity"):
        parse_file(_rule('{ path = "cpu.percent", op = ">", value = 1 }').replace(
            '"warning"', '"bad"'), "t.toml")
    with pytest.raises(RuleError, match="only"):
        parse_file("[other]\nx = 1\n", "t.toml")
    with pytest.raises(RuleError, match=r"t\.toml"):
        parse_file("[[rule]\n", "t.toml")
    one = _rule('{ path = "cpu.percent", op = ">", value = 1 }')
    (tmp_path / "a.toml").write_text(one)
    (tmp_path / "b.toml").write_text(one)
    with pytest.raises(RuleError, match="defined twice"):
        load_rules(tmp_path.glob("*.toml"))


def test_report_round_trips_through_json_and_is_rescrubbed() -> None:
    import json

    report = mutate(CASES["disk-full"])
    report.findings = evaluate(report)
    back = report_from_dict(json.loads(to_json(report)))
    assert [f.rule_id for f in back.findings] == ["disk-full"]
    assert back.section("disk") is not None
    assert evaluate(back) == report.findings
    hostile = json.loads(to_json(report))
    hostile["sections"][0]["data"]["hostname"] = "\x1b[2J<script>" + "x" * 10_000
    back = report_from_dict(hostile)
    name = back.sections[0].data["hostname"]
    assert "\x1b" not in name and len(name) <= 500
    with pytest.raises(ValueError, match="schema_version"):
        report_from_dict({**hostile, "schema_version": 99})


def test_compare_two_reports() -> None:
    from backline.agent.diagnostics.compare import compare

    before = report_of(healthy())
    before.findings = evaluate(before)
    after = mutate(_many(CASES["disk-full"], _set("uptime.uptime_days", 2.0)))
    after.findings = evaluate(after)
    diff = compare(before, after)
    assert [f["rule_id"] for f in diff["findings"]["added"]] == ["disk-full"]
    assert diff["findings"]["resolved"] == []
    assert diff["changes"] == [{"path": "disk.mounts[/].used_pct", "before": 50.0,
                                "after": 99.2}]
    back = compare(after, before)
    assert [f["rule_id"] for f in back["findings"]["resolved"]] == ["disk-full"]
    assert any(c["path"] == "uptime.uptime_days" for c in
               compare(before, after, include_volatile=True)["changes"])


def test_docs_list_every_rule_and_threshold() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "diagnostics.md").read_text()
    for rule in load_rules():
        assert f"| `{rule.id}` | {rule.severity} |" in docs, rule.id
    for name in DEFAULT_THRESHOLDS:
        assert f"| `{name}` |" in docs, name


def test_docs_show_each_rules_fixes() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "diagnostics.md").read_text()
    for rule in load_rules():
        fixes = ", ".join(f"`{f}`" for f in rule.fixes) or "—"
        row = next(line for line in docs.splitlines() if line.startswith(f"| `{rule.id}` |"))
        assert row.endswith(f"| {fixes} |"), f"docs/diagnostics.md, {rule.id}: {row}"
