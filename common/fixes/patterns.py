"""Author-supplied parameter patterns, matched in linear time (google-re2).

Why not :mod:`re`: a manifest's ``pattern`` is written by an author the relay does not
trust, and Python's backtracking engine takes exponential time on patterns such as
``^(a+)+b$`` (measured by the issue-12 review: 4 s at 27 characters, doubling with each
one). The relay checks a parameter's default against its pattern inside
``parse_manifest`` on its event loop, and the agent applies patterns to values of up to
4096 characters. RE2 matches in time linear in the value whatever the pattern, so
neither can be stalled.

The pattern language is RE2's (https://github.com/google/re2/wiki/Syntax), which is
Python's minus what needs backtracking: backreferences (``\\1``, ``(?P=name)``) and
lookarounds (``(?=``, ``(?!``, ``(?<=``, ``(?<!``) are refused when the manifest is
parsed, as are repeats over 1000 (``a{2000}``) and patterns whose compiled program
exceeds :data:`MAX_PROGRAM_BYTES` (nested counted repeats such as
``((a{100}){100}){100}``). Matching is always a FULL match (``fullmatch``), as before.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

#: The memory RE2 may use for one compiled pattern; beyond it the pattern is refused.
MAX_PROGRAM_BYTES = 1 << 20


#: The package (and pin) that brings ``re2``; named in :class:`PatternEngineMissing`.
RE2_PACKAGE = "google-re2==1.1.20251105"


class PatternError(ValueError):
    """A pattern RE2 will not compile (the message says why)."""


class PatternEngineMissing(RuntimeError):
    """google-re2 is not installed (a plain ``pip install backline``: it is pinned in
    the agent and relay extras). Not a :class:`PatternError`: the manifest or the value
    is not at fault, and neither may be refused as if it were."""


def _re2() -> Any:
    """google-re2 (pinned in pyproject's agent and relay extras), imported when a pattern
    is first compiled: an idle agent never loads it."""
    try:
        import re2
    except ImportError:
        raise PatternEngineMissing(
            f"parameter patterns are matched with RE2, and the {RE2_PACKAGE.split('=')[0]} "
            f"package is not installed: pip install '{RE2_PACKAGE}' (or install "
            "backline[agent] or backline[relay], which pin it)") from None
    return re2


def _options() -> Any:
    opts = _re2().Options()
    opts.max_mem = MAX_PROGRAM_BYTES
    opts.log_errors = False  # a refusal is said by the caller, not written to stderr
    return opts


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> Any:
    """The compiled pattern; :class:`PatternError` when RE2 refuses it."""
    re2 = _re2()
    try:
        compiled = re2.compile(pattern, _options())
    except re2.error as exc:
        raise PatternError(_why(exc)) from None
    except (TypeError, ValueError) as exc:
        raise PatternError(str(exc)[:120]) from None
    return compiled


def full_match(pattern: str, value: str) -> bool:
    """Whether ``value`` matches ``pattern`` as a whole (linear in ``len(value)``)."""
    return compile_pattern(pattern).fullmatch(value) is not None


def _why(exc: Exception) -> str:
    text = exc.args[0] if exc.args else exc
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    if "invalid perl operator: (?=" in text or "(?!" in text or "(?<" in text:
        return f"lookarounds are not supported ({text[:80]})"
    if "invalid escape sequence: \\" in text and text.rstrip()[-1:].isdigit():
        return f"backreferences are not supported ({text[:80]})"
    return text[:120]
