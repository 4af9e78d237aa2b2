"""Reproducible benchmarks: ``python -m bench.NAME``; figures in ``bench/results/``."""

from __future__ import annotations

import contextlib
from pathlib import Path


def cpu_model() -> str:
    """The processor's name, for the record of where a figure was measured."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return ""
