"""Scheduled management reports (docs/reports.md "Scheduled delivery"): the report for
the previous day or week, sent by webhook (the relay's webhook sender: signed, no
redirects, no environment proxy) and/or
e-mail (``smtplib``, in a worker thread), each delivery audited (``report.delivered``,
``report.delivery.failed``).

A delivery missed while the relay was down is not caught up: the schedule runs from the
next due time after a start. ``backline-relay report send`` sends one now (the same
code), e.g. to resend a missed one.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

from backline.relay.reports import clock, compute

if TYPE_CHECKING:
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.reports")

HOUR = 3600.0


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


def deliver(relay: Relay, since: float, until: float, group: str = "") -> list[str]:
    """Compute the report and send it each configured way; audited. Blocking (call it in
    a thread). The ways that failed, in words (empty: all delivered)."""
    cfg = relay.config
    full = compute.report(relay.engine, since=since, until=until, group=group)
    failed = []
    for via in cfg.report_via:
        target = (relay.webhooks.target if via == "webhook"
                  else "mailto:" + ",".join(cfg.report_recipients))[:256]
        try:
            if via == "webhook":
                send_webhook(relay, full)
            else:
                send_mail(relay, full)
        except (OSError, smtplib.SMTPException, ValueError) as exc:
            detail = f"{type(exc).__name__}: {exc}"[:200]
            log.error("management report via %s failed: %s", via, detail)
            relay.record("relay", "report.delivery.failed", target, via=via, detail=detail)
            failed.append(f"{via}: {detail}")
            continue
        extra = {"recipients": len(cfg.report_recipients)} if via == "smtp" else {}
        relay.record("relay", "report.delivered", target, via=via, group=group,
                     since=since, until=until, **extra)
    return failed


async def run(relay: Relay) -> None:
    """The schedule, in the serving relay (one task; nothing when it is off)."""
    cfg = relay.config
    if not cfg.report_schedule:
        return
    while True:
        due = next_due(cfg.report_schedule, clock.now(), cfg.report_hour_utc)
        await asyncio.sleep(max(1.0, due - clock.now()))
        since, until = period(cfg.report_schedule, clock.now(), cfg.report_hour_utc)
        try:
            await asyncio.to_thread(deliver, relay, since, until, cfg.report_group)
        except Exception:
            log.exception("the scheduled management report failed; next one as planned")
