"""Parameter values checked against a fix's schema, turned into environment variables.

Why environment variables only: a parameter is data. The agent never splices it into a
command line; the script reads ``$BACKLINE_PARAM_NAME``. So ``; rm -rf /`` or
``$(touch X)`` is inert text unless the script itself evaluates it, and the schema
(pattern, enum, lengths) is where an author narrows what may arrive at all.

Why so strict on types: the same approval covers every run; a value of the wrong type
(``"1"`` for an integer, ``1`` for a boolean) is refused rather than guessed at, so what
the customer consented to is what the script sees. Strings never carry NUL or a control
character other than TAB (no newline: a value cannot forge a line in a log, a prompt or
a ``read`` loop) nor a bidirectional override (it would read differently in the consent
prompt than it is), and must be valid UTF-8 (a ``str`` holding a lone surrogate is refused).

Errors name the parameter and never echo more than 40 characters of a value.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping
from typing import TYPE_CHECKING

from backline.common.fixes import patterns

if TYPE_CHECKING:
    from backline.common.fixes.manifest import FixManifest, Parameter

ENV_PREFIX = "BACKLINE_PARAM_"
#: Without min/max an integer still fits a signed 64-bit value (what scripts parse).
INT64 = 2**63 - 1
EXCERPT = 40
_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
#: Same set as manifest.BIDI_CONTROLS (kept here: manifest imports this module).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class ParamError(ValueError):
    """A parameter value refused; ``parameter`` names it (None: the whole mapping)."""

    def __init__(self, parameter: str | None, why: str) -> None:
        self.parameter = parameter
        self.why = why
        super().__init__(f"parameter {parameter}: {why}" if parameter else f"params: {why}")


def excerpt(value: object) -> str:
    """At most 40 characters of a value, escaped (safe in a log line)."""
    if isinstance(value, str):
        short = value[:EXCERPT]
        return ascii(short) + ("..." if len(value) > EXCERPT else "")
    return type(value).__name__


def _matches(pattern: str, value: str) -> bool:
    """A full match in linear time (RE2); a pattern RE2 refuses matches nothing."""
    try:
        return patterns.full_match(pattern, value)
    except patterns.PatternError:
        return False


def _check_string(p: Parameter, value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ParamError(p.name, "is not valid UTF-8 (lone surrogate)") from None
    for ch in value:
        if ch == "\x00":
            raise ParamError(p.name, "contains NUL")
        if ch != "\t" and unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise ParamError(p.name, f"contains the control character U+{ord(ch):04X}")
        if ch in _BIDI:
            raise ParamError(p.name, f"contains the bidirectional control U+{ord(ch):04X}")
    lo = p.min_length or 0
    hi = p.max_length if p.max_length is not None else 256
    if not lo <= len(value) <= hi:
        raise ParamError(p.name, f"must be {lo} to {hi} characters, got {len(value)}")
    if p.enum is not None and value not in p.enum:
        raise ParamError(p.name, f"{excerpt(value)} is not one of the allowed values")
    if p.pattern is not None and not _matches(p.pattern, value):
        raise ParamError(p.name, f"{excerpt(value)} does not match the pattern {p.pattern}")
    return value


def check_value(p: Parameter, value: object) -> str:
    """One value checked against ``p``; returns its environment text."""
    if p.type == "boolean":
        if not isinstance(value, bool):
            raise ParamError(p.name, f"must be true or false, not {type(value).__name__}")
        return "true" if value else "false"
    if p.type == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            raise ParamError(p.name, f"must be an integer, not {type(value).__name__}")
        lo = p.min if p.min is not None else -INT64
        hi = p.max if p.max is not None else INT64
        if not lo <= value <= hi:
            shown = str(value) if abs(value) <= 10**30 else "a huge number"
            raise ParamError(p.name, f"must be between {lo} and {hi}, got {shown}")
        if p.enum is not None and value not in p.enum:
            raise ParamError(p.name, f"{value} is not one of the allowed values")
        return str(value)
    if p.type == "string":
        if not isinstance(value, str):
            raise ParamError(p.name, f"must be a string, not {type(value).__name__}")
        return _check_string(p, value)
    raise ParamError(p.name, f"has an unknown type {excerpt(p.type)}")


def validate_params(m: FixManifest, values: Mapping[str, object]) -> dict[str, str]:
    """``values`` checked against ``m``'s schema: ``{"BACKLINE_PARAM_<NAME>": text}``.

    Defaults fill what is missing; a required parameter without a value is refused, an
    optional one without a default is simply not set; names not in the schema are refused.
    """
    if not isinstance(values, Mapping):
        raise ParamError(None, f"must be an object of name: value, not {type(values).__name__}")
    known = {p.name: p for p in m.parameters}
    for name in values:
        if not isinstance(name, str) or name not in known:
            shown = excerpt(name) if isinstance(name, str) else type(name).__name__
            raise ParamError(None, f"unknown parameter {shown}")
    env: dict[str, str] = {}
    for name, p in known.items():
        if name in values:
            env[ENV_PREFIX + name] = check_value(p, values[name])
        elif p.default is not None:
            env[ENV_PREFIX + name] = check_value(p, p.default)
        elif p.required:
            raise ParamError(name, "is required")
    return env


def params_from_text(m: FixManifest, pairs: Mapping[str, str]) -> dict[str, object]:
    """Typed values from text (``NAME=value`` on a command line), by the schema's types.

    Integers are ASCII decimal (optional leading ``-``), booleans ``true``/``false``;
    the result still goes through :func:`validate_params`.
    """
    out: dict[str, object] = {}
    for name, text in pairs.items():
        p = m.parameter(name) if isinstance(name, str) and _NAME_RE.fullmatch(name) else None
        if p is None:
            raise ParamError(None, f"unknown parameter {excerpt(name)}")
        if p.type == "integer":
            if not re.fullmatch(r"-?[0-9]{1,19}", text, flags=re.ASCII):
                raise ParamError(name, f"{excerpt(text)} is not a decimal integer")
            out[name] = int(text)
        elif p.type == "boolean":
            if text not in ("true", "false"):
                raise ParamError(name, f"{excerpt(text)} must be true or false")
            out[name] = text == "true"
        else:
            out[name] = text
    return out
