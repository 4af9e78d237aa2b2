"""Scheduled management reports (issue 14): ``backline-relay report send`` (the code the
schedule runs) delivers one report to a local webhook receiver, signed, and by e-mail to
a local SMTP server (aiosmtpd), each delivery audited; an SMTP server that is not there
is a ``report.delivery.failed`` and exit status 1; the schedule's periods and due times;
bad settings are refused.

The schedule itself, in a serving relay whose trail clock the test moves (the seam of
relay/reports/clock.py) and a webhook receiver on loopback: the first start owes
nothing; a report due is sent once; after a crash and three days down, the three periods
missed are sent, in order, each once, the oldest retried with back-off while the
receiver fails (each failure audited); after ten days down, the newest seven are sent
and the three before audited as skipped. Two nodes never deliver the same way at once.
"""

from __future__ import annotations

import json
import time
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from backline.relay import config
from backline.relay.reports import compute, delivery
from backline.relay.reports.delivery import next_due, period
from backline.relay.webhooks import verify
from tests.harness import RelayProcess, audit_actions, free_port, wait_for
from tests.integration.test_webhooks import SECRET, Receiver


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope)
        return "250 OK"


def test_report_send_by_webhook_and_mail(tmp_path: Path, initialised_relay: Path) -> None:
    inbox = Inbox()
    smtp = Controller(inbox, hostname="127.0.0.1", port=free_port())
    smtp.start()
    try:
        with Receiver([]) as rx:
            env = {"BACKLINE_WEBHOOK_URL": rx.url, "BACKLINE_WEBHOOK_SECRET": SECRET,
                   "BACKLINE_REPORT_VIA": "webhook,smtp",
                   "BACKLINE_REPORT_RECIPIENTS": "boss@example.test,audit@example.test",
                   "BACKLINE_SMTP_HOST": "127.0.0.1", "BACKLINE_SMTP_PORT": str(smtp.port),
                   "BACKLINE_SMTP_SECURITY": "none", "BACKLINE_SMTP_FROM": "relay@example.test"}
            relay = RelayProcess(tmp_path, env, template=initialised_relay)
            done = relay.cli("report", "send", "--days", "7", check=False)
            assert done.returncode == 0, done.stderr
            assert len(rx.requests) == 1
            hook = rx.requests[0]
            assert hook["headers"]["X-Backline-Event"] == "report.management"
            assert verify(SECRET, hook["body"], hook["headers"]["X-Backline-Signature"])
            body = json.loads(hook["body"])
            assert body["type"] == "report.management"
            assert body["data"]["metrics"]["incidents_opened"]["value"] == 0
            assert len(inbox.messages) == 1
            mail = inbox.messages[0]
            assert sorted(mail.rcpt_tos) == ["audit@example.test", "boss@example.test"]
            msg = message_from_bytes(mail.content)
            assert msg["Subject"].startswith("Backline management report")
            parts = {p.get_content_type(): p for p in msg.walk()}
            assert "incidents_opened: 0" in parts["text/plain"].get_payload(decode=True).decode()
            assert parts["text/csv"].get_filename() == "backline-report.csv"

            # The SMTP server goes away: the webhook still goes, the mail is a failure.
            smtp.stop()
            failed = relay.cli("report", "send", check=False)
            assert failed.returncode == 1 and "smtp:" in failed.stderr
            assert len(rx.requests) == 2
    finally:
        if smtp.loop.is_running():
            smtp.stop()
    events = audit_actions(relay)
    delivered = [e for e in events if e["action"] == "report.delivered"]
    assert [e["details"]["via"] for e in delivered] == ["webhook", "smtp", "webhook"]
    assert delivered[1]["target"] == "mailto:boss@example.test,audit@example.test"
    assert delivered[1]["details"]["recipients"] == 2
    assert SECRET not in json.dumps(events)
    bad = [e for e in events if e["action"] == "report.delivery.failed"]
    assert len(bad) == 1 and bad[0]["details"]["via"] == "smtp"


def test_schedule_periods_and_due_times() -> None:
    # Wednesday 2026-12-02 10:00 UTC.
    now = 1796205600.0
    assert compute.bucket_start(now, "week") == 1795996800.0  # Monday 2026-11-30 00:00
    since, until = period("weekly", now, 6)
    assert (since, until) == (1795996800.0 - compute.WEEK, 1795996800.0)
    assert next_due("weekly", now, 6) == 1795996800.0 + compute.WEEK + 6 * 3600
    since, until = period("daily", now, 6)
    assert until == 1796169600.0 and since == until - compute.DAY  # 2026-12-01, whole
    assert next_due("daily", now, 6) == 1796169600.0 + compute.DAY + 6 * 3600
    # Before 06:00 the report due is yesterday's morning one: the day before it.
    early = 1796169600.0 + 3600
    assert period("daily", early, 6) == (1796169600.0 - 2 * compute.DAY,
                                         1796169600.0 - compute.DAY)
    assert next_due("daily", early, 6) == 1796169600.0 + 6 * 3600


@pytest.mark.parametrize("settings", [
    {"report_schedule": "hourly", "report_via": ["webhook"]},
    {"report_schedule": "daily"},
    {"report_via": ["fax"]},
    {"report_via": ["webhook"]},
    {"report_via": ["smtp"], "smtp_host": "127.0.0.1", "smtp_from": "a@b"},
    {"report_via": ["smtp"], "smtp_host": "127.0.0.1", "smtp_from": "a@b",
     "report_recipients": ["not an address"]},
    {"smtp_host": "mail.example.test", "smtp_security": "none"},
    {"report_hour_utc": 24},
    # The report's webhook: a secret to sign it, https (plain http only to this machine).
    {"report_via": ["webhook"], "webhook_url": "https://tickets.example.test/in"},
    {"report_via": ["webhook"], "webhook_url": "http://tickets.example.test/in",
     "webhook_secret": "s3cret-for-tests-0123456789"},
    {"report_via": ["webhook"], "webhook_url": "http://127.0.0.1.example.test/in",
     "webhook_secret": "s3cret-for-tests-0123456789"},
])
def test_bad_report_settings_are_refused(settings: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError):
        config.load(overrides={"data_dir": tmp_path, **settings}, environ={})


def test_report_webhook_plain_http_only_to_this_machine(tmp_path: Path) -> None:
    for url in ("http://127.0.0.1:9/in", "http://[::1]:9/in", "http://localhost/in",
                "https://tickets.example.test/in"):
        cfg = config.load(overrides={"data_dir": tmp_path, "report_via": ["webhook"],
                                     "webhook_url": url, "webhook_secret": SECRET},
                          environ={})
        assert cfg.webhook_url == url


def test_report_webhook_follows_no_redirect_and_no_environment_proxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The report goes through the relay's one webhook sender: a proxy named by the
    environment is not used (it would see every signed report), and a redirect is a
    failure (it would turn the POST into a GET somewhere else), never followed."""
    from types import SimpleNamespace

    from backline.relay.reports.delivery import send_webhook
    from backline.relay.webhooks import WebhookSender

    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:1")  # nothing listens there
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with Receiver([302]) as rx:
        cfg = SimpleNamespace(webhook_url=rx.url, webhook_secret=SECRET,
                              effective_public_url="https://relay.test")
        relay = SimpleNamespace(config=cfg, webhooks=WebhookSender(
            rx.url, SECRET, lambda *a, **k: None, origin="https://relay.test"))
        summary = {"metrics": {}}
        monkeypatch.setattr(compute, "summary", lambda full: summary)
        with pytest.raises(OSError, match="HTTP 302"):
            send_webhook(relay, {})  # type: ignore[arg-type]
        send_webhook(relay, {})  # type: ignore[arg-type]
        assert len(rx.requests) == 2  # both reached the receiver, not the proxy
        hook = rx.requests[1]
        assert verify(SECRET, hook["body"], hook["headers"]["X-Backline-Signature"])
        body = json.loads(hook["body"])
        assert body["type"] == "report.management" and body["data"] == summary
        assert body["relay"] == "https://relay.test"


DAY, HOUR = compute.DAY, 3600.0


def test_the_schedule_sends_what_is_due_catches_up_after_a_crash_and_retries(
        tmp_path: Path, initialised_relay: Path) -> None:
    clock = tmp_path / "clock"
    midnight = (time.time() // DAY + 30) * DAY  # a UTC midnight a month ahead, "day 0"
    due = midnight + 6 * HOUR  # day -1's report is due then

    def trail_clock_at(t: float) -> None:
        clock.write_text(str(t - time.time()))

    def day(n: int) -> tuple[float, float]:
        return (midnight + n * DAY, midnight + (n + 1) * DAY)

    trail_clock_at(due - HOUR)
    with Receiver([]) as rx:
        def periods() -> list[tuple[float, float]]:
            out = []
            for hook in rx.requests:
                assert verify(SECRET, hook["body"], hook["headers"]["X-Backline-Signature"])
                data = json.loads(hook["body"])["data"]
                out.append((data["since"], data["until"]))
            return out

        env = {"BACKLINE_TEST_CLOCK_FILE": str(clock), "BACKLINE_WEBHOOK_URL": rx.url,
               "BACKLINE_WEBHOOK_SECRET": SECRET, "BACKLINE_REPORT_SCHEDULE": "daily",
               "BACKLINE_REPORT_HOUR_UTC": "6", "BACKLINE_REPORT_VIA": "webhook",
               "BACKLINE_REPORT_RETRY_S": "1"}
        relay = RelayProcess(tmp_path, env, template=initialised_relay).start()
        try:
            # The first start records where the schedule begins: nothing is owed.
            time.sleep(2)
            assert rx.requests == []
            relay.stop()
            # A few seconds before a report is due: it is sent at its time (or, after a
            # slow start, at once), once.
            trail_clock_at(due - 5)
            relay.start()
            wait_for(lambda: rx.requests, 30, "the report due")
            time.sleep(1.5)
            assert periods() == [day(-1)]
            # Killed, and down for three days; back, the receiver fails twice.
            relay.kill9()
            rx.statuses[:] = [500, 500]
            trail_clock_at(due + 3 * DAY + 10)
            relay.start()
            wait_for(lambda: len(rx.requests) >= 6, 60, "the three periods missed")
            time.sleep(1.5)
            assert periods() == [day(-1), day(0), day(0), day(0), day(1), day(2)]
            # Down for ten days: the newest seven are sent, the three before skipped.
            relay.stop()
            trail_clock_at(due + 13 * DAY + 10)
            relay.start()
            wait_for(lambda: len(rx.requests) >= 13, 60, "the newest seven")
            time.sleep(1.5)
            assert periods()[6:] == [day(n) for n in range(6, 13)]
        finally:
            relay.stop()
    events = audit_actions(relay)
    delivered = [e["details"] for e in events if e["action"] == "report.delivered"]
    # Each period delivered once, in order: nothing lost, nothing twice.
    assert [(d["since"], d["until"]) for d in delivered] == [
        day(n) for n in (-1, 0, 1, 2, *range(6, 13))]
    assert [d["attempt"] for d in delivered][:4] == [1, 3, 1, 1]
    assert delivered[1]["late_s"] >= 2 * DAY  # day 0's: due two days before the restart
    failed = [e for e in events if e["action"] == "report.delivery.failed"]
    assert [(f["details"]["attempt"], f["details"]["retry_in_s"]) for f in failed] == [
        (1, 1.0), (2, 2.0)]
    assert {(f["details"]["since"], f["details"]["until"]) for f in failed} == {day(0)}
    origin = rx.url.rsplit("/hooks/", 1)[0]  # the target without its path
    assert all(f["target"] == origin and "HTTP 500" in f["details"]["detail"] for f in failed)
    skipped = [e["details"] for e in events if e["action"] == "report.delivery.skipped"]
    assert skipped == [{"via": "webhook", "group": "", "count": 3, "since": day(3)[0],
                        "until": day(5)[1]}]


def test_one_node_delivers_a_way_at_a_time(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from backline.relay.schema import metadata

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'r.db'}")
    metadata.create_all(engine)
    key = delivery.cursor_key("daily", "", "webhook")
    assert delivery.claim(engine, key, "node-a", 100.0, now=1000.0) == delivery.Cursor(100.0)
    assert delivery.claim(engine, key, "node-b", 999.0, now=1001.0) is None  # a's, for now
    assert delivery.advance(engine, key, "node-a", 200.0, now=1002.0)
    assert not delivery.advance(engine, key, "node-b", 300.0, now=1003.0)
    delivery.release(engine, key, "node-b")  # not b's to release: still a's
    assert delivery.claim(engine, key, "node-b", 0.0, now=1004.0) is None
    delivery.release(engine, key, "node-a")
    assert delivery.claim(engine, key, "node-b", 0.0, now=1005.0) == delivery.Cursor(200.0)
    # A node that died holding it: taken over once its lease ran out.
    assert delivery.claim(engine, key, "node-a", 0.0, now=1006.0) is None
    assert delivery.claim(engine, key, "node-a", 0.0,
                          now=1005.0 + delivery.LEASE_S + 1) == delivery.Cursor(200.0)
    # A failure's back-off is the row's: the node that takes the way next (or this one
    # after a restart) sees the count and the time of the next try; a delivery ends it.
    t = 1006.0 + delivery.LEASE_S
    delivery.back_off(engine, key, "node-b", 2, t + 120, now=t)  # not b's: nothing
    delivery.back_off(engine, key, "node-a", 2, t + 120, now=t)
    delivery.release(engine, key, "node-a")
    assert delivery.claim(engine, key, "node-b", 0.0, now=t + 1) == delivery.Cursor(
        200.0, 2, t + 120)
    assert delivery.advance(engine, key, "node-b", 300.0, now=t + 130)
    assert delivery.claim(engine, key, "node-b", 0.0, now=t + 131) == delivery.Cursor(300.0)
    assert delivery.owed("daily", DAY * 10, DAY * 12 + 7 * HOUR, 6) == [
        (DAY * 10, DAY * 11), (DAY * 11, DAY * 12)]
    assert delivery.owed("daily", DAY * 10, DAY * 11 + 5 * HOUR, 6) == []  # not due yet
