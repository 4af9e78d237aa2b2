from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
