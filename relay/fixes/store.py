"""The fix catalogue and run records in the relay's database (tables: relay/schema.py).

Rules the store keeps whoever calls it:

- a version is inserted once and never updated or deleted (:class:`Immutable` when the
  ``(id, version)`` exists): editing a fix makes a new version, which needs its own
  approval, and every version ever submitted stays readable (``show``, ``diff``, and
  the run records that name it);
- a signature row names the version's digest at the time it was made, so an approval
  can never be carried over to another version;
- a revocation is never lifted; the revocation list's serial is the highest serial
  stored, and a new revocation's serial is ``max(that + 1, now in milliseconds)``: it
  only grows and is never given twice, even after a row is deleted or the database is
  restored from an older backup (SQLite would reuse a freed top row id, and agents
  ignore a list whose serial is not above the one they hold).

Status of a version: ``revoked`` if revoked, else ``approved`` once it carries a relay
signature (an approval), else ``submitted``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.common.fixes.manifest import FixManifest, digest, manifest_from_dict
from backline.relay.db import writing
from backline.relay.schema import (
    fix_bulk_results,
    fix_bulks,
    fix_revocations,
    fix_runs,
    fix_signatures,
    fix_versions,
)


class Immutable(Exception):
    """That ``(id, version)`` was submitted already: it can never change."""


class NotFound(LookupError):
    """No such fix or version."""


@dataclass(frozen=True)
class Version:
    """One submitted version as stored: the manifest exactly as the agents get it."""

    fix_id: str
    version: int
    digest: str
    manifest: dict[str, Any]
    author: str
    submitted_at: float

    def parsed(self) -> FixManifest:
        """The stored manifest parsed again (raises ``ManifestError`` if the stored text
        no longer parses: a damaged row)."""
        return manifest_from_dict(self.manifest)


def _version(row: Mapping[str, Any]) -> Version:
    return Version(row["fix_id"], row["version"], row["digest"], json.loads(row["manifest"]),
                   row["author"], row["submitted_at"])


def submit(engine: sa.Engine, manifest: FixManifest, author: str) -> Version:
    """Insert a new version; :class:`Immutable` if ``(id, version)`` exists."""
    body = manifest.as_dict()
    row = {"fix_id": manifest.id, "version": manifest.version, "digest": digest(manifest),
           "title": manifest.title[:128], "risk": manifest.risk,
           "manifest": json.dumps(body, sort_keys=True, ensure_ascii=False),
           "author": author[:64], "submitted_at": time.time()}
    with writing(engine) as conn:
        exists = conn.execute(sa.select(fix_versions.c.digest).where(
            fix_versions.c.fix_id == manifest.id,
            fix_versions.c.version == manifest.version)).first()
        if exists is not None:
            raise Immutable(f"{manifest.id}@{manifest.version} exists (digest {exists[0]}); "
                            "a version never changes: submit version "
                            f"{next_version(conn, manifest.id)}")
        conn.execute(fix_versions.insert().values(**row))
    return _version(row)


def next_version(conn: sa.Connection, fix_id: str) -> int:
    top = conn.execute(sa.select(sa.func.max(fix_versions.c.version))
                       .where(fix_versions.c.fix_id == fix_id)).scalar()
    return int(top or 0) + 1


def get_version(engine: sa.Engine, fix_id: str, version: int) -> Version:
    with engine.connect() as conn:
        row = conn.execute(sa.select(fix_versions).where(
            fix_versions.c.fix_id == fix_id, fix_versions.c.version == version)
        ).mappings().first()
    if row is None:
        raise NotFound(f"no fix {fix_id}@{version}")
    return _version(row)


def versions_of(engine: sa.Engine, fix_id: str) -> list[Version]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(fix_versions).where(fix_versions.c.fix_id == fix_id)
                            .order_by(fix_versions.c.version)).mappings().all()
    return [_version(r) for r in rows]


def all_latest(engine: sa.Engine) -> list[Version]:
    """The newest version of every fix, by id."""
    top = (sa.select(fix_versions.c.fix_id, sa.func.max(fix_versions.c.version).label("v"))
           .group_by(fix_versions.c.fix_id).subquery())
    q = (sa.select(fix_versions).join(top, sa.and_(fix_versions.c.fix_id == top.c.fix_id,
                                                    fix_versions.c.version == top.c.v))
         .order_by(fix_versions.c.fix_id))
    with engine.connect() as conn:
        return [_version(r) for r in conn.execute(q).mappings()]


# --- signatures (approvals and offline signatures) -------------------------------------


def add_signature(engine: sa.Engine, v: Version, kind: str, approver: str, key: str,
                  signature: str) -> bool:
    """Keep a signature; False if that key signed this version already."""
    with writing(engine) as conn:
        seen = conn.execute(sa.select(fix_signatures.c.id).where(
            fix_signatures.c.fix_id == v.fix_id, fix_signatures.c.version == v.version,
            fix_signatures.c.key == key)).first()
        if seen is not None:
            return False
        conn.execute(fix_signatures.insert().values(
            fix_id=v.fix_id, version=v.version, digest=v.digest, kind=kind,
            approver=approver[:64], key=key[:128], signature=signature, at=time.time()))
    return True


def signatures_of(engine: sa.Engine, fix_id: str, version: int) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(fix_signatures).where(fix_signatures.c.fix_id == fix_id,
                                            fix_signatures.c.version == version)
            .order_by(fix_signatures.c.id)).mappings()]


# --- revocations ------------------------------------------------------------------


class TooMany(Exception):
    """The revocation list holds as many entries as agents accept."""


def next_serial(top: int, now: float) -> int:
    """The serial after ``top``: never below the clock in milliseconds, so a serial
    handed out before a restore is never handed out again (2**53 is in year 287,000)."""
    return max(top + 1, int(now * 1000))


def revoke(engine: sa.Engine, v: Version, reason: str, by: str) -> int | None:
    """Revoke a version; its serial, or None if it was revoked already;
    :class:`TooMany` when the list is full (``revocation.MAX_ENTRIES``)."""
    from backline.common.fixes.revocation import MAX_ENTRIES

    with writing(engine) as conn:
        seen = conn.execute(sa.select(fix_revocations.c.serial).where(
            fix_revocations.c.fix_id == v.fix_id, fix_revocations.c.version == v.version)
        ).first()
        if seen is not None:
            return None
        count, top = conn.execute(sa.select(sa.func.count(),
                                            sa.func.max(fix_revocations.c.serial))).one()
        if int(count or 0) >= MAX_ENTRIES:
            raise TooMany(f"{count} versions are revoked already, as many as agents accept")
        now = time.time()
        serial = next_serial(int(top or 0), now)
        conn.execute(fix_revocations.insert().values(
            serial=serial, fix_id=v.fix_id, version=v.version, digest=v.digest,
            reason=reason[:512], revoked_by=by[:64], at=now))
        return serial


def revocation_serial(engine: sa.Engine) -> int:
    """The revocation list's serial (0: nothing revoked)."""
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.max(fix_revocations.c.serial))).scalar()
                   or 0)


def revocations(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(
            sa.select(fix_revocations).order_by(fix_revocations.c.serial)).mappings()]


def revocation_of(engine: sa.Engine, fix_id: str, version: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(fix_revocations).where(
            fix_revocations.c.fix_id == fix_id, fix_revocations.c.version == version)
        ).mappings().first()
    return dict(row) if row else None


def status_of(engine: sa.Engine, fix_id: str, version: int) -> str:
    if revocation_of(engine, fix_id, version) is not None:
        return "revoked"
    kinds = {s["kind"] for s in signatures_of(engine, fix_id, version)}
    return "approved" if "relay" in kinds else "submitted"


# --- runs -------------------------------------------------------------------------


def new_run(engine: sa.Engine, row: dict[str, Any]) -> None:
    with writing(engine) as conn:
        conn.execute(fix_runs.insert().values(**row))


def update_run(engine: sa.Engine, run_id: str, **values: Any) -> None:
    with writing(engine) as conn:
        conn.execute(fix_runs.update().where(fix_runs.c.id == run_id).values(**values))


def get_run(engine: sa.Engine, run_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(fix_runs).where(fix_runs.c.id == run_id)
                           ).mappings().first()
    return dict(row) if row else None


def list_runs(engine: sa.Engine, session: str = "", agent: str = "", fix: str = "",
              agent_ids: Iterable[str] | None = None, limit: int = 100
              ) -> list[dict[str, Any]]:
    q = sa.select(fix_runs).order_by(fix_runs.c.started_at.desc()).limit(limit)
    if session:
        q = q.where(fix_runs.c.session_id == session)
    if agent:
        q = q.where(fix_runs.c.agent_id == agent)
    if fix:
        q = q.where(fix_runs.c.fix_id == fix)
    if agent_ids is not None:
        q = q.where(fix_runs.c.agent_id.in_(list(agent_ids)))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(q).mappings()]


# --- bulk runs ----------------------------------------------------------------------


def new_bulk(engine: sa.Engine, row: dict[str, Any], agents: list[dict[str, Any]]) -> None:
    with writing(engine) as conn:
        conn.execute(fix_bulks.insert().values(**row))
        for agent in agents:
            conn.execute(fix_bulk_results.insert().values(
                bulk_id=row["id"], agent_id=agent["id"],
                hostname=str(agent.get("hostname") or "")[:256], status="pending"))


def bulk_result(engine: sa.Engine, bulk_id: str, agent_id: str, **values: Any) -> None:
    with writing(engine) as conn:
        conn.execute(fix_bulk_results.update().where(
            fix_bulk_results.c.bulk_id == bulk_id, fix_bulk_results.c.agent_id == agent_id
        ).values(**values))


def end_bulk(engine: sa.Engine, bulk_id: str, status: str) -> None:
    with writing(engine) as conn:
        conn.execute(fix_bulks.update().where(fix_bulks.c.id == bulk_id)
                     .values(status=status, ended_at=time.time()))


def get_bulk(engine: sa.Engine, bulk_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(fix_bulks).where(fix_bulks.c.id == bulk_id)
                           ).mappings().first()
        if row is None:
            return None
        results = [dict(r) for r in conn.execute(
            sa.select(fix_bulk_results).where(fix_bulk_results.c.bulk_id == bulk_id)
            .order_by(fix_bulk_results.c.hostname, fix_bulk_results.c.agent_id)).mappings()]
    bulk = dict(row)
    bulk["results"] = results
    bulk["done"] = sum(1 for r in results if r["status"] != "pending" and r["status"] != "running")
    return bulk
