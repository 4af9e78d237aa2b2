"""Scheduled management reports (docs/reports.md "Scheduled delivery"): the report for
the previous day or week, sent by webhook (the relay's webhook sender: signed, no
redirects, no environment proxy) and/or
e-mail (``smtplib``, in a worker thread), each delivery audited (``report.delivered``,
``report.delivery.failed``).

**Nothing missed.** For each way (webhook, smtp) the database keeps the end of the last
period delivered (``report_deliveries``, migration 0012; the first start only records
where the schedule begins). At each step the schedule delivers every period owed since,
oldest first, so a period that fell due while the relay was down goes out when it is
back (at most :data:`MAX_CATCH_UP` of them; older ones are skipped, audited
``report.delivery.skipped``). A delivery that fails is audited with its attempt and
tried again after ``report_retry_s``, doubling up to :data:`RETRY_CAP_S`; the periods
after it wait their turn, so they arrive in order. The back-off (failures in a row, the
time of the next try) is kept in the way's row (migration 0013): every node waits for
it, and a restart does not start the count again. A period is marked delivered only
after it was: a crash between the two sends it again after the restart (at least once;
the webhook's body names the period, for a receiver that deduplicates).

**One node delivers.** Relay nodes sharing a database each run the schedule; a node
claims a way's row for :data:`LEASE_S` before it delivers, and the others leave it
alone until the lease ends (a node that died mid-delivery is taken over after it).

``backline-relay report send`` sends one now (the same code, :func:`deliver`), outside
the schedule: it does not move the schedule's cursor.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import smtplib
import ssl
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from backline.relay.db import insert_if_absent, writing
from backline.relay.reports import clock, compute
from backline.relay.schema import report_deliveries

if TYPE_CHECKING:
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.reports")

HOUR = 3600.0
#: Periods caught up after a start at most (a week of daily reports; seven weekly ones).
MAX_CATCH_UP = 7
#: The longest wait between two attempts of a failing delivery.
RETRY_CAP_S = 3600.0
#: How long a node's claim on a way's row holds (longer than any one delivery).
LEASE_S = 900.0
#: The schedule looks again at least this often: ``asyncio.sleep`` counts monotonic
#: time, the schedule wall-clock time; a clock stepped meanwhile is seen within this.
TICK_S = 300.0


def period(schedule: str, now: float, hour: int) -> tuple[float, float]:
    """The period the report due at or before ``now`` covers: the previous UTC day, or
    the previous Monday-to-Monday week (weeks as the report's buckets start)."""
    if schedule == "weekly":
        end = compute.bucket_start(now - hour * HOUR, "week")
        return end - compute.WEEK, end
    end = compute.bucket_start(now - hour * HOUR, "day")
    return end - compute.DAY, end


def next_due(schedule: str, now: float, hour: int) -> float:
    """When the next report is due after ``now``."""
    _, end = period(schedule, now, hour)
    step = compute.WEEK if schedule == "weekly" else compute.DAY
    due = end + hour * HOUR
    while due <= now:
        due += step
    return due


def text_of(full: dict[str, Any]) -> str:
    """The e-mail's body: the numbers, in words."""
    from backline.relay.reports.csvfile import to_csv

    day = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(full["since"]))
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(full["until"]))
    lines = [f"Backline management report, {full['group'] or 'all groups'}, {day} to {until}",
             ""]
    for name, m in compute.summary(full)["metrics"].items():
        lines.append(f"{name}: {'-' if m['value'] is None else m['value']}")
    lines += ["", "Each number's incidents, sessions and events: the console's Management "
                  "reports page, or GET /api/v1/management-reports/members.", "",
              "CSV:", to_csv(full)]
    return "\n".join(lines)


def send_webhook(relay: Relay, full: dict[str, Any]) -> None:
    """The report as a ``report.management`` event, through the relay's one webhook
    sender (relay/webhooks.py: signed, no redirects, no environment proxy)."""
    relay.webhooks.send_blocking("report.management", compute.summary(full))


def send_mail(relay: Relay, full: dict[str, Any]) -> None:
    cfg = relay.config
    msg = EmailMessage()
    msg["From"] = cfg.smtp_from
    msg["To"] = ", ".join(cfg.report_recipients)
    msg["Subject"] = ("Backline management report"
                      + (f" ({full['group']})" if full["group"] else "")
                      + time.strftime(" to %Y-%m-%d", time.gmtime(full["until"])))
    msg.set_content(text_of(full))
    msg.add_attachment(_csv(full).encode(), maintype="text", subtype="csv",
                       filename="backline-report.csv")
    context = ssl.create_default_context()
    smtp: smtplib.SMTP
    if cfg.smtp_security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s,
                                context=context)
    else:
        smtp = smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=cfg.smtp_timeout_s)
    with smtp:
        if cfg.smtp_security == "starttls":
            smtp.starttls(context=context)
        if cfg.smtp_user:
            smtp.login(cfg.smtp_user, cfg.smtp_password)
        smtp.send_message(msg)


def _csv(full: dict[str, Any]) -> str:
    from backline.relay.reports.csvfile import to_csv

    return to_csv(full)


def _target(relay: Relay, via: str) -> str:
    cfg = relay.config
    return (relay.webhooks.target if via == "webhook"
            else "mailto:" + ",".join(cfg.report_recipients))[:256]


def _send(relay: Relay, full: dict[str, Any], via: str) -> str:
    """Send one way; the failure in words ("" when it was delivered)."""
    try:
        if via == "webhook":
            send_webhook(relay, full)
        else:
            send_mail(relay, full)
    except (OSError, smtplib.SMTPException, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"[:200]
    return ""


def deliver(relay: Relay, since: float, until: float, group: str = "") -> list[str]:
    """Compute the report and send it each configured way; audited. Blocking (call it in
    a thread). The ways that failed, in words (empty: all delivered)."""
    cfg = relay.config
    full = compute.report(relay.engine, since=since, until=until, group=group)
    failed = []
    for via in cfg.report_via:
        target = _target(relay, via)
        detail = _send(relay, full, via)
        if detail:
            log.error("management report via %s failed: %s", via, detail)
            relay.record("relay", "report.delivery.failed", target, via=via, detail=detail)
            failed.append(f"{via}: {detail}")
            continue
        extra = {"recipients": len(cfg.report_recipients)} if via == "smtp" else {}
        relay.record("relay", "report.delivered", target, via=via, group=group,
                     since=since, until=until, **extra)
    return failed


# --- where each way got to ------------------------------------------------------------


def cursor_key(schedule: str, group: str, via: str) -> str:
    return f"{schedule}|{group}|{via}"[:200]


@dataclass(frozen=True)
class Cursor:
    """A way's row, as claimed: the end of the last period delivered; failures in a row
    of the oldest owed one, and when (wall clock) it may be tried again."""

    until: float
    failures: int = 0
    retry_at: float | None = None


def claim(engine: sa.Engine, key: str, node: str, baseline: float, now: float
          ) -> Cursor | None:
    """Take the row of ``key`` for ``node`` until ``now + LEASE_S``; where it got to,
    or None when another node holds it. A row made now starts at ``baseline`` (nothing
    owed: the first start)."""
    c = report_deliveries.c
    with writing(engine) as conn:
        conn.execute(insert_if_absent(conn, report_deliveries).values(
            key=key, until=baseline, updated_at=now))
        taken = conn.execute(report_deliveries.update().where(
            c.key == key, sa.or_(c.claimed_by.is_(None), c.claimed_by == node,
                                 c.claimed_until < now))
            .values(claimed_by=node, claimed_until=now + LEASE_S))
        if not taken.rowcount:
            return None
        row = conn.execute(sa.select(c.until, c.failures, c.retry_at).where(c.key == key)
                           ).one()
        return Cursor(float(row.until), int(row.failures or 0),
                      None if row.retry_at is None else float(row.retry_at))


def advance(engine: sa.Engine, key: str, node: str, until: float, now: float) -> bool:
    """Record that the period ending at ``until`` was delivered (the claim renewed, the
    back-off over); False when the claim was lost (the lease ended and another node
    took it)."""
    c = report_deliveries.c
    with writing(engine) as conn:
        done = conn.execute(report_deliveries.update().where(
            c.key == key, c.claimed_by == node)
            .values(until=until, updated_at=now, claimed_until=now + LEASE_S,
                    failures=0, retry_at=None))
    return bool(done.rowcount)


def back_off(engine: sa.Engine, key: str, node: str, failures: int, retry_at: float,
             now: float) -> None:
    """Record a failed attempt in the row, so that every node (and this one after a
    restart) waits until ``retry_at`` and counts on from ``failures``."""
    c = report_deliveries.c
    with writing(engine) as conn:
        conn.execute(report_deliveries.update().where(c.key == key, c.claimed_by == node)
                     .values(failures=failures, retry_at=retry_at, updated_at=now))


def release(engine: sa.Engine, key: str, node: str) -> None:
    c = report_deliveries.c
    with writing(engine) as conn:
        conn.execute(report_deliveries.update().where(c.key == key, c.claimed_by == node)
                     .values(claimed_by=None, claimed_until=None))


def owed(schedule: str, cursor: float, now: float, hour: int) -> list[tuple[float, float]]:
    """The periods due by ``now`` that end after ``cursor``, oldest first."""
    step = compute.WEEK if schedule == "weekly" else compute.DAY
    _, last = period(schedule, now, hour)
    out = []
    end = compute.bucket_start(cursor, "week" if schedule == "weekly" else "day") + step
    while end <= last:
        out.append((end - step, end))
        end += step
    return out


# --- the schedule ---------------------------------------------------------------------


@dataclass
class Schedule:
    """The serving relay's schedule: one :meth:`step` at a time, in a worker thread."""

    relay: Relay
    node: str = field(default_factory=lambda: secrets.token_hex(8))

    def step(self) -> float:
        """Deliver what is owed and due to be tried now; how long to wait (seconds). A
        way backing off (its row's ``retry_at``, set by whichever node failed last) is
        left alone until then."""
        cfg = self.relay.config
        now = clock.now()
        _, baseline = period(cfg.report_schedule, now, cfg.report_hour_utc)
        wait = next_due(cfg.report_schedule, now, cfg.report_hour_utc) - now
        reports: dict[tuple[float, float], dict[str, Any]] = {}
        for via in cfg.report_via:
            key = cursor_key(cfg.report_schedule, cfg.report_group, via)
            cursor = claim(self.relay.engine, key, self.node, baseline, time.time())
            if cursor is None:  # another node is delivering this one
                wait = min(wait, LEASE_S)
                continue
            try:
                retry = (cursor.retry_at or 0.0) - time.time()
                if 0 < retry <= RETRY_CAP_S:  # longer: the clock was stepped back
                    wait = min(wait, retry)
                    continue
                retry_in = self._catch_up(via, key, cursor, now, reports)
            finally:
                release(self.relay.engine, key, self.node)
            if retry_in is not None:
                wait = min(wait, retry_in)
        return max(1.0, min(wait, TICK_S))

    def _catch_up(self, via: str, key: str, cursor: Cursor, now: float,
                  reports: dict[tuple[float, float], dict[str, Any]]) -> float | None:
        """Deliver ``via``'s owed periods in order; when one failed (stopped there), the
        seconds until it is tried again."""
        relay, cfg = self.relay, self.relay.config
        group, target = cfg.report_group, _target(relay, via)
        due = owed(cfg.report_schedule, cursor.until, now, cfg.report_hour_utc)
        if len(due) > MAX_CATCH_UP:
            skipped, due = due[:-MAX_CATCH_UP], due[-MAX_CATCH_UP:]
            relay.record("relay", "report.delivery.skipped", target, via=via, group=group,
                         count=len(skipped), since=skipped[0][0], until=skipped[-1][1])
            if not advance(relay.engine, key, self.node, skipped[-1][1], time.time()):
                return None  # our claim lapsed: another node delivers this way now
            cursor = Cursor(skipped[-1][1])  # what is left is a newer period
        failures = cursor.failures
        for since, until in due:
            if (since, until) not in reports:
                reports[(since, until)] = compute.report(relay.engine, since=since,
                                                         until=until, group=group)
            attempt = failures + 1
            detail = _send(relay, reports[(since, until)], via)
            if detail:
                backoff = min(RETRY_CAP_S, cfg.report_retry_s * 2 ** (attempt - 1))
                back_off(relay.engine, key, self.node, attempt, time.time() + backoff,
                         time.time())
                log.error("scheduled management report via %s failed (attempt %d; again in "
                          "%.0f s): %s", via, attempt, backoff, detail)
                relay.record("relay", "report.delivery.failed", target, via=via,
                             detail=detail, group=group, since=since, until=until,
                             attempt=attempt, retry_in_s=backoff)
                return backoff
            failures = 0
            claimed = advance(relay.engine, key, self.node, until, time.time())
            extra = {"recipients": len(cfg.report_recipients)} if via == "smtp" else {}
            late = round(max(0.0, clock.now() - (until + cfg.report_hour_utc * HOUR)), 1)
            relay.record("relay", "report.delivered", target, via=via, group=group,
                         since=since, until=until, attempt=attempt, late_s=late, **extra)
            if not claimed:
                # Our claim lapsed while this one was sent (it was delivered: recorded
                # above); the node that holds the claim now delivers what is owed next.
                log.warning("scheduled report via %s: another node holds the delivery "
                            "now; this one stops", via)
                return None
        return None


async def run(relay: Relay) -> None:
    """The schedule, in the serving relay (one task; nothing when it is off)."""
    if not relay.config.report_schedule:
        return
    schedule = Schedule(relay)
    while True:
        try:
            wait = await asyncio.to_thread(schedule.step)
        except Exception:
            log.exception("the report schedule failed (the database?); trying again")
            wait = relay.config.report_retry_s
        await asyncio.sleep(wait)
