from __future__ import annotations

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
from tests.harness import Api, RelayProcess, admin_api

#: PostgreSQL variants skipped in this run (for the summary at the end).
_postgres_skipped: list[str] = []


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
        _postgres_skipped.append(request.node.nodeid)
        warnings.warn(PostgresNotTested(f"PostgreSQL NOT TESTED: {missing}"), stacklevel=1)
        pytest.skip(f"PostgreSQL NOT TESTED: {missing}")
    with postgres_schema() as db:
        yield db


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _postgres_skipped:
        terminalreporter.write_sep("!", "PostgreSQL NOT TESTED", red=True, bold=True)
        terminalreporter.write_line(
            f"{len(_postgres_skipped)} PostgreSQL variant(s) skipped: {postgres_missing()}. "
            "Start PostgreSQL on 127.0.0.1:5432 (database `test`) or set "
            "BACKLINE_TEST_POSTGRES_URL; BACKLINE_TEST_POSTGRES=require makes this a failure.",
            red=True)


@pytest.fixture
def relay(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[RelayProcess]:
    env = (request.getfixturevalue("database").env
           if "database" in request.fixturenames else {})
    proc = RelayProcess(tmp_path, env).start()
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
