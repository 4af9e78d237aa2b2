"""One approved fix version over every online agent of a group, a few at a time.

Each agent gets its own managed session (capability ``fix`` only), its own run (with
its own ``fix.run.*`` trail and record), one result row and one ``fix.bulk.agent``
audit entry (also when it could not be reached); the bulk run itself is
``fix.bulk.started`` and ``fix.bulk.ended``. ``concurrency`` agents run at once (1 to
32). An agent that cannot be reached, or refuses, is a result like the others: the
bulk run goes on.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

from backline.relay import agents
from backline.relay.fixes import store

if TYPE_CHECKING:
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.fixes.bulk")

MAX_CONCURRENCY = 32
#: How long one agent's run may take in a bulk run, beyond the fix's own timeout.
PER_AGENT_GRACE_S = 300.0


def online_agents(relay: Relay, group_id: int) -> list[dict[str, Any]]:
    return [a for a in agents.list_agents(relay.engine, relay.presence, {group_id})
            if a["online"] and not a["revoked"]]


def start(relay: Relay, v: store.Version, group: str, group_id: int, params: dict[str, Any],
          concurrency: int, technician: str, actor: str, address: str) -> str:
    """File the bulk run and start it in the background; its id."""
    targets = online_agents(relay, group_id)
    bulk_id = "fb_" + secrets.token_urlsafe(12)
    concurrency = max(1, min(MAX_CONCURRENCY, concurrency))
    store.new_bulk(relay.engine, {
        "id": bulk_id, "fix_id": v.fix_id, "version": v.version, "digest": v.digest,
        "group_name": group[:128], "requested_by": technician[:64],
        "concurrency": concurrency, "status": "running", "total": len(targets),
        "created_at": time.time()}, targets)
    relay.record(actor, "fix.bulk.started", f"fix_bulk:{bulk_id}", digest=v.digest,
                 fix=f"{v.fix_id}@{v.version}", group=group, total=len(targets),
                 concurrency=concurrency, address=address, method="POST")
    task = asyncio.ensure_future(_run_all(relay, bulk_id, v, targets, params, concurrency,
                                          technician, actor, address))
    relay.fixes.tasks.add(task)
    task.add_done_callback(relay.fixes.tasks.discard)
    return bulk_id


async def _run_all(relay: Relay, bulk_id: str, v: store.Version,
                   targets: list[dict[str, Any]], params: dict[str, Any], concurrency: int,
                   technician: str, actor: str, address: str) -> None:
    started = time.perf_counter()
    gate = asyncio.Semaphore(concurrency)
    outcomes: list[bool] = []

    async def one(agent: dict[str, Any]) -> None:
        async with gate:
            try:
                ok = await _run_one(relay, bulk_id, v, agent, params, technician, actor,
                                    address)
            except Exception as exc:  # one agent's failure is its result, not the bulk's
                log.warning("bulk %s on %s: %r", bulk_id, agent["id"], exc)
                store.bulk_result(relay.engine, bulk_id, agent["id"], status="error",
                                  error=f"{type(exc).__name__}: {exc}"[:256])
                relay.record(actor, "fix.bulk.agent", f"fix_bulk:{bulk_id}",
                             digest=v.digest, agent=agent["id"], status="error", ok=False,
                             exit_status=None, verify_passed=None,
                             error=f"{type(exc).__name__}: {exc}"[:200])
                ok = False
            outcomes.append(ok)

    try:
        await asyncio.gather(*(one(a) for a in targets))
    finally:
        ok = sum(outcomes)
        store.end_bulk(relay.engine, bulk_id, "done")
        relay.record(actor, "fix.bulk.ended", f"fix_bulk:{bulk_id}", digest=v.digest,
                     total=len(targets), ok=ok, failed=len(targets) - ok,
                     duration_ms=round((time.perf_counter() - started) * 1000, 1))


async def _run_one(relay: Relay, bulk_id: str, v: store.Version, agent: dict[str, Any],
                   params: dict[str, Any], technician: str, actor: str, address: str
                   ) -> bool:
    """One agent of a bulk run; whether it ended well. Whatever happens, one result row
    and one ``fix.bulk.agent`` audit entry."""
    from backline.relay.capabilities import fix as room
    from backline.relay.capabilities.base import RequestRefused
    from backline.relay.sessions.session import SessionError

    def result(status: str, error: str | None = None, run_id: str | None = None,
               exit_status: int | None = None, verify_passed: bool | None = None) -> bool:
        store.bulk_result(relay.engine, bulk_id, agent["id"], status=status,
                          error=error[:256] if error else None, run_id=run_id,
                          exit_status=exit_status, verify_passed=verify_passed)
        ok = status == "ended" and exit_status == 0 and verify_passed is not False
        relay.record(actor, "fix.bulk.agent", f"fix_bulk:{bulk_id}", digest=v.digest,
                     agent=agent["id"], status=status, ok=ok, exit_status=exit_status,
                     verify_passed=verify_passed, **({"run": run_id} if run_id else {}),
                     **({"error": error[:200]} if error else {}))
        return ok

    store.bulk_result(relay.engine, bulk_id, agent["id"], status="running")
    known = agents.public_key_of(relay.engine, agent["id"])
    if known is None:
        return result("error", "revoked")
    try:
        row = await relay.sessions.open_managed(
            agent, known[0], technician, actor, f"bulk fix {v.fix_id}@{v.version}",
            bulk_id, ("fix",), address)
    except SessionError as err:
        return result("error", f"{err.code}: {err.detail}")
    live = relay.sessions.get(row["id"])
    if live is None:
        return result("error", "session_lost")
    try:
        try:
            run, request = room.prepare(relay, live, actor, {
                "fix": f"{v.fix_id}@{v.version}", "params": params}, bulk=bulk_id)
        except RequestRefused as exc:
            return result("refused", f"{exc.code}: {exc.detail}")
        timeout = float(v.manifest.get("timeout_s", 3600)) + PER_AGENT_GRACE_S
        try:
            async with asyncio.timeout(timeout):
                answer = await room.converse(relay.channels, live, actor, run, request,
                                             keep_lines=False)
        except (SessionError, TimeoutError) as err:
            return result("error", str(getattr(err, "code", "timeout")), run.run_id)
        status = "refused" if run.refused else answer["status"]
        return result(status, run.refused or run.error, run.run_id, answer["exit_status"],
                      answer["verify_passed"])
    finally:
        await relay.sessions.close(live, "bulk_done", actor=actor)
