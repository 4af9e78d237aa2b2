"""The console's copy of the default grants (console/src/capabilities/grants.js) is
the relay's: the session forms send an explicit list only to add the terminal, and a
copy that drifted would silently drop (or add) a capability from such sessions."""

from __future__ import annotations

import json
import re
from pathlib import Path

from backline.common.capabilities import DEFAULT_GRANTS, KNOWN

GRANTS_JS = Path(__file__).resolve().parents[2] / "console" / "src" / "capabilities" / "grants.js"


def _js_list(name: str) -> list[str]:
    match = re.search(rf"export const {name} = (\[[^\]]*\]);", GRANTS_JS.read_text())
    assert match, f"{name} not found in {GRANTS_JS}"
    return list(json.loads(match.group(1)))


def test_console_default_grants_match_the_relay() -> None:
    assert tuple(_js_list("DEFAULT_GRANTS")) == DEFAULT_GRANTS


def test_console_opt_in_capabilities_are_known_and_not_default() -> None:
    lines = GRANTS_JS.read_text().splitlines()
    line = next(x for x in lines if x.startswith("export const OPT_IN"))
    opt_in = re.findall(r'\["([a-z]+)", "', line)
    assert opt_in == ["shell"]
    assert all(name in KNOWN and name not in DEFAULT_GRANTS for name in opt_in)
