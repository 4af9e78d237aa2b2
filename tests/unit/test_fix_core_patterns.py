"""Author patterns run in linear time (google-re2): a hostile ``pattern`` cannot stall the
relay's event loop (parse_manifest checks the default against it) nor the agent
(validate_params applies it to values of up to 4096 characters). Backreferences and
lookarounds, which need backtracking, are refused when the manifest is parsed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backline.common.fixes import patterns
from backline.common.fixes.manifest import ManifestError, manifest_from_dict, parse_manifest
from backline.common.fixes.params import ParamError, validate_params

TOML = '''
id = "redos"
version = 1
title = "t"
platforms = ["linux"]
interpreter = "sh"
script = "true"
timeout_s = 5
risk = "low"
consent = false
[parameters.VALUE]
type = "string"
max_length = 4096
pattern = '{pattern}'
{default}
'''

EVIL = [r"^(a+)+b$", r"^(a|a)*b$", r"^(a|aa)+$", r"^(.*a){12}$", r"^(\w+\s?)*$",
        r"^([a-z]+)*[0-9]$", r"^(a*)*$"]


def manifest(pattern: str, default: str = "") -> Any:
    return parse_manifest(TOML.format(pattern=pattern, default=default))


@pytest.mark.parametrize("pattern", EVIL)
def test_catastrophic_patterns_are_linear_on_long_hostile_values(pattern: str) -> None:
    m = manifest(pattern)
    started = time.perf_counter()
    for n in (27, 40, 4000):
        with pytest.raises(ParamError):
            validate_params(m, {"VALUE": "a" * n + "!"})
    assert time.perf_counter() - started < 0.5


def test_a_hostile_default_is_checked_fast_at_parse_time() -> None:
    started = time.perf_counter()
    with pytest.raises(ManifestError, match="default"):
        manifest(r"^(a+)+b$", default='default = "' + "a" * 60 + '!"')
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("pattern", [r"^(a)\1$", r"^(?=a)a$", r"^(?!a)b$", r"^(?<=a)b$",
                                     r"^(?<!a)b$", r"^a{2000}$", r"^(?P<x>a)(?P=x)$",
                                     r"^((a{100}){100}){100}$"])
def test_backtracking_only_constructs_and_huge_repeats_are_refused(pattern: str) -> None:
    with pytest.raises(ManifestError, match="pattern"):
        manifest(pattern)


@pytest.mark.parametrize("pattern,good,bad", [
    (r"^[A-Za-z0-9@._-]+$", "cron.service", "a b"),
    (r"^/([A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*)?$", "/var/log", "//x"),
    (r"^[0-9A-Fa-f.:]{2,39}( [0-9A-Fa-f.:]{2,39}){0,2}$", "1.1.1.1 ::1", "1.1.1.1  x"),
    (r"[a-z]+", "abc", "abc1"),  # a full match, anchored or not
])
def test_ordinary_patterns_still_match_fully(pattern: str, good: str, bad: str) -> None:
    m = manifest(pattern)
    assert validate_params(m, {"VALUE": good}) == {"BACKLINE_PARAM_VALUE": good}
    with pytest.raises(ParamError, match="pattern"):
        validate_params(m, {"VALUE": bad})


def test_a_pattern_that_slipped_past_parsing_is_refused_not_run() -> None:
    """The wire form (manifest_from_dict) is checked the same way."""
    d = manifest(r"^a+$").as_dict()
    d["parameters"]["VALUE"]["pattern"] = r"^(a)\1$"
    with pytest.raises(ManifestError, match="pattern"):
        manifest_from_dict(d)
    with pytest.raises(patterns.PatternError):
        patterns.compile_pattern(r"(?=x)")


def test_without_google_re2_a_pattern_is_a_clear_error_naming_the_package(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A plain ``pip install backline`` has no google-re2 (it is in the agent and relay
    extras): ``python -m backline.common.fixes canonical`` on a manifest with a pattern
    says which package is missing (exit 2), never a ModuleNotFoundError traceback; and
    a manifest without a pattern still works without it (review 12b, SHOULD-FIX 4)."""
    from backline.common.fixes import __main__ as cli
    from backline.common.fixes import patterns

    monkeypatch.setitem(sys.modules, "re2", None)  # import re2 -> ModuleNotFoundError
    patterns.compile_pattern.cache_clear()
    base = ('id = "re2-missing"\nversion = 1\ntitle = "t"\nplatforms = ["linux"]\n'
            'interpreter = "sh"\nscript = "true"\ntimeout_s = 5\nrisk = "low"\n')
    with_pattern = tmp_path / "with.toml"
    with_pattern.write_text(base + '[parameters.X]\ntype = "string"\npattern = "[a-z]+"\n')
    assert cli.main(["canonical", str(with_pattern)]) == 2
    err = capsys.readouterr().err
    assert "google-re2" in err and "Traceback" not in err
    with pytest.raises(patterns.PatternEngineMissing, match="google-re2"):
        patterns.full_match("[a-z]+", "abc")
    without = tmp_path / "without.toml"
    without.write_text(base)
    assert cli.main(["digest", str(without)]) == 0
    assert capsys.readouterr().out.startswith("sha256:")
    patterns.compile_pattern.cache_clear()
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    assert pyproject.read_text().count(f'"{patterns.RE2_PACKAGE}"') == 2  # the pin named
