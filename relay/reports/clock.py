"""A test-only clock seam for the audit trail's timestamps (docs/reports.md, "Testing
over several weeks").

The management reports count weeks of incidents. An integration test cannot wait for
weeks, and a report that let its caller choose minute-long "weeks" would test another
code path than the one people use. So a test may shift the time the relay *writes into
the trail* (and into a session's ``outcome_at``): with ``BACKLINE_TEST_CLOCK_FILE`` set,
``BACKLINE_AUDIT_STRICT=1`` and ``BACKLINE_TEST_HARNESS=1`` (the last two set only by
tests/conftest.py), the relay adds the number of seconds held in that file to
``time.time()`` wherever :mod:`backline.relay.audit` reads it. The test only ever
increases it, so the trail stays in time order. Nothing else moves: TLS, tokens,
sessions' own timers and heartbeats keep the real clock.

In production none of this is set and this module does nothing. Because a shifted
trail clock would silently falsify every timestamp, it cannot come on by accident (all
three variables, one of them named for the test harness), and it is never quiet: the
relay logs a warning at start and its ``relay.start`` audit event carries
``clock_offset`` (:func:`start_details`), so a trail written with it says so.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

ENV = "BACKLINE_TEST_CLOCK_FILE"
HARNESS_ENV = "BACKLINE_TEST_HARNESS"

log = logging.getLogger("backline.relay.reports")


class ShiftedTime:
    """``time``, with ``time()`` shifted by the offset the file holds (read each call:
    the test writes it while the relay runs)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def offset(self) -> float:
        try:
            return float(self.path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0.0

    def time(self) -> float:
        return time.time() + self.offset()

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def enabled() -> bool:
    return (bool(os.environ.get(ENV)) and os.environ.get("BACKLINE_AUDIT_STRICT") == "1"
            and os.environ.get(HARNESS_ENV) == "1")


def start_details() -> dict[str, float]:
    """What the relay's ``relay.start`` event adds: ``clock_offset`` (the seconds the
    trail's clock is shifted by now) when the seam is on, with a warning logged; else
    nothing."""
    if not enabled():
        return {}
    offset = ShiftedTime(Path(os.environ[ENV])).offset()
    log.warning("TEST CLOCK: the audit trail's timestamps are shifted by %.0f s (%s, %s "
                "and BACKLINE_AUDIT_STRICT are set); never use this relay for real work",
                offset, ENV, HARNESS_ENV)
    return {"clock_offset": offset}


def now() -> float:
    """The trail's time: ``time.time()``, shifted in a test that asks for it."""
    if enabled():
        return ShiftedTime(Path(os.environ[ENV])).time()
    return time.time()


def install() -> None:
    """Shift the audit module's clock when a test asked for it (idempotent)."""
    if not enabled():
        return
    from backline.relay import audit

    if not isinstance(audit.time, ShiftedTime):
        audit.time = ShiftedTime(Path(os.environ[ENV]))  # type: ignore[assignment]
