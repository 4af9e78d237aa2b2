"""The console's parameter form does not run an author's pattern (review 12b,
SHOULD-FIX 2): JavaScript's backtracking RegExp would hang the technician's tab on a
pattern like ``(a+)+$`` (RE2, which the agent and relay use, has no such cost) and reads
some patterns otherwise than RE2. The pattern is shown as a hint; the agent checks it
and is the authority. Length, type and control characters are still checked here.
Run with the system's node on the real module (console/src/capabilities/fix_params.js)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "console" / "src" / "capabilities" / "fix_params.js"

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (ROOT / "console" / "node_modules" / "lit-html").is_dir(),
    reason="needs node and the console's node_modules (./scripts/setup)")


def check(param: dict[str, object], value: str) -> dict[str, object]:
    code = (f"import {{ checkParam }} from {json.dumps(MODULE.as_uri())};\n"
            f"const r = checkParam({json.dumps(param)}, {json.dumps(value)});\n"
            "process.stdout.write(JSON.stringify(r));\n")
    done = subprocess.run(["node", "--input-type=module", "-e", code],
                          capture_output=True, text=True, timeout=20, cwd=ROOT / "console",
                          check=True)
    return json.loads(done.stdout)


def test_a_catastrophic_pattern_is_not_run_in_the_console() -> None:
    # 40 a's and a "!" against (a+)+$: exponential in a backtracking engine (minutes)
    r = check({"name": "X", "type": "string", "pattern": "(a+)+$"}, "a" * 40 + "!")
    assert r == {"value": "a" * 40 + "!"}  # left to the agent, which uses RE2


def test_a_pattern_mismatch_is_the_agents_to_refuse_not_the_consoles() -> None:
    assert check({"name": "X", "pattern": "[0-9]+"}, "abc") == {"value": "abc"}


def test_length_type_and_control_characters_are_still_checked() -> None:
    assert "error" in check({"name": "X", "max_length": 3}, "abcd")
    assert "error" in check({"name": "X", "min_length": 2}, "a")
    assert "error" in check({"name": "X"}, "a\nb")
    assert "error" in check({"name": "N", "type": "integer"}, "12x")
    assert check({"name": "X", "pattern": "[a-z]+"}, "ok\tfine") == {"value": "ok\tfine"}


def test_no_author_pattern_reaches_a_regexp_in_the_console() -> None:
    source = MODULE.read_text(encoding="utf-8")
    assert "new RegExp" not in source
