"""A relay's data directory, database and audit trail, opened without the relay itself.

``backline-relay audit export`` and ``audit verify`` need only these. Importing and
building the whole relay (:mod:`backline.relay.state`: sessions, capabilities, the SSH
library) for them made ``audit export`` cost 0.73 s of CPU instead of 0.54 s
(2026-12-01, on a loaded 2-core machine), at every call: an operator's cron job, and
the many tests that read the trail (tests/harness.py ``audit_actions``).
:func:`backline.relay.state.open_relay` opens its store through :func:`open_store`, so
both paths create and migrate alike.
"""

from __future__ import annotations

import getpass
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.common import keys
from backline.relay.audit import AuditLog
from backline.relay.config import RelayConfig
from backline.relay.datadir import DataDir
from backline.relay.db import make_engine, migrate


@dataclass(frozen=True)
class Store:
    config: RelayConfig
    datadir: DataDir
    engine: sa.Engine
    audit: AuditLog

    def record(self, actor: str, action: str, target: str = "", **details: Any
               ) -> dict[str, Any]:
        """Append an audit event from a command on the relay's host, checked against the
        catalogue as :meth:`backline.relay.state.Relay.record` checks the relay's own.

        Safe with the relay stopped (the command opened the database itself) and beside
        a running relay: the append locks the chain's head for its transaction, and each
        writer re-reads the tree's frontier when another wrote since
        (relay/audit.py ``_lock_head``, ``_TreeWriter``)."""
        from backline.relay import audit_events

        return self.audit.append(actor, action, target, audit_events.checked(action, details))


def open_store(config: RelayConfig) -> Store:
    """Open (creating on first use) the data directory and database of ``config``:
    keys made if missing, the schema migrated to the newest revision."""
    datadir = DataDir(config.data_dir)
    host = config.effective_public_url.split("://", 1)[1].rsplit(":", 1)[0].strip("[]")
    datadir.ensure_keys([host, config.listen_host])
    engine = make_engine(config.effective_database_url)
    migrate(engine)
    audit_key = keys.load_private(datadir.audit_key)
    from backline.relay.audit_sinks import open_sinks

    audit = AuditLog(engine, audit_key, config.audit_checkpoint_every,
                     config.audit_checkpoint_seconds, origin=config.audit_origin,
                     sinks=open_sinks(config.audit_checkpoint_sinks))
    audit.ensure_tree(progress=_tree_progress)
    return Store(config=config, datadir=datadir, engine=engine, audit=audit)


def cli_actor() -> str:
    """Who a command run on the relay's host acts as in the trail: ``cli:<login name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no login name (a container without a passwd entry)
        return "cli"


def _tree_progress(done: int, total: int) -> None:
    """A trail from before migration 0008 gets its Merkle tree on the first start."""
    logging.getLogger("backline.relay.audit").warning(
        "building the audit trail's Merkle tree: %d of %d events", done, total)
