"""The knowledge base: rules kept as TOML data, and the small language of their conditions.

A rule says *when* (a condition over the report), *how bad* (severity), *why it
matters* (a plain-language explanation) and *what helps* (ids of fixes). Conditions
are data, never code: nothing is ``eval``-ed, a rule file can only compare report
fields with values. The language, in TOML inline tables:

* ``{ path = "memory.used_pct", op = ">=", value = "${thresholds.memory_used_pct}" }``
  - a comparison; a path with ``[*]`` walks a list and matches if any element does.
* ``{ all = [ ... ] }``, ``{ any = [ ... ] }``, ``{ not = { ... } }`` - combinators.
* ``{ some = "disk.mounts", where = { ... } }`` - some element of a list satisfies
  ``where``, whose paths are relative to the element (so two comparisons are about
  the same mount); ``every`` instead of ``some``: the list is non-empty and all do.

Operators: ``== != < <= > >=``, ``in`` / ``not_in`` (a list of values), ``contains``
(a string or list field), ``startswith``, ``empty`` / ``not_empty``, ``exists`` /
``missing`` (the field is absent or null). Values may be ``"${thresholds.NAME}"``.

Files are validated when loaded: unknown keys, severities or operators, paths not in
:data:`schema.FIELDS`, operators that do not fit a field's type, thresholds that do
not exist, and duplicate ids are all refused with the file and rule named.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from backline.agent.diagnostics.config import DEFAULT_THRESHOLDS
from backline.common.diagnostics.schema import (
    CHEAP_SECTIONS,
    FIELDS,
    MAX_EVIDENCE,
    SEVERITIES,
    SEVERITY_RANK,
    Finding,
    Report,
    clean,
)

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{2,63}$")
_SEGMENT_RE = re.compile(r"^[a-z_][a-z0-9_]*(\[\*\])?$")
_THRESHOLD_RE = re.compile(r"^\$\{thresholds\.([a-z0-9_]+)\}$")
_PLACEHOLDER_RE = re.compile(r"\{([a-z0-9_.\[\]*]+)\}")

NUMERIC_OPS = frozenset({"<", "<=", ">", ">="})
EQUALITY_OPS = frozenset({"==", "!="})
LIST_OPS = frozenset({"in", "not_in"})
UNARY_OPS = frozenset({"exists", "missing", "empty", "not_empty"})
OPS = NUMERIC_OPS | EQUALITY_OPS | LIST_OPS | UNARY_OPS | {"contains", "startswith"}

RULE_KEYS = {"id", "title", "severity", "when", "explanation", "fixes", "message", "cheap"}


class RuleError(ValueError):
    """A rule file that cannot be used; the message names the file and the rule."""


# --- conditions ----------------------------------------------------------------------


@dataclass
class Outcome:
    """Whether a condition held, and the evidence: matched list items, matched values."""

    ok: bool
    items: list[dict[str, Any]] = field(default_factory=list)
    values: list[dict[str, Any]] = field(default_factory=list)


class Condition:
    sections: frozenset[str] = frozenset()

    def test(self, node: Any, thresholds: Mapping[str, float]) -> Outcome:
        raise NotImplementedError


Segments = tuple[tuple[str, bool], ...]


def _segments(path: str) -> Segments:
    out = []
    for part in path.split("."):
        if not _SEGMENT_RE.match(part):
            raise RuleError(f"bad path {path!r} (segments are names, optionally with [*])")
        out.append((part.removesuffix("[*]"), part.endswith("[*]")))
    return tuple(out)


def resolve(node: Any, segments: Segments) -> list[Any]:
    """All values at a path; ``[*]`` fans out over a list, absent keys give nothing."""
    values = [node]
    for name, star in segments:
        following: list[Any] = []
        for value in values:
            if isinstance(value, dict) and name in value:
                child = value[name]
                if star:
                    if isinstance(child, list):
                        following.extend(child)
                else:
                    following.append(child)
        values = following
    return values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same_kind(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if _is_number(a) and _is_number(b):
        return True
    return type(a) is type(b)


def compare(op: str, actual: Any, expected: Any) -> bool:
    """One comparison; any type mismatch or unknown (None) value is simply false."""
    if actual is None:
        return False
    if op in NUMERIC_OPS:
        if not (_is_number(actual) and _is_number(expected)):
            return False
        return {"<": actual < expected, "<=": actual <= expected,
                ">": actual > expected, ">=": actual >= expected}[op]
    if op in EQUALITY_OPS:
        equal = _same_kind(actual, expected) and actual == expected
        return equal if op == "==" else (_same_kind(actual, expected) and not equal)
    if op in LIST_OPS:
        inside = any(_same_kind(actual, e) and actual == e for e in expected)
        return inside if op == "in" else not inside
    if op == "contains":
        if isinstance(actual, str) and isinstance(expected, str):
            return expected.lower() in actual.lower()
        if isinstance(actual, list):
            return any(_same_kind(a, expected) and a == expected for a in actual)
        return False
    if op == "startswith":
        return isinstance(actual, str) and isinstance(expected, str) and \
            actual.startswith(expected)
    if op == "empty":
        return isinstance(actual, list | str) and len(actual) == 0
    if op == "not_empty":
        return isinstance(actual, list | str) and len(actual) > 0
    return False


@dataclass
class Leaf(Condition):
    path: str
    segments: Segments
    op: str
    value: Any
    threshold: str | None
    sections: frozenset[str] = frozenset()

    def test(self, node: Any, thresholds: Mapping[str, float]) -> Outcome:
        values = resolve(node, self.segments)
        if self.op == "missing":
            return Outcome(all(v is None for v in values))
        if self.op == "exists":
            return Outcome(any(v is not None for v in values))
        expected = self.value
        if self.threshold is not None:
            expected = thresholds.get(self.threshold, DEFAULT_THRESHOLDS[self.threshold])
        hits = [v for v in values if compare(self.op, v, expected)]
        return Outcome(bool(hits), values=[{"path": self.path, "value": _evidence_value(v)}
                                           for v in hits[:MAX_EVIDENCE]])


@dataclass
class Combined(Condition):
    kind: str  # all | any
    children: list[Condition]
    sections: frozenset[str] = frozenset()

    def test(self, node: Any, thresholds: Mapping[str, float]) -> Outcome:
        outcomes = []
        for child in self.children:
            outcome = child.test(node, thresholds)
            if self.kind == "all" and not outcome.ok:
                return Outcome(False)
            if outcome.ok:
                outcomes.append(outcome)
        if self.kind == "any" and not outcomes:
            return Outcome(False)
        return Outcome(True, [i for o in outcomes for i in o.items],
                       [v for o in outcomes for v in o.values])


@dataclass
class Negated(Condition):
    child: Condition
    sections: frozenset[str] = frozenset()

    def test(self, node: Any, thresholds: Mapping[str, float]) -> Outcome:
        return Outcome(not self.child.test(node, thresholds).ok)


@dataclass
class Quantified(Condition):
    kind: str  # some | every
    path: str
    segments: Segments
    where: Condition
    sections: frozenset[str] = frozenset()

    def test(self, node: Any, thresholds: Mapping[str, float]) -> Outcome:
        items = [i for v in resolve(node, self.segments) if isinstance(v, list) for i in v]
        matched = [i for i in items if isinstance(i, dict) and self.where.test(i, thresholds).ok]
        ok = bool(matched) if self.kind == "some" else bool(items) and len(matched) == len(items)
        return Outcome(ok, items=matched if ok else [])


def _evidence_value(value: Any) -> Any:
    if isinstance(value, str):
        return clean(value, 200)
    if isinstance(value, list):
        return [_evidence_value(v) for v in value[:5]]
    if isinstance(value, dict):
        return {k: _evidence_value(v) for k, v in value.items()
                if not isinstance(v, list | dict)}
    return value


# --- parsing and validation ----------------------------------------------------------


def _field_type(path: str) -> str:
    kind = FIELDS.get(path)
    if kind is None:
        raise RuleError(f"{path!r} is not a report field (see schema.FIELDS)")
    return kind.rstrip("?")


def _check_value(op: str, kind: str, value: Any, path: str) -> str | None:
    """Check an operator/value pair against the field's type; returns a threshold name."""
    if op in UNARY_OPS:
        if value is not None:
            raise RuleError(f"{path}: {op!r} takes no value")
        if op in ("empty", "not_empty") and not (kind.startswith("list") or kind == "str"):
            raise RuleError(f"{path}: {op!r} needs a list or string field, not {kind}")
        return None
    if value is None:
        raise RuleError(f"{path}: {op!r} needs a value")
    threshold = None
    if isinstance(value, str) and value.startswith("${"):
        match = _THRESHOLD_RE.match(value)
        if not match or match.group(1) not in DEFAULT_THRESHOLDS:
            raise RuleError(f"{path}: {value!r} names no known threshold "
                            f"(known: {', '.join(sorted(DEFAULT_THRESHOLDS))})")
        threshold = match.group(1)
        value = DEFAULT_THRESHOLDS[threshold]
    numeric = kind in ("int", "number")
    if op in NUMERIC_OPS:
        if not numeric or not _is_number(value):
            raise RuleError(f"{path}: {op!r} compares numbers ({path} is {kind})")
    elif op in EQUALITY_OPS:
        fits = ((kind == "bool" and isinstance(value, bool))
                or (numeric and _is_number(value)) or (kind == "str" and isinstance(value, str)))
        if not fits:
            raise RuleError(f"{path}: {value!r} cannot equal a {kind} field")
    elif op in LIST_OPS:
        if not isinstance(value, list) or kind not in ("str", "int", "number"):
            raise RuleError(f"{path}: {op!r} needs a list of values and a scalar field")
    elif op == "contains":
        if kind not in ("str", "list[str]") or not isinstance(value, str):
            raise RuleError(f"{path}: 'contains' looks for a string in a string or list[str]")
    elif op == "startswith" and (kind != "str" or not isinstance(value, str)):
        raise RuleError(f"{path}: 'startswith' needs a string field and a string")
    return threshold


def parse_condition(raw: Any, prefix: str = "") -> Condition:
    """Build a condition from its TOML form; ``prefix`` is the list a ``where`` is in."""
    if not isinstance(raw, dict) or not raw:
        raise RuleError("a condition is a table")
    keys = set(raw)
    if keys & {"all", "any"}:
        if len(keys) != 1:
            raise RuleError(f"'all'/'any' stand alone, found {sorted(keys)}")
        kind = next(iter(keys))
        items = raw[kind]
        if not isinstance(items, list) or not items:
            raise RuleError(f"{kind!r} holds a non-empty list of conditions")
        children = [parse_condition(c, prefix) for c in items]
        return Combined(kind, children, frozenset().union(*(c.sections for c in children)))
    if keys == {"not"}:
        child = parse_condition(raw["not"], prefix)
        return Negated(child, child.sections)
    if keys & {"some", "every"}:
        kind = "some" if "some" in keys else "every"
        if keys != {kind, "where"} or not isinstance(raw[kind], str):
            raise RuleError(f"{kind!r} takes a list path and a 'where' condition")
        full = _join(prefix, raw[kind])
        if _field_type(full) != "list[object]":
            raise RuleError(f"{full!r} is not a list of objects")
        where = parse_condition(raw["where"], full + "[*]")
        return Quantified(kind, full, _segments(raw[kind]), where, _sections_of(full))
    if "path" in keys:
        unknown = keys - {"path", "op", "value"}
        if unknown:
            raise RuleError(f"unknown keys in a comparison: {sorted(unknown)}")
        path, op = raw["path"], raw.get("op")
        if not isinstance(path, str) or op not in OPS:
            raise RuleError(f"a comparison needs a path and an op in {sorted(OPS)}, got {op!r}")
        full = _join(prefix, path)
        kind = _field_type(full)
        threshold = _check_value(op, kind, raw.get("value"), full)
        return Leaf(full, _segments(path), op, raw.get("value"), threshold, _sections_of(full))
    raise RuleError(f"unknown condition {sorted(keys)} (use path/op/value, all, any, not, "
                    "some or every)")


def _join(prefix: str, path: str) -> str:
    _segments(path)
    return f"{prefix}.{path}" if prefix else path


def _sections_of(path: str) -> frozenset[str]:
    return frozenset({path.split(".", 1)[0].removesuffix("[*]")})


def _lists_in(condition: Condition) -> list[str]:
    if isinstance(condition, Quantified):
        return [condition.path, *_lists_in(condition.where)]
    if isinstance(condition, Combined):
        return [p for c in condition.children for p in _lists_in(c)]
    if isinstance(condition, Negated):
        return _lists_in(condition.child)
    return []


# --- rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    severity: str
    explanation: str
    condition: Condition
    message: str = ""
    fixes: tuple[str, ...] = ()
    cheap: bool = False
    source: str = ""

    @property
    def sections(self) -> frozenset[str]:
        return self.condition.sections

    def evaluate(self, document: Mapping[str, Any], thresholds: Mapping[str, float]
                 ) -> Finding | None:
        """A finding if the rule holds; rules whose sections are missing are not judged."""
        if not self.sections <= set(document):
            return None
        outcome = self.condition.test(document, thresholds)
        if not outcome.ok:
            return None
        evidence = [_evidence_value(i) for i in outcome.items] or outcome.values
        summary = self._summary(document, outcome)
        return Finding(rule_id=self.id, title=self.title, severity=self.severity,
                       summary=summary, explanation=self.explanation, fixes=list(self.fixes),
                       evidence=evidence[:MAX_EVIDENCE], sections=sorted(self.sections))

    def _summary(self, document: Mapping[str, Any], outcome: Outcome) -> str:
        if not self.message:
            return self.title
        item = outcome.items[0] if outcome.items else {}

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in item:
                return _show(item[name])
            values = resolve(document, _segments(name))
            if "[*]" in name:
                return _show(values)
            return _show(values[0]) if values else "?"

        text = _PLACEHOLDER_RE.sub(fill, self.message)
        if len(outcome.items) > 1:
            text += f" (and {len(outcome.items) - 1} more)"
        return clean(text, 300)


def _show(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}".removesuffix(".0")
    if isinstance(value, list):
        return ", ".join(_show(v) for v in value[:3])
    return clean(value, 120)


def parse_rule(raw: Any, source: str) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(f"{source}: each [[rule]] is a table")
    rid = raw.get("id")
    where = f"{source}: rule {rid!r}"
    if not isinstance(rid, str) or not ID_RE.match(rid):
        raise RuleError(f"{where}: id must match {ID_RE.pattern}")
    unknown = set(raw) - RULE_KEYS
    if unknown:
        raise RuleError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(RULE_KEYS)})")
    for key in ("title", "explanation"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise RuleError(f"{where}: {key} is required text")
    if raw.get("severity") not in SEVERITIES:
        raise RuleError(f"{where}: severity must be one of {', '.join(SEVERITIES)}")
    fixes = raw.get("fixes", [])
    if not isinstance(fixes, list) or not all(isinstance(f, str) and ID_RE.match(f)
                                              for f in fixes):
        raise RuleError(f"{where}: fixes is a list of fix ids")
    cheap = raw.get("cheap", False)
    message = raw.get("message", "")
    if not isinstance(cheap, bool) or not isinstance(message, str):
        raise RuleError(f"{where}: cheap is true/false and message is text")
    if "when" not in raw:
        raise RuleError(f"{where}: 'when' (the condition) is required")
    try:
        condition = parse_condition(raw["when"])
    except RuleError as exc:
        raise RuleError(f"{where}: condition: {exc}") from None
    if cheap and not condition.sections <= CHEAP_SECTIONS:
        raise RuleError(f"{where}: a cheap rule may only read {sorted(CHEAP_SECTIONS)}, "
                        f"not {sorted(condition.sections - CHEAP_SECTIONS)}")
    lists = _lists_in(condition)
    for name in _PLACEHOLDER_RE.findall(message):
        kind = FIELDS.get(name) or next(
            (FIELDS[f"{lst}[*].{name}"] for lst in lists if f"{lst}[*].{name}" in FIELDS), None)
        if kind is None or kind == "list[object]":
            raise RuleError(f"{where}: message placeholder {{{name}}} is not a report value "
                            "or a field of a list the condition walks")
    return Rule(id=rid, title=raw["title"].strip(), severity=raw["severity"],
                explanation=" ".join(raw["explanation"].split()), condition=condition,
                message=message, fixes=tuple(fixes), cheap=cheap, source=source)


def parse_file(text: str, source: str) -> list[Rule]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"{source}: {exc}") from exc
    if set(data) - {"rule"}:
        raise RuleError(f"{source}: only [[rule]] tables belong in a rule file, "
                        f"found {sorted(set(data) - {'rule'})}")
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        raise RuleError(f"{source}: write rules as [[rule]]")
    return [parse_rule(r, source) for r in raw_rules]


def load_rules(paths: Iterable[Path] | None = None) -> list[Rule]:
    """Load and validate rule files (default: every ``knowledge/*.toml`` shipped with
    the agent); duplicate ids across files are refused."""
    if paths is None:
        return list(_shipped_rules())
    rules: list[Rule] = []
    for path in sorted(paths):
        rules.extend(parse_file(path.read_text(encoding="utf-8"), path.name))
    _check_unique(rules)
    return rules


def knowledge_files() -> list[tuple[str, str]]:
    """(name, text) of each shipped rule file."""
    root = resources.files("backline.agent").joinpath("knowledge")
    return sorted((entry.name, entry.read_text(encoding="utf-8")) for entry in root.iterdir()
                  if entry.name.endswith(".toml"))


@functools.cache
def _shipped_rules() -> tuple[Rule, ...]:
    rules = [r for name, text in knowledge_files() for r in parse_file(text, name)]
    _check_unique(rules)
    return tuple(rules)


def _check_unique(rules: Sequence[Rule]) -> None:
    seen: dict[str, str] = {}
    for rule in rules:
        if rule.id in seen:
            raise RuleError(f"rule id {rule.id!r} is defined twice ({seen[rule.id]} and "
                            f"{rule.source})")
        seen[rule.id] = rule.source


def evaluate(report: Report, thresholds: Mapping[str, float] | None = None,
             rules: Sequence[Rule] | None = None, cheap_only: bool = False) -> list[Finding]:
    """Findings for a report, most severe first. Thresholds default to the report's own
    (those it was collected with), then to the shipped defaults."""
    limits = {**DEFAULT_THRESHOLDS, **report.thresholds, **(thresholds or {})}
    document = report.document()
    findings = []
    for rule in rules if rules is not None else load_rules():
        if cheap_only and not rule.cheap:
            continue
        finding = rule.evaluate(document, limits)
        if finding is not None:
            findings.append(finding)
    findings.sort(key=lambda f: (SEVERITY_RANK[f.severity], f.rule_id))
    return findings
