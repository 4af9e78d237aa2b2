"""The audit-event catalogue: every action recorded in relay/ is declared, the document
is generated from it and committed up to date, and the record path's check catches
unknown actions, undeclared, missing and mistyped fields."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest

from backline.relay import audit_events
from backline.relay.audit_events import CATALOGUE, FLOOD_SUMMARY, UncataloguedEvent, checked
from backline.relay.audit_floods import FloodAggregator

ROOT = Path(__file__).resolve().parents[2]
RELAY = ROOT / "relay"
ACTION = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+")
#: Callees whose arguments name an action, and the index of the action argument.
RECORDERS = {"record": 1, "record_soon": 1, "_record": 1, "_append": 1, "record_flood": 2,
             "_refuse": 7, "first_frame": 3, "_audit_silence": 2}


def _callee(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")


def _assigned_to_action(target: ast.expr, value: ast.expr | None) -> list[ast.expr]:
    """What ``action = ...`` or ``err.action = ...`` (also inside ``a, b = x, y``) gets."""
    if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
        return [x for t, v in zip(target.elts, value.elts, strict=False)
                for x in _assigned_to_action(t, v)]
    named = (isinstance(target, ast.Name) and target.id == "action") or (
        isinstance(target, ast.Attribute) and target.attr == "action")
    return [value] if named and value is not None else []


def _strings(node: ast.AST | None) -> list[ast.expr]:
    """The expressions an action argument can be: the value, or both arms of an ``x if
    c else y`` (nested)."""
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return [node] if isinstance(node, ast.Constant | ast.JoinedStr) else []


def recorded_actions() -> tuple[dict[str, list[str]], list[str]]:
    """Every literal action recorded in relay/ (where), and f-string actions (where)."""
    found: dict[str, list[str]] = {}
    fstrings: list[str] = []

    def note(expr: ast.expr, where: str, strict: bool) -> None:
        if isinstance(expr, ast.JoinedStr):
            fstrings.append(where)
        elif isinstance(expr.value, str) and (strict or ACTION.fullmatch(expr.value)):
            found.setdefault(expr.value, []).append(where)

    for path in sorted(RELAY.rglob("*.py")):
        if path.name == "audit_events.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Call):
                name = _callee(node)
                if name in RECORDERS:
                    index = RECORDERS[name]
                    if name == "record" and _is_flood_aggregator(node):
                        index = 2
                    if len(node.args) > index:
                        for e in _strings(node.args[index]):
                            note(e, where, True)
                for kw in node.keywords:  # action=..., refused_action=...
                    if kw.arg is not None and kw.arg.endswith("action"):
                        for e in _strings(kw.value):
                            note(e, where, True)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for value in _assigned_to_action(target, node.value):
                        for e in _strings(value):
                            note(e, where, False)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "action":
                        for e in _strings(value):
                            note(e, where, True)
    return found, fstrings


def _is_flood_aggregator(call: ast.Call) -> bool:
    """``self.floods.record(source, actor, action, ...)``: the aggregator's own record."""
    f = call.func
    return (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Attribute)
            and f.value.attr == "floods")


def test_every_recorded_action_is_in_the_catalogue() -> None:
    found, fstrings = recorded_actions()
    assert len(found) > 50  # the scan sees the relay's recording sites at all
    missing = {a: w for a, w in found.items() if a not in CATALOGUE}
    assert not missing, f"recorded but not declared in relay/audit_events.py: {missing}"
    assert not fstrings, ("actions built with f-strings (use literals the catalogue and "
                          f"this scan can read): {fstrings}")


def test_every_catalogued_action_is_recorded_somewhere() -> None:
    """A declaration nothing records is a stale line in the document."""
    literals: set[str] = set()
    for path in RELAY.rglob("*.py"):
        if path.name != "audit_events.py":
            literals |= {n.value for n in ast.walk(ast.parse(path.read_text()))
                         if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert sorted(set(CATALOGUE) - literals) == []


def test_the_document_is_generated_and_up_to_date() -> None:
    committed = (ROOT / "docs" / "audit-events.md").read_text()
    assert committed == audit_events.markdown(), (
        "docs/audit-events.md is out of date: backline-relay audit events > "
        "docs/audit-events.md")
    for action in CATALOGUE:
        assert f"### {action}\n" in committed


def test_every_event_has_a_group_meaning_and_target() -> None:
    assert {e.group for e in CATALOGUE.values()} == set(audit_events.GROUPS)
    for e in CATALOGUE.values():
        assert e.meaning and e.target and ACTION.fullmatch(e.action), e.action
        assert all(f.meaning for f in e.fields), e.action


def test_a_good_event_passes_unchanged() -> None:
    details = {"address": "192.0.2.1", "version": "0.1.0"}
    assert checked("agent.connect", details) is details
    assert checked("agent.ping", {"rtt_ms": None, "address": "::1"})
    assert checked("agent.ping", {"rtt_ms": 3, "address": "::1"})  # an int is a number


@pytest.mark.parametrize(("action", "details", "says"), [
    ("agent.teleport", {}, "not in the catalogue"),
    ("agent.connect", {"address": "a", "version": "1", "password": "x"},
     "undeclared fields: password"),
    ("agent.connect", {"address": "a"}, "missing fields: version"),
    ("agent.connect", {"address": "a", "version": 1}, "wrong types: version is int"),
    ("agent.label", {"label": None, "address": "a"}, "wrong types: label is NoneType"),
])
def test_a_bad_event_raises_in_strict_mode(action: str, details: dict[str, Any],
                                           says: str) -> None:
    assert audit_events.strict()  # tests/conftest.py
    with pytest.raises(UncataloguedEvent, match=re.escape(says)):
        checked(action, details)


def test_in_production_a_bad_event_is_logged_and_recorded_marked(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(audit_events.STRICT_ENV)
    out = checked("agent.connect", {"address": "a", "version": "1", "extra": 1})
    assert out["extra"] == 1 and out["address"] == "a"
    assert out[audit_events.MARKER] == "undeclared fields: extra"
    assert "audit catalogue violation" in caplog.text
    assert checked("nope.nothing", {})[audit_events.MARKER].startswith("action 'nope.nothing'")


def test_floods_are_declared_both_ways() -> None:
    with pytest.raises(UncataloguedEvent, match="not declared flood=True"):
        checked("agent.connect", {"address": "a", "version": "1"}, flooding=True)
    assert checked("agent.auth.refused", {"reason": "x", "detail": "y", "address": "a"},
                   flooding=True)


def test_aggregated_rows_have_the_declared_shape() -> None:
    """The aggregator's summary is exactly FLOOD_SUMMARY, and is accepted for a flood
    action (and refused for another)."""
    rows: list[tuple[str, dict[str, Any]]] = []
    agg = FloodAggregator(lambda actor, action, target="", **d: rows.append((action, d)),
                          burst=0)
    agg.record("192.0.2.1", "anonymous@192.0.2.1", "session.join.refused", "session-code",
               reason="bad_code", address="192.0.2.1")
    agg.flush_all()
    (action, summary), = rows
    assert set(summary) == {f.name for f in FLOOD_SUMMARY}
    assert checked(action, summary) is summary
    with pytest.raises(UncataloguedEvent, match="aggregated row"):
        checked("agent.connect", summary)
