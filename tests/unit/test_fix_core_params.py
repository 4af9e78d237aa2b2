"""common/fixes/params.py: values are data. Shell metacharacters stay inert strings (or are
refused by the author's pattern), and anything that could forge a line, smuggle a NUL,
carry invalid UTF-8, overflow a bound or come with the wrong type is refused, naming the
parameter and never echoing more than 40 characters of the value."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from backline.common.fixes import ParamError, parse_manifest, validate_params
from backline.common.fixes.params import params_from_text

TOML = '''
id = "param-demo"
version = 1
title = "Parameters"
platforms = ["linux"]
interpreter = "sh"
script = 'printf "%s" "$BACKLINE_PARAM_FREE" > out.txt'
timeout_s = 10
risk = "low"

[parameters.FREE]
type = "string"
max_length = 100

[parameters.UNIT]
type = "string"
pattern = '^[A-Za-z0-9@._-]+$'
default = "cron.service"
max_length = 64

[parameters.COUNT]
type = "integer"
min = 1
max = 10
default = 3

[parameters.MODE]
type = "string"
enum = ["fast", "slow"]

[parameters.DRY]
type = "boolean"
default = true

[parameters.NEEDED]
type = "integer"
required = true
'''
M = parse_manifest(TOML)
HOSTILE = ["; rm -rf /", "$(touch X)", "`touch X`", "a && b || c", "'\"", "${IFS}x",
           "*", "-rf", "$HOME", "\\", "|", ">x", "%s%n"]


def ok(**values: Any) -> dict[str, str]:
    return validate_params(M, {"NEEDED": 1, **values})


def refused(parameter: str | None, **values: Any) -> ParamError:
    with pytest.raises(ParamError) as info:
        validate_params(M, {"NEEDED": 1, **values})
    assert info.value.parameter == parameter
    if parameter:
        assert str(info.value).startswith(f"parameter {parameter}: ")
    return info.value


def test_defaults_and_env_names() -> None:
    assert ok() == {"BACKLINE_PARAM_UNIT": "cron.service", "BACKLINE_PARAM_COUNT": "3",
                    "BACKLINE_PARAM_DRY": "true", "BACKLINE_PARAM_NEEDED": "1"}
    env = ok(FREE="x", COUNT=10, MODE="slow", DRY=False, UNIT="ssh.service")
    assert env["BACKLINE_PARAM_FREE"] == "x" and env["BACKLINE_PARAM_COUNT"] == "10"
    assert env["BACKLINE_PARAM_MODE"] == "slow" and env["BACKLINE_PARAM_DRY"] == "false"
    assert env["BACKLINE_PARAM_UNIT"] == "ssh.service"


def test_required_without_value() -> None:
    with pytest.raises(ParamError, match=r"^parameter NEEDED: is required$"):
        validate_params(M, {})


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_metacharacters_are_returned_unchanged_when_the_schema_allows(value: str
                                                                           ) -> None:
    assert ok(FREE=value)["BACKLINE_PARAM_FREE"] == value


# "-rf" passes '^[A-Za-z0-9@._-]+$': a leading dash is the script's to defuse ("--").
@pytest.mark.parametrize("value", [v for v in HOSTILE if v != "-rf"])
def test_shell_metacharacters_refused_by_pattern(value: str) -> None:
    e = refused("UNIT", UNIT=value)
    assert "does not match the pattern" in str(e)


@pytest.mark.parametrize("value", HOSTILE)
def test_shell_metacharacters_refused_by_enum(value: str) -> None:
    assert "not one of the allowed values" in str(refused("MODE", MODE=value))


def test_hostile_values_reach_a_real_shell_inert(tmp_path: Path) -> None:
    """What the agent does (the env, never the command line): no file X appears."""
    for value in HOSTILE:
        env = {"PATH": "/usr/bin:/bin", **ok(FREE=value)}
        subprocess.run(["/bin/sh", "-c", M.script], cwd=tmp_path, env=env, check=True,
                       timeout=10)
        assert (tmp_path / "out.txt").read_text() == value
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize(("value", "why"), [
    ("a\nb", "U+000A"), ("a\rb", "U+000D"), ("a\x00b", "NUL"), ("\x1b[31m", "U+001B"),
    ("\x7f", "U+007F"), ("\x85", "U+0085"), ("a\u2028b", "U+2028"), ("a\u2029", "U+2029"),
    ("\ud800", "UTF-8"), ("x\udfff", "UTF-8"), ("x" * 101, "0 to 100 characters"),
])
def test_string_refusals(value: str, why: str) -> None:
    assert why in str(refused("FREE", FREE=value))


def test_tab_and_unicode_are_fine() -> None:
    assert ok(FREE="a\tb")["BACKLINE_PARAM_FREE"] == "a\tb"
    assert ok(FREE="café ☕ 日本")["BACKLINE_PARAM_FREE"] == "café ☕ 日本"
    assert ok(FREE="x" * 100)["BACKLINE_PARAM_FREE"] == "x" * 100
    assert ok(FREE="")["BACKLINE_PARAM_FREE"] == ""


def test_value_is_never_echoed_beyond_40_characters() -> None:
    secret = "S" * 39 + "TAIL-SECRET" * 10
    e = refused("UNIT", UNIT=secret[:50] + " ")
    assert "TAIL-SECRET" not in str(e) and "S" * 39 in str(e)
    e = refused("MODE", MODE=secret)
    assert "TAIL-SECRET" not in str(e)
    e = refused("FREE", FREE=secret + "\n")
    assert "TAIL" not in str(e)


def test_over_long_default_max_and_hard_cap() -> None:
    m = parse_manifest(TOML.replace("max_length = 100\n", ""))
    assert validate_params(m, {"NEEDED": 1, "FREE": "x" * 256})
    with pytest.raises(ParamError, match=r"0 to 256 characters"):
        validate_params(m, {"NEEDED": 1, "FREE": "x" * 257})
    with pytest.raises(ParamError, match=r"0 to 256 characters, got 1000000"):
        validate_params(m, {"NEEDED": 1, "FREE": "x" * 1_000_000})


@pytest.mark.parametrize(("name", "value"), [
    ("FREE", 5), ("FREE", b"bytes"), ("FREE", None), ("FREE", ["x"]), ("FREE", True),
    ("COUNT", "3"), ("COUNT", 3.0), ("COUNT", True), ("COUNT", None),
    ("DRY", "true"), ("DRY", 1), ("DRY", 0), ("DRY", None),
    ("MODE", 1), ("NEEDED", "1"),
])
def test_wrong_types(name: str, value: object) -> None:
    e = refused(name, **{name: value})
    assert "must be" in str(e)


@pytest.mark.parametrize("value", [0, 11, -1, 2**64, -(2**64), 10**5000],
                         ids=["0", "11", "-1", "2^64", "-2^64", "10^5000"])
def test_integer_bounds(value: int) -> None:
    e = refused("COUNT", COUNT=value)
    assert len(str(e)) < 120


def test_unbounded_integer_still_fits_64_bits() -> None:
    assert validate_params(M, {"NEEDED": 2**63 - 1})["BACKLINE_PARAM_NEEDED"] == str(2**63 - 1)
    with pytest.raises(ParamError, match=r"^parameter NEEDED: must be between"):
        validate_params(M, {"NEEDED": 2**63})


@pytest.mark.parametrize("name", ["UNKNOWN", "free", "BACKLINE_PARAM_FREE", "PATH", "",
                                  "X" * 1000])
def test_unknown_names(name: str) -> None:
    e = refused(None, **{name: "x"})
    assert str(e).startswith("params: unknown parameter") and len(str(e)) < 100


def test_non_string_names_and_non_mapping() -> None:
    with pytest.raises(ParamError, match=r"unknown parameter int"):
        validate_params(M, {"NEEDED": 1, 5: "x"})  # type: ignore[dict-item]
    with pytest.raises(ParamError, match=r"must be an object"):
        validate_params(M, [("NEEDED", 1)])  # type: ignore[arg-type]


def test_pattern_is_a_full_match_and_not_fooled_by_a_trailing_newline() -> None:
    m = parse_manifest(TOML.replace("'^[A-Za-z0-9@._-]+$'", "'[a-z]+'")
                       .replace('"cron.service"', '"cron"'))
    with pytest.raises(ParamError):
        validate_params(m, {"NEEDED": 1, "UNIT": "abc;"})
    with pytest.raises(ParamError):
        validate_params(m, {"NEEDED": 1, "UNIT": "abc\n"})
    assert validate_params(m, {"NEEDED": 1, "UNIT": "abc"})["BACKLINE_PARAM_UNIT"] == "abc"


def test_params_from_text() -> None:
    typed = params_from_text(M, {"COUNT": "7", "DRY": "false", "FREE": "$(x)", "NEEDED": "-2"})
    assert typed == {"COUNT": 7, "DRY": False, "FREE": "$(x)", "NEEDED": -2}
    for bad in ({"COUNT": "7.0"}, {"COUNT": "٣"}, {"COUNT": " 7"}, {"DRY": "yes"},
                {"NOPE": "1"}, {"COUNT": "1" * 20}):
        with pytest.raises(ParamError):
            params_from_text(M, bad)


@pytest.mark.parametrize("char", ["\u202e", "\u2067"])
def test_bidirectional_overrides_in_values(char: str) -> None:
    assert "bidirectional control" in str(refused("FREE", FREE=f"txt.{char}exe"))
