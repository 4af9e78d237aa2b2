"""A child the agent ends is ended with what it started (its own process group).

Before, only the child itself was killed: a grandchild holding the output pipe kept the
agent reading past the timeout (30 s after a 0.5 s one), or lived on as an orphan.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from backline.agent.diagnostics.runner import run_command


def alive_with(marker: str) -> list[int]:
    """Processes whose command line holds ``marker``."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker in (Path("/proc", pid, "cmdline").read_bytes().replace(b"\0", b" ")
                              .decode(errors="replace")):
                    found.append(int(pid))
            except OSError:
                continue
    return found


@pytest.mark.skipif(os.name != "posix" or not Path("/proc").is_dir(), reason="needs /proc")
def test_a_diagnostics_command_past_its_timeout_is_ended_with_its_children() -> None:
    marker = "31.4159"  # sleep's argument: this test's own grandchild
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        asyncio.run(run_command(["sh", "-c", f"sleep {marker} & sleep {marker}"], 0.5))
    assert time.monotonic() - started < 10
    for _ in range(50):
        if not alive_with(f"sleep {marker}"):
            break
        time.sleep(0.1)
    assert not alive_with(f"sleep {marker}")
