"""The trail clock seam (relay/reports/clock.py) cannot come on by accident and never
comes on quietly: the two variables a production relay could be given
(BACKLINE_TEST_CLOCK_FILE, BACKLINE_AUDIT_STRICT) are not enough without the harness's
own flag, and when it is on the relay logs a warning and its start event says by how
much the trail's clock is shifted."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from backline.relay import audit
from backline.relay.reports import clock


@pytest.fixture
def shifted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "clock"
    path.write_text("864000")  # ten days ahead
    monkeypatch.setenv(clock.ENV, str(path))
    monkeypatch.setenv("BACKLINE_AUDIT_STRICT", "1")
    monkeypatch.setattr(audit, "time", time)  # put back whatever install() did
    return path


def test_strict_and_a_clock_file_alone_shift_nothing(shifted: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(clock.HARNESS_ENV, raising=False)
    assert not clock.enabled()
    assert abs(clock.now() - time.time()) < 60
    clock.install()
    assert audit.time is time
    with caplog.at_level(logging.WARNING):
        assert clock.start_details() == {}
    assert not caplog.records
    monkeypatch.setenv(clock.HARNESS_ENV, "yes")  # exactly "1"
    assert not clock.enabled()


def test_the_harness_flag_turns_it_on_loudly(shifted: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(clock.HARNESS_ENV, "1")
    assert clock.enabled()
    assert clock.now() - time.time() > 863000
    with caplog.at_level(logging.WARNING, logger="backline.relay.reports"):
        assert clock.start_details() == {"clock_offset": 864000.0}
    assert any("TEST CLOCK" in r.getMessage() and "864000" in r.getMessage()
               for r in caplog.records)
    clock.install()
    assert isinstance(audit.time, clock.ShiftedTime)
