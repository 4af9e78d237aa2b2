"""Retention: recordings and reports past their age are deleted, unless held.

What is deleted is the *content* (the blob); the row stays, marked ``deleted_at``, and
each deletion is the audit event ``retention.deleted`` with the item's SHA-256. So the
trail still holds every digest it held, ``audit verify`` holds, and a deleted item is
answered 410 (gone, and why) rather than 404 (never was).

A **legal hold** (``legal_holds``) on a session, an agent or a group keeps everything
of it from retention until the hold is lifted. Placing and lifting are audited
(``legal_hold.placed`` / ``legal_hold.lifted``); auditors may do both, as admins may:
they are the ones asked to preserve evidence.

Blobs are content-addressed: a blob two rows share is removed only when no row that
is kept still names it.

Retention is off until ``retention_recordings_days`` / ``retention_reports_days``
(``[retention]``) are set; it runs every ``retention_interval_minutes`` in the relay and
on demand with ``backline-relay retention run [--dry-run]``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from backline.relay.blobs import BlobStore
from backline.relay.db import writing
from backline.relay.schema import (
    agents,
    diagnostics_reports,
    fix_runs,
    groups,
    legal_holds,
    recordings,
)

if TYPE_CHECKING:
    from backline.relay.config import RelayConfig
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.retention")

SCOPES = ("session", "agent", "group")
DAY = 86400.0
#: ``record(actor, action, target, **details)``, as Relay.record.
Recorder = Callable[..., None]


@dataclass(frozen=True)
class Item:
    kind: str  # recording | diagnostics_report | fix_output
    id: str
    session: str
    agent: str
    sha256: str
    at: float
    days: float

    @property
    def target(self) -> str:
        prefix = {"recording": "recording", "diagnostics_report": "report",
                  "fix_output": "fix_run"}[self.kind]
        return f"{prefix}:{self.id}"


@dataclass
class RunResult:
    due: list[Item]
    held: list[Item]
    deleted: int = 0
    blobs_removed: int = 0


def gone_text(what: str, row: Any, digest: str = "sha256") -> str:
    """The 410 answer's sentence for a deleted item."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(row["deleted_at"]))
    return (f"this {what} was deleted by the retention policy on {when}; the audit trail "
            f"keeps its SHA-256 ({row[digest]}) and the deletion (retention.deleted)")


# --- holds ---------------------------------------------------------------------------


def place_hold(engine: sa.Engine, scope: str, subject: str, reason: str, by: str
               ) -> dict[str, Any]:
    if scope not in SCOPES:
        raise ValueError(f"scope is one of {', '.join(SCOPES)}")
    row = {"id": "lh_" + secrets.token_urlsafe(9), "scope": scope, "subject": subject,
           "reason": reason, "placed_by": by[:64], "placed_at": time.time(),
           "lifted_by": None, "lifted_at": None, "lift_reason": None}
    with writing(engine) as conn:
        conn.execute(legal_holds.insert().values(**row))
    return row


def lift_hold(engine: sa.Engine, hold_id: str, by: str, reason: str
              ) -> dict[str, Any] | None:
    """The hold as it now is, or ``None`` when there is no such hold in force."""
    with writing(engine) as conn:
        done = conn.execute(legal_holds.update()
                            .where(legal_holds.c.id == hold_id)
                            .where(legal_holds.c.lifted_at.is_(None))
                            .values(lifted_by=by[:64], lifted_at=time.time(),
                                    lift_reason=reason))
        if done.rowcount != 1:
            return None
        row = conn.execute(sa.select(legal_holds)
                           .where(legal_holds.c.id == hold_id)).mappings().first()
    return dict(row) if row else None


def list_holds(engine: sa.Engine, active_only: bool = False) -> list[dict[str, Any]]:
    q = sa.select(legal_holds).order_by(legal_holds.c.placed_at.desc()).limit(1000)
    if active_only:
        q = q.where(legal_holds.c.lifted_at.is_(None))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


def _held(conn: sa.Connection) -> tuple[set[str], set[str], set[str]]:
    """(sessions, agents, agents of held groups) under a hold in force."""
    rows = conn.execute(sa.select(legal_holds.c.scope, legal_holds.c.subject)
                        .where(legal_holds.c.lifted_at.is_(None))).all()
    sessions = {s for scope, s in rows if scope == "session"}
    held_agents = {s for scope, s in rows if scope == "agent"}
    names = [s for scope, s in rows if scope == "group"]
    if names:
        q = (sa.select(agents.c.id).join(groups, groups.c.id == agents.c.group_id)
             .where(groups.c.name.in_(names)))
        held_agents |= {r[0] for r in conn.execute(q)}
    return sessions, held_agents, set(names)


# --- finding and deleting --------------------------------------------------------------


def _due(conn: sa.Connection, config: RelayConfig, now: float) -> Iterator[Item]:
    if config.retention_recordings_days > 0:
        days = config.retention_recordings_days
        q = (sa.select(recordings).where(recordings.c.deleted_at.is_(None))
             .where(recordings.c.started_at < now - days * DAY)
             .order_by(recordings.c.started_at))
        for r in conn.execute(q).mappings():
            yield Item("recording", r["id"], r["session_id"], r["agent_id"], r["sha256"],
                       r["started_at"], days)
    if config.retention_reports_days > 0:
        days = config.retention_reports_days
        q = (sa.select(diagnostics_reports).where(diagnostics_reports.c.deleted_at.is_(None))
             .where(diagnostics_reports.c.created_at < now - days * DAY)
             .order_by(diagnostics_reports.c.created_at))
        for r in conn.execute(q).mappings():
            yield Item("diagnostics_report", r["id"], r["session_id"], r["agent_id"],
                       r["sha256"], r["created_at"], days)
        q = (sa.select(fix_runs).where(fix_runs.c.deleted_at.is_(None))
             .where(fix_runs.c.output_sha256.is_not(None))
             .where(fix_runs.c.started_at < now - days * DAY)
             .order_by(fix_runs.c.started_at))
        for r in conn.execute(q).mappings():
            yield Item("fix_output", r["id"], r["session_id"], r["agent_id"],
                       r["output_sha256"], r["started_at"], days)


def plan(engine: sa.Engine, config: RelayConfig, now: float | None = None) -> RunResult:
    """What a run would delete now, and what it keeps only because of a hold."""
    now = time.time() if now is None else now
    with engine.connect() as conn:
        sessions, held_agents, _ = _held(conn)
        due, held = [], []
        for item in _due(conn, config, now):
            (held if item.session in sessions or item.agent in held_agents
             else due).append(item)
    return RunResult(due, held)


_TABLES = {"recording": (recordings, recordings.c.id),
           "diagnostics_report": (diagnostics_reports, diagnostics_reports.c.id),
           "fix_output": (fix_runs, fix_runs.c.id)}


def _still_named(conn: sa.Connection, digest: str) -> bool:
    """Whether a row that is kept names the blob ``digest``."""
    for table, column in ((recordings, recordings.c.sha256),
                          (diagnostics_reports, diagnostics_reports.c.sha256),
                          (fix_runs, fix_runs.c.output_sha256)):
        if conn.execute(sa.select(sa.literal(1)).select_from(table)
                        .where(column == digest)
                        .where(table.c.deleted_at.is_(None)).limit(1)).first():
            return True
    return False


def delete(engine: sa.Engine, blobs: BlobStore, item: Item, record: Recorder,
           now: float) -> bool:
    """Mark the row, remove its blob (when nothing kept names it), audit. ``False``
    when someone else deleted it first (another node, a concurrent run)."""
    table, key = _TABLES[item.kind]
    with writing(engine) as conn:
        done = conn.execute(table.update().where(key == item.id)
                            .where(table.c.deleted_at.is_(None)).values(deleted_at=now))
        if done.rowcount != 1:
            return False
        named = _still_named(conn, item.sha256)
    if not named:
        blobs.remove(item.sha256)
    record("system", "retention.deleted", item.target, kind=item.kind, id=item.id,
           session=item.session, agent=item.agent, sha256=item.sha256,
           age_days=round((now - item.at) / DAY, 3), days=item.days)
    return True


def run(engine: sa.Engine, blobs: BlobStore, config: RelayConfig, record: Recorder, *,
        trigger: str, dry_run: bool = False,
        progress: Callable[[int, int], None] | None = None) -> RunResult:
    """One retention pass (``progress(done, total)`` after each item)."""
    now = time.time()
    result = plan(engine, config, now)
    if dry_run:
        return result
    total = len(result.due)
    for i, item in enumerate(result.due, 1):
        try:
            if delete(engine, blobs, item, record, now):
                result.deleted += 1
        except OSError:
            log.exception("retention: could not delete the blob of %s; will retry",
                          item.target)
        if progress is not None:
            progress(i, total)
    if result.deleted or result.held:
        record("system", "retention.run", "relay", deleted=result.deleted,
               held=len(result.held), trigger=trigger)
    return result


async def periodic(relay: Relay) -> None:
    """The relay's retention job: a pass every ``retention_interval_minutes`` (the
    first five minutes after the start, or sooner with a shorter interval: a relay
    that restarts often still gets its passes), while retention is on."""
    config = relay.config
    if not (config.retention_recordings_days or config.retention_reports_days):
        return
    await asyncio.sleep(min(300.0, config.retention_interval_minutes * 60))
    while True:
        try:
            result = await asyncio.to_thread(run, relay.engine, relay.blobs, config,
                                             relay.record, trigger="periodic")
            if result.deleted:
                log.info("retention: deleted %d, kept %d under a legal hold",
                         result.deleted, len(result.held))
        except Exception:
            log.exception("retention pass failed; will retry")
        await asyncio.sleep(config.retention_interval_minutes * 60)
