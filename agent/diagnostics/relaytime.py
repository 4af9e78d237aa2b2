"""The relay's clock as last heard on the control socket.

Kept apart from :mod:`.netcheck` (which needs psutil and the collectors) so that the
control connection can remember it without loading them: an idle agent holds none of
the diagnostics machinery (docs/benchmarks.md, "Idle agent").
"""

from __future__ import annotations

import time

#: (relay time, local time, monotonic reading) when it was heard, or None.
_seen: tuple[float, float, float] | None = None


def remember(relay_time: float) -> None:
    global _seen
    _seen = (relay_time, time.time(), time.monotonic())


def seen() -> tuple[float, float, float] | None:
    return _seen


def relay_now() -> float | None:
    """The relay's clock now, projected from when it was heard (monotonic, so a step of
    the local clock does not move it)."""
    if _seen is None:
        return None
    relay_time, _, mono = _seen
    return relay_time + (time.monotonic() - mono)
