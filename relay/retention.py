"""Retention: recordings and reports past their age are deleted, unless held.

What is deleted is the *content* (the blob); the row stays, marked ``deleted_at``, and
each deletion is the audit event ``retention.deleted`` with the item's SHA-256. So the
trail still holds every digest it held, ``audit verify`` holds, and a deleted item is
answered 410 (gone, and why) rather than 404 (never was).

A **legal hold** (``legal_holds``) on a session, an agent or a group keeps everything
of it from retention until the hold is lifted. Placing and lifting are audited
(``legal_hold.placed`` / ``legal_hold.lifted``); both need ``holds:write``, which only
admins hold: lifting a hold lets the next pass delete what it kept, and auditors change
nothing (they list the holds, and ask an admin for one).

Blobs are content-addressed: a blob two rows share is removed only when no row that
is kept still names it.

**Holds are checked where the deletion is written.** :func:`plan` reads the holds
once, for the report and the dry run; each :func:`delete` then re-reads them, and
that the item is still due and not yet deleted, inside the write transaction that
sets ``deleted_at`` (on SQLite ``BEGIN IMMEDIATE``, so a hold placed during a pass is
either committed before that check, and the item is kept, or after the deletion).
A group hold covers the sessions that were in the group *then*: it is matched
against ``support_sessions.group_id`` (the group when the session was opened), and
against the agent's current group only for a session that has none.

**The order of a deletion, and why.** (1) One transaction marks the row
``deleted_at`` and deletes the recording's words from the terminal-text index
(``recording_words``, ``recording_indexes``): what is deleted cannot be found by a
search either, and nothing is marked deleted that is still searchable. (2) Right
after that commit, ``retention.deleted`` is recorded. It cannot share the
transaction: :meth:`AuditLog.append_many` writes in its own (it holds the trail's
head lock and the Merkle tree writer). When that write fails, step 1 is undone
(:func:`_unmark`: the mark cleared, the search rows rebuilt) and the next pass tries
again. (3) Only then is the blob removed, and only after re-reading, at that moment,
that no kept row names its digest. So content is never removed without its
``retention.deleted`` event; a crash of the process between (1) and (2) leaves at
worst a row marked deleted, unaudited, whose content is still on disk (not mended
automatically yet).

Retention is off until ``retention_recordings_days`` / ``retention_reports_days``
(``[retention]``) are set; it runs every ``retention_interval_minutes`` in the relay and
on demand with ``backline-relay retention run [--dry-run]``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa

from backline.relay import audit_evidence, term_index
from backline.relay.blobs import BlobStore
from backline.relay.db import writing
from backline.relay.schema import (
    agents,
    diagnostics_reports,
    fix_runs,
    groups,
    legal_holds,
    recording_indexes,
    recordings,
    support_sessions,
)

if TYPE_CHECKING:
    from backline.relay.config import RelayConfig
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.retention")

SCOPES = ("session", "agent", "group")
DAY = 86400.0
#: ``record(actor, action, target, **details)``, as Relay.record.
Recorder = Callable[..., None]
#: What :func:`delete` did with an item.
Outcome = Literal["deleted", "held", "gone"]


@dataclass(frozen=True)
class Item:
    kind: str  # recording | diagnostics_report | fix_output
    id: str
    session: str
    agent: str
    sha256: str
    at: float
    days: float
    #: The group the item's session was in (the agent's, when the session has none).
    group: int | None = None

    @property
    def target(self) -> str:
        return audit_evidence.target(self.kind, self.id)


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


@dataclass(frozen=True)
class Holds:
    """The holds in force: held session ids, agent ids and group ids."""

    sessions: frozenset[str]
    agents: frozenset[str]
    groups: frozenset[int]

    def keep(self, item: Item) -> bool:
        return (item.session in self.sessions or item.agent in self.agents
                or (item.group is not None and item.group in self.groups))


def _held(conn: sa.Connection) -> Holds:
    """The holds in force now. A group hold names the group; it is matched by id
    against the group a session was in (:func:`_group_of`)."""
    rows = conn.execute(sa.select(legal_holds.c.scope, legal_holds.c.subject)
                        .where(legal_holds.c.lifted_at.is_(None))).all()
    names = [s for scope, s in rows if scope == "group"]
    ids: set[int] = set()
    if names:
        ids = {r[0] for r in conn.execute(sa.select(groups.c.id)
                                          .where(groups.c.name.in_(names)))}
    return Holds(frozenset(s for scope, s in rows if scope == "session"),
                 frozenset(s for scope, s in rows if scope == "agent"), frozenset(ids))


def _group_of(conn: sa.Connection, session: str, agent: str) -> int | None:
    """The group ``session`` was in (``support_sessions.group_id``), or, for a session
    without one, its agent's current group."""
    group = conn.execute(sa.select(support_sessions.c.group_id)
                         .where(support_sessions.c.id == session)).scalar()
    if group is None and agent:
        group = conn.execute(sa.select(agents.c.group_id)
                             .where(agents.c.id == agent)).scalar()
    return group


# --- finding and deleting --------------------------------------------------------------


def _due(conn: sa.Connection, config: RelayConfig, now: float) -> Iterator[Item]:
    groups_of: dict[tuple[str, str], int | None] = {}
    for item in list(_due_rows(conn, config, now)):  # read whole before more queries
        key = (item.session, item.agent)
        if key not in groups_of:
            groups_of[key] = _group_of(conn, *key)
        yield dataclasses.replace(item, group=groups_of[key])


def _due_rows(conn: sa.Connection, config: RelayConfig, now: float) -> Iterator[Item]:
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
        holds = _held(conn)
        due, held = [], []
        for item in _due(conn, config, now):
            (held if holds.keep(item) else due).append(item)
    return RunResult(due, held)


_TABLES = {"recording": (recordings, recordings.c.id, recordings.c.started_at),
           "diagnostics_report": (diagnostics_reports, diagnostics_reports.c.id,
                                  diagnostics_reports.c.created_at),
           "fix_output": (fix_runs, fix_runs.c.id, fix_runs.c.started_at)}


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
           now: float) -> Outcome:
    """Delete one planned item, in the order the module docstring gives: mark the row
    and drop its search index (one transaction, which re-checks the holds and that
    the item is still due), audit, then remove the blob when no kept row names it.
    ``"held"`` when a hold placed since :func:`plan` covers it, ``"gone"`` when
    someone else deleted it first (another node, a concurrent run)."""
    table, key, born = _TABLES[item.kind]
    with writing(engine) as conn:
        # Re-read inside the write transaction: a hold placed since plan() keeps it.
        current = dataclasses.replace(item, group=_group_of(conn, item.session, item.agent))
        if _held(conn).keep(current):
            log.info("retention: %s is under a legal hold placed during the pass; kept",
                     item.target)
            return "held"
        done = conn.execute(table.update().where(key == item.id)
                            .where(table.c.deleted_at.is_(None))
                            .where(born < now - item.days * DAY)
                            .values(deleted_at=now))
        if done.rowcount != 1:
            return "gone"
        indexed = None
        if item.kind == "recording":
            indexed = conn.execute(
                sa.select(recordings.c.keystrokes)
                .where(recordings.c.id == item.id)
                .where(sa.exists().where(
                    recording_indexes.c.recording_id == item.id))).first()
            term_index.forget(conn, item.id)
    # After the commit and before the blob goes (append_many has its own transaction).
    try:
        record("system", "retention.deleted", item.target, kind=item.kind, id=item.id,
               session=item.session, agent=item.agent, sha256=item.sha256,
               age_days=round((now - item.at) / DAY, 3), days=item.days)
    except BaseException:
        _unmark(engine, blobs, item, now, indexed)
        raise
    with engine.connect() as conn:
        named = _still_named(conn, item.sha256)
    if not named:
        blobs.remove(item.sha256)
    return "deleted"


def _unmark(engine: sa.Engine, blobs: BlobStore, item: Item, now: float,
            indexed: Any) -> None:
    """Undo step 1 when the audit write failed: the item is as it was (its blob was
    never removed) and the next pass tries again. Its search rows are rebuilt from the
    blob when it had some (``indexed``: the row's ``keystrokes``)."""
    table, key, _ = _TABLES[item.kind]
    try:
        with writing(engine) as conn:
            conn.execute(table.update().where(key == item.id)
                         .where(table.c.deleted_at == now).values(deleted_at=None))
        if indexed is not None:
            term_index.index_quietly(engine, blobs, recording_id=item.id,
                                     session_id=item.session, sha256=item.sha256,
                                     keystrokes=bool(indexed[0]))
    except Exception:  # the audit failure is what is raised; this one is logged
        log.exception("retention: %s stays marked deleted (unaudited, its blob kept)",
                      item.target)


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
            outcome = delete(engine, blobs, item, record, now)
        except OSError:
            # The row is marked and audited; only the blob's removal failed.
            log.exception("retention: %s is deleted but its blob could not be removed",
                          item.target)
            outcome = "deleted"
        if outcome == "deleted":
            result.deleted += 1
        elif outcome == "held":
            result.held.append(item)
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
