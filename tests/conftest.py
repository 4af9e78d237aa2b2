from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import (
    BACKENDS,
    POSTGRES_REQUIRED,
    TestDatabase,
    postgres_missing,
    postgres_schema,
)
from tests.harness import Api, RelayProcess, admin_api, relay_template

# Every audit event must match relay/audit_events.py: in the tests (and in the relay
# processes they start, which inherit this) a mismatch raises instead of being written
# marked, and RelayProcess.stop fails on a violation the relay only logged.
os.environ["BACKLINE_AUDIT_STRICT"] = "1"
# The harness's flag: the trail clock seam (relay/reports/clock.py) needs it as well.
os.environ["BACKLINE_TEST_HARNESS"] = "1"

#: The files whose tests took longest in a run of the whole suite, slowest first: the
#: sum of their tests' times among the 100 slowest (``--durations=100``, 4 xdist
#: workers, 2026-12-01; tests/integration/test_terminal.py at least 99 s,
#: test_hostile_refusals.py 81 s, tests/browser/test_terminal.py 58 s). They are handed
#: out first, so that no long file starts last and keeps the run going after the other
#: workers are done (``--dist loadfile`` gives out files in collection order). In that
#: run the slowest file, tests/integration/test_terminal.py, was not in this list and
#: was handed out near the end of the collection order.
SLOW_FIRST = [
    "tests/integration/test_terminal.py",
    "tests/integration/test_hostile_refusals.py",
    "tests/browser/test_terminal.py",
    "tests/integration/test_tls_pinning.py",
    "tests/integration/test_sessions.py",
    "tests/integration/test_hostile.py",
    "tests/integration/test_heartbeats.py",
    "tests/integration/test_api.py",
    "tests/browser/test_console.py",
    "tests/integration/test_api_edge.py",
    "tests/integration/test_openapi_fuzz.py",
    "tests/integration/test_join.py",
    "tests/integration/test_slow_clients.py",
    "tests/integration/test_channel_bounds.py",
    "tests/integration/test_auth_limits.py",
    "tests/unit/test_wsframes_differential.py",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slowest files first (:data:`SLOW_FIRST`); a file's own order is kept."""
    rank = {path: i for i, path in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_make_parametrize_id(config: pytest.Config, val: object, argname: str) -> str | None:
    """Bytes parameters (WebSocket frames, mostly) are named by their first two bytes and
    their length, not by all of them: a client frame carries a random mask key, and
    pytest-xdist needs every worker to collect the same test names."""
    if isinstance(val, bytes | bytearray):
        return f"{bytes(val[:2]).hex()}-{len(val)}B"
    return None


class PostgresNotTested(UserWarning):
    """PostgreSQL variants of the store tests were skipped: nothing proved them."""


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest) -> Iterator[TestDatabase]:
    """The relay's database, once per backend: a test that asks for it (or is marked
    ``usefixtures("database")``) runs on SQLite and on PostgreSQL, and the ``relay``
    fixture below then uses it. Only tests that exercise the store should."""
    if request.param == "sqlite":
        yield TestDatabase("sqlite")
        return
    missing = postgres_missing()
    if missing:
        if POSTGRES_REQUIRED:
            pytest.fail(f"BACKLINE_TEST_POSTGRES=require but {missing}")
        warnings.warn(PostgresNotTested(f"PostgreSQL NOT TESTED: {missing}"), stacklevel=1)
        pytest.skip(f"PostgreSQL NOT TESTED: {missing}")
    with postgres_schema() as db:
        yield db


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # Counted from the reports: under pytest-xdist the tests run in worker processes and
    # only their reports reach this one.
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "PostgreSQL NOT TESTED" in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_sep("!", "PostgreSQL NOT TESTED", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(skipped)} PostgreSQL variant(s) skipped: {postgres_missing()}. "
            "Start PostgreSQL on 127.0.0.1:5432 (database `test`) or set "
            "BACKLINE_TEST_POSTGRES_URL; BACKLINE_TEST_POSTGRES=require makes this a failure.",
            red=True)


@pytest.fixture(scope="session")
def initialised_relay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A relay data directory after its first start and the admin's first sign-in, made
    once per test process (tests.harness.relay_template says why)."""
    return relay_template(tmp_path_factory.mktemp("relay-template"))


@pytest.fixture
def relay(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    """A relay of its own for the test, on SQLite in its data directory, or on each
    backend for a test that asks for ``database``. On SQLite it starts from a copy of
    :func:`initialised_relay` (its admin's password is ``ADMIN_PASSWORD`` already); on
    PostgreSQL it initialises itself."""
    env = (request.getfixturevalue("database").env
           if "database" in request.fixturenames else {})
    template = None if env else request.getfixturevalue("initialised_relay")
    proc = RelayProcess(tmp_path, env, template=template).start()
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
