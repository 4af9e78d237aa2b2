"""The databases the store tests run on: SQLite (the default) and PostgreSQL.

The docs promise PostgreSQL for several relay nodes; these helpers let a test run
once per backend. PostgreSQL is the server at ``BACKLINE_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); each test gets a schema of its own,
created before and dropped after, and reaches it through ``search_path`` in the URL
(``?options=-csearch_path%3D...``), the same URL the relay process is given in
``BACKLINE_DATABASE_URL``. When the server is not there the PostgreSQL variants are
skipped, loudly (tests/conftest.py says so in the summary); with
``BACKLINE_TEST_POSTGRES=require`` they fail instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
POSTGRES_URL = os.environ.get("BACKLINE_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
#: "require": a missing PostgreSQL fails the PostgreSQL variants instead of skipping them.
POSTGRES_REQUIRED = os.environ.get("BACKLINE_TEST_POSTGRES", "") == "require"
#: Every test schema starts with this (and the test process id), so a leftover from a
#: killed run is recognisable.
SCHEMA_PREFIX = "bl_test_"
BACKENDS = ("sqlite", "postgres")


def _driver_url(url: str) -> str:
    return "postgresql+psycopg://" + url.split("://", 1)[1] if url.startswith(
        "postgresql://") else url


@cache
def postgres_missing() -> str:
    """Why PostgreSQL cannot be tested here ("" when it can): asked once per run."""
    try:
        import psycopg  # noqa: F401 - the `postgres` extra
    except ImportError:
        return "psycopg is not installed (the `postgres` extra; scripts/setup installs it)"
    engine = sa.create_engine(_driver_url(POSTGRES_URL), connect_args={"connect_timeout": 3},
                              poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        return f"no PostgreSQL at {POSTGRES_URL} ({first[:200]})"
    finally:
        engine.dispose()
    return ""


@dataclass
class TestDatabase:
    """One backend for one test: ``url`` is what the relay is configured with ("" for
    SQLite: the default file in the data directory)."""

    __test__ = False  # not a test class, whatever its name

    kind: str
    url: str = ""
    schema: str = ""
    _engines: list[sa.Engine] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """The relay process's environment for this database."""
        return {"BACKLINE_DATABASE_URL": self.url} if self.url else {}

    def url_for(self, data_dir: Path) -> str:
        return self.url or f"sqlite:///{data_dir / 'relay.db'}"

    def engine(self, data_dir: Path) -> sa.Engine:
        """A plain engine on the relay's database, for what an operator's SQL does
        (tampering with the trail, deleting a row); disposed after the test."""
        engine = sa.create_engine(_driver_url(self.url_for(data_dir)), poolclass=sa.NullPool)
        self._engines.append(engine)
        return engine

    def execute(self, data_dir: Path, *statements: tuple[str, dict[str, Any]]) -> None:
        """Run SQL statements (``:name`` parameters) in one transaction."""
        with self.engine(data_dir).begin() as conn:
            for sql, params in statements:
                conn.execute(sa.text(sql), params)

    def close(self) -> None:
        for engine in self._engines:
            engine.dispose()
        self._engines.clear()


@contextmanager
def postgres_schema() -> Iterator[TestDatabase]:
    """A fresh schema for one test, dropped (with everything in it) afterwards."""
    name = f"{SCHEMA_PREFIX}{os.getpid()}_{secrets.token_hex(4)}"
    admin = sa.create_engine(_driver_url(POSTGRES_URL), isolation_level="AUTOCOMMIT",
                             poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
    sep = "&" if "?" in POSTGRES_URL else "?"
    db = TestDatabase("postgres", f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={name}')}",
                      name)
    try:
        yield db
    finally:
        db.close()
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        admin.dispose()
