"""Self-service fix runs, as agents report them (issue 14; docs/fixes-relay.md,
"Self-service runs reported by agents").

A customer's ``backline-agent fix run`` happens on their machine, perhaps while the agent
is offline; the agent keeps each run that ended and sends it on its control socket as a
``fix_report`` (common/protocol.py; agent/fix_reports.py) until the relay answers
``fix_report_ack``. The relay saw none of it: what it writes, ``fix.self_service.ended``,
is **the agent's claim**, and says so. What the relay does check:

* **Bounded and validated.** The message's schema (every field typed and bounded, the
  times in order) and its whole frame at most ``max_encoded_bytes("fix_report")``
  (:data:`MAX_BYTES`, about 1.7 KiB: no padding). One that breaks either is a protocol
  error like any other (``error``, close 4400), audited as ``fix.self_service.refused``
  with the protocol's code as its reason, aggregated per agent.
* **Rate-limited per agent.** :data:`BURST` reports, then one per :data:`REFILL_S`
  (a token bucket); beyond, ``refused`` / ``rate_limited``: the agent keeps the report and
  sends it again later, so an honest backlog is slowed, never lost, and a flood writes at
  most that many events.
* **A version the relay has.** ``fix@version`` must be in the catalogue with exactly
  that digest; anything else (a forged digest, a fix from another relay) is ``refused``
  / ``unknown_version``, audited, and the agent stops sending it.
* **Once.** ``(agent, run_id)`` goes into ``self_service_runs`` in the same transaction
  as the event (:meth:`AuditLog.append_many` ``claim``): a report sent again (its answer
  lost, the agent or the relay killed) is answered ``duplicate`` and writes nothing.
  Keyed by agent, so one agent cannot use another's run id to have its report ignored.

Times: the agent's clock says when the run started and ended, and when it sent the
report (``sent_at``); the relay puts them on its own (trail) clock by the difference
between its time at receipt and ``sent_at`` (``clock_offset_s``), so a skewed agent clock
does not move the run, and the management report places the run by
``started_at_relay`` (docs/reports.md).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from backline.common import protocol
from backline.common.protocol import ProtocolError
from backline.relay.db import insert_if_absent, writing
from backline.relay.schema import self_service_runs

if TYPE_CHECKING:
    from backline.relay.agents import Connected
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.fixes.self_service")

#: The largest frame a valid ``fix_report`` can be: anything longer is padded or broken.
MAX_BYTES = protocol.max_encoded_bytes("fix_report")
#: Reports an agent may send at once, then one per ``REFILL_S`` seconds.
BURST = 20
REFILL_S = 60.0
#: How long after a run started its report is taken (30 days): an agent offline longer
#: loses the report (refused ``too_old``, audited).
MAX_AGE_S = 30 * 86400.0
#: Agents whose bucket is kept; past it, full buckets (nothing to remember) are dropped.
MAX_AGENTS = 20_000
#: How long a recorded run's key is kept in ``self_service_runs``: a year. A report of
#: it sent again later than :data:`MAX_AGE_S` after the run is refused ``too_old`` before
#: the key is looked at, but that gap is measured on the agent's clock, which may have
#: been wrong at the run and right at the resend: keys are cheap, so a year, not 31 days.
KEEP_RUN_KEYS_S = 365 * 86400.0
#: Keys forgotten per transaction (SQLite has one writer: the loop's appends wait).
PRUNE_BATCH = 5000


def prune(engine: sa.Engine, now: float | None = None) -> int:
    """Forget the keys of runs recorded over :data:`KEEP_RUN_KEYS_S` ago (the table
    grew by every run ever reported), :data:`PRUNE_BATCH` at a time, by the
    ``recorded_at`` index (migration 0013); how many. The events stay in the trail.
    Blocking: the relay's housekeeping calls it in a thread, once an hour."""
    from backline.relay.reports import clock

    now = clock.now() if now is None else now
    c = self_service_runs.c
    total = 0
    while True:
        with writing(engine) as db:
            # The batch's newest time, by the index; then one DELETE up to it (a few
            # more rows when several share that time: still bounded).
            upto = db.execute(sa.select(c.recorded_at)
                              .where(c.recorded_at < now - KEEP_RUN_KEYS_S)
                              .order_by(c.recorded_at).offset(PRUNE_BATCH - 1).limit(1)
                              ).scalar()
            cut = (c.recorded_at < now - KEEP_RUN_KEYS_S if upto is None
                   else c.recorded_at <= upto)
            gone = int(db.execute(self_service_runs.delete().where(cut)).rowcount or 0)
        total += gone
        if upto is None:
            break
    if total:
        log.info("self-service runs: forgot the keys of %d runs recorded over %.0f days "
                 "ago", total, KEEP_RUN_KEYS_S / 86400)
    return total


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens, self.at = tokens, at


class RateLimit:
    """A token bucket per agent: :data:`BURST`, refilled one per :data:`REFILL_S`."""

    def __init__(self, burst: int = BURST, refill_s: float = REFILL_S,
                 max_agents: int = MAX_AGENTS) -> None:
        self.burst, self.refill_s, self.max_agents = burst, refill_s, max_agents
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, agent_id: str, now: float) -> bool:
        bucket = self._buckets.get(agent_id)
        if bucket is None:
            if len(self._buckets) >= self.max_agents:
                self._prune(now)
            bucket = self._buckets[agent_id] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.at) / self.refill_s)
        bucket.at = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _prune(self, now: float) -> None:
        full = [k for k, b in self._buckets.items()
                if b.tokens + (now - b.at) / self.refill_s >= self.burst]
        for key in full:
            del self._buckets[key]

    def __len__(self) -> int:
        return len(self._buckets)


def succeeded(msg: dict[str, Any]) -> bool:
    """The run worked, by the rule the report uses for technicians' runs: exit status 0,
    not timed out, not ended by a signal, and its verify script (if any) passed."""
    return (msg.get("exit_status") == 0 and not msg["timed_out"] and "signal" not in msg
            and msg["verify"] != "failed")


class SelfServiceReports:
    """``relay.fixes.self_service``: takes ``fix_report`` messages, answers them."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.limit = RateLimit()

    def receive(self, conn: Connected, msg: dict[str, Any], frame: str | bytes) -> str:
        """Act on one ``fix_report`` (already checked against its schema); the
        ``fix_report_ack`` to answer. Raises :class:`ProtocolError` for a frame over
        :data:`MAX_BYTES` (the caller refuses and audits it as any protocol error)."""
        size = len(frame.encode("utf-8", "surrogatepass") if isinstance(frame, str)
                   else frame)
        if size > MAX_BYTES:
            raise ProtocolError("too_large", f"fix_report: {size} bytes, over {MAX_BYTES}",
                                "fix_report")
        agent = f"agent:{conn.agent_id}"
        run_id, fix = msg["run_id"], f"{msg['fix']}@{msg['version']}"
        if not self.limit.allow(conn.agent_id, time.monotonic()):
            return self._refuse(conn, msg, "rate_limited",
                                f"more than {BURST} reports at once, or one per "
                                f"{REFILL_S:g} s after them: send it again later")
        if msg["sent_at"] - msg["started_at"] > MAX_AGE_S:
            # The agent chooses the gap between its run and its report: unbounded, it
            # could place a run anywhere in the past (and turn an old alert into one a
            # customer's fix resolved). A report is sent when the agent runs again.
            return self._refuse(conn, msg, "too_old",
                                f"a run reported {msg['sent_at'] - msg['started_at']:.0f} s "
                                f"after it started: at most {MAX_AGE_S:.0f} s are taken")
        known = self._digest_of(msg["fix"], msg["version"])
        if known != msg["digest"]:
            detail = (f"the relay has no {fix}" if known is None
                      else f"{fix} has another digest here ({known})")
            return self._refuse(conn, msg, "unknown_version", detail)
        from backline.relay.reports import clock

        now = clock.now()
        offset = round(now - msg["sent_at"], 3)
        details: dict[str, Any] = {
            "agent": conn.agent_id, "run": run_id, "fix": fix, "digest": msg["digest"],
            "exit_status": msg.get("exit_status"), "timed_out": msg["timed_out"],
            "verify_passed": None if msg["verify"] == "none" else msg["verify"] == "passed",
            "ok": succeeded(msg), "output_sha256": msg["output_sha256"],
            "started_at": msg["started_at"], "ended_at": msg["ended_at"],
            "clock_offset_s": offset,
            "started_at_relay": round(msg["started_at"] + offset, 3),
            "ended_at_relay": round(msg["ended_at"] + offset, 3),
            "address": conn.address}
        if "signal" in msg:
            details["signal"] = msg["signal"]

        def claim(db: sa.Connection) -> bool:
            inserted = db.execute(insert_if_absent(db, self_service_runs).values(
                agent_id=conn.agent_id, run_id=run_id, fix_id=msg["fix"],
                version=msg["version"], recorded_at=now))
            return bool(inserted.rowcount)

        if self.relay.record_once(claim, agent, "fix.self_service.ended", agent, **details):
            return protocol.encode("fix_report_ack", run_id=run_id, status="recorded")
        return protocol.encode("fix_report_ack", run_id=run_id, status="duplicate")

    def _digest_of(self, fix_id: str, version: int) -> str | None:
        from backline.relay.fixes import store

        try:
            return store.get_version(self.relay.engine, fix_id, version).digest
        except store.NotFound:
            return None

    def _refuse(self, conn: Connected, msg: dict[str, Any], reason: str, detail: str) -> str:
        agent = f"agent:{conn.agent_id}"
        self.relay.metrics.errors.labels(f"fix_report_{reason}").inc()
        self.relay.record_flood(agent, agent, "fix.self_service.refused", agent,
                                reason=reason, detail=detail[:200], run=msg["run_id"],
                                fix=f"{msg['fix']}@{msg['version']}", digest=msg["digest"],
                                address=conn.address)
        return protocol.encode("fix_report_ack", run_id=msg["run_id"], status="refused",
                               reason=reason)
