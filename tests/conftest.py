from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Api, RelayProcess, admin_api


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Bytes parameters (WebSocket frames, mostly) are named by their first two bytes and
    their length, not by all of them: a client frame carries a random mask key, and
    pytest-xdist needs every worker to collect the same test names."""
    if isinstance(val, bytes | bytearray):
        return f"{bytes(val[:2]).hex()}-{len(val)}B"
    return None


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
