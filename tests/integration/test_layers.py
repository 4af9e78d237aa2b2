"""The layers DESIGN.md agrees on: ``common`` imports neither side, and the relay never
imports the agent (what both need lives in ``common``). Checked in a fresh interpreter,
so modules other tests imported cannot hide a dependency."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import importlib, pkgutil, sys
import backline.{top} as pkg
for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
    if ".migrations" not in info.name:
        importlib.import_module(info.name)
print(" ".join(sorted(m for m in sys.modules if m.startswith(({forbidden})))))
"""


@pytest.mark.parametrize(("top", "forbidden"), [
    ("relay", ("backline.agent",)),
    ("common", ("backline.agent", "backline.relay")),
])
def test_a_layer_imports_nothing_it_must_not(top: str, forbidden: tuple[str, ...]) -> None:
    probe = PROBE.format(top=top, forbidden=", ".join(repr(f) for f in forbidden) + ",")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "", f"backline.{top} imports {done.stdout.strip()}"
