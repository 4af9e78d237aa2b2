"""Database engine set-up and migrations.

SQLite (WAL, the embedded default) or PostgreSQL (several relay nodes). The
schema is owned by Alembic; :func:`migrate` brings any database to the newest
revision and is safe to run on every start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig

MIGRATIONS = Path(__file__).parent / "migrations"


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        # hide_parameters: a database error's message (logged) never shows the bound
        # values (password hashes, token hashes, TOTP secrets)
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                  hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy, not pysqlite, decide when transactions begin, so that
            # BEGIN IMMEDIATE below really takes the write lock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: sa.Connection) -> None:
            # Writers take the lock up front, so two processes (a CLI command and
            # the server) never deadlock upgrading a read lock; readers stay
            # concurrent under WAL.
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    for short in ("postgresql://", "postgres://"):
        if url.startswith(short):
            url = "postgresql+psycopg://" + url[len(short):]
    return sa.create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5,
                            hide_parameters=True)


#: What neither database keeps as text: NUL (PostgreSQL refuses it in any text value,
#: SQLite keeps it) and lone surrogates (no UTF-8 encoding; both refuse them).
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """``text`` as both databases keep it: NUL and lone surrogates become U+FFFD.

    They arrive in network input (a hostname an agent reports, a session's reason, a
    request path in the audit trail); stored as given, PostgreSQL refused the whole
    write (a 500, and an audit event lost) where SQLite took it. The string columns
    (:class:`backline.relay.schema.Str`) pass every value through this, and the audit
    trail does before hashing, so what is hashed is what is stored."""
    return _UNSTORABLE.sub("\ufffd", text)


def insert_if_absent(conn: sa.Connection, table: sa.Table) -> Any:
    """An INSERT that does nothing when the row's key is taken (``ON CONFLICT DO
    NOTHING``, in either dialect): for a row two writers may both create first."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()


@contextmanager
def writing(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A write transaction: committed on success, rolled back on any error."""
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            yield conn


#: The newest migration in ``relay/migrations/versions`` (a test holds them equal).
HEAD_REVISION = "0013"

#: The PostgreSQL advisory lock (per database) a migrating relay holds, so several
#: nodes starting at once migrate one after the other, not over each other.
MIGRATION_LOCK = 0x6261636B6C696E65  # "backline"


def alembic_config(connection: sa.Connection | None = None) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: sa.Engine) -> None:
    """Bring the schema to the newest revision. A database already there is not
    handed to Alembic at all: importing and running it is a quarter of a second of
    every start, and a relay restarting under ten thousand reconnecting agents
    should be listening as soon as it can."""
    if current_revision(engine) == HEAD_REVISION:
        return
    from alembic import command

    with writing(engine) as conn:
        if conn.dialect.name == "postgresql":
            # SQLite's BEGIN IMMEDIATE serialises migrating processes; PostgreSQL's
            # DDL does not: of three started at once on an empty database, one or two
            # failed (duplicate key in pg_type: the same table created twice). Held
            # to the commit; who waited finds the schema at head and does nothing.
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"),
                         {"key": MIGRATION_LOCK})
        command.upgrade(alembic_config(conn), "head")
