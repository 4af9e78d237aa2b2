from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every audit event must match relay/audit_events.py: in the tests (and in the relay
# processes they start, which inherit this) a mismatch raises instead of being written
# marked, and RelayProcess.stop fails on a violation the relay only logged.
os.environ["BACKLINE_AUDIT_STRICT"] = "1"

from tests.harness import Api, RelayProcess, admin_api


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    proc = RelayProcess(tmp_path).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def admin(relay: RelayProcess) -> Iterator[Api]:
    api = admin_api(relay)
    try:
        yield api
    finally:
        api.close()
