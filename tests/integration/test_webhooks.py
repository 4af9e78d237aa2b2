"""Outgoing webhooks against a real HTTP server on loopback: signed bodies, retries
with backoff, failures audited (never silent), health alerts sent only on change."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from backline.relay import config as relay_config
from backline.relay.webhooks import WebhookSender, verify

SECRET = "s3cret-for-tests-0123456789"


class Receiver:
    """A tiny webhook receiver: answers each POST with the next planned status."""

    def __init__(self, statuses: list[int], default: int = 200) -> None:
        self.statuses = list(statuses)
        self.default = default
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body,
                                          "path": self.path})
                status = receiver.statuses.pop(0) if receiver.statuses else receiver.default
                self.send_response(status)
                if status in (301, 302, 307):
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/backline"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


class Audit:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, dict[str, Any]]] = []

    def __call__(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        self.events.append((actor, action, target, details))

    def actions(self) -> list[str]:
        return [e[1] for e in self.events]


@pytest.fixture
def audit() -> Iterator[Audit]:
    yield Audit()


def sender(url: str, audit: Audit, **kw: Any) -> WebhookSender:
    kw.setdefault("attempts", 3)
    kw.setdefault("base_delay_s", 0.05)
    kw.setdefault("timeout_s", 3)
    return WebhookSender(url, SECRET, audit, origin="https://relay.test", **kw)


async def _send_and_drain(s: WebhookSender, *events: tuple[str, dict[str, Any]]) -> None:
    for event_type, data in events:
        s.submit(event_type, data)
    assert await s.drain(15)
    await s.stop()


def test_delivery_is_signed_and_retried_after_a_failure(audit: Audit) -> None:
    with Receiver([500]) as rx:
        s = sender(rx.url, audit)
        asyncio.run(_send_and_drain(s, ("agent.health", {"agent_id": "ag_x", "alerts": []})))
    assert len(rx.requests) == 2, "the first attempt failed, the second must follow"
    first, second = rx.requests
    assert first["body"] == second["body"]
    headers = second["headers"]
    assert headers["X-Backline-Event"] == "agent.health"
    assert headers["Content-Type"] == "application/json"
    expected = "sha256=" + hmac.new(SECRET.encode(), second["body"], hashlib.sha256).hexdigest()
    assert headers["X-Backline-Signature"] == expected
    assert verify(SECRET, second["body"], headers["X-Backline-Signature"])
    assert not verify("another secret", second["body"], headers["X-Backline-Signature"])
    body = json.loads(second["body"])
    assert body["type"] == "agent.health" and body["id"] == headers["X-Backline-Delivery"]
    assert body["relay"] == "https://relay.test" and body["data"]["agent_id"] == "ag_x"
    assert s.delivered == 1 and s.failed == 0
    assert "webhook.failed" not in audit.actions()


def test_last_failure_is_logged_and_audited(audit: Audit) -> None:
    with Receiver([], default=503) as rx:
        s = sender(rx.url, audit)
        asyncio.run(_send_and_drain(s, ("session.start", {"session": "se_1"})))
    assert len(rx.requests) == 3
    assert s.failed == 1 and s.delivered == 0
    actor, action, target, details = audit.events[-1]
    assert (actor, action) == ("relay", "webhook.failed")
    assert target == rx.url.rsplit("/hooks", 1)[0]
    assert details["event_type"] == "session.start" and details["reason"] == "HTTP 503"
    assert details["attempts"] == 3


def test_redirects_are_not_followed(audit: Audit) -> None:
    with Receiver([], default=302) as rx:
        s = sender(rx.url, audit, attempts=1)
        asyncio.run(_send_and_drain(s, ("agent.health", {})))
    assert len(rx.requests) == 1 and s.failed == 1
    assert audit.events[-1][3]["reason"] == "HTTP 302"


def test_unreachable_receiver_and_full_queue_are_audited(audit: Audit) -> None:
    from tests.harness import free_port

    async def run() -> WebhookSender:
        s = sender(f"http://127.0.0.1:{free_port()}/", audit, attempts=2, max_queue=1,
                   workers=1)
        assert s.submit("agent.health", {"n": 1})
        assert not s.submit("agent.health", {"n": 2})  # queue full: dropped, and said so
        assert await s.drain(10)
        await s.stop()
        return s

    s = asyncio.run(run())
    reasons = [e[3]["reason"] for e in audit.events if e[1] == "webhook.failed"]
    assert reasons[0] == "queue_full" and len(reasons) == 2
    assert "refused" in reasons[1].lower() or "errno" in reasons[1].lower()
    assert s.failed == 2


def test_notify_never_blocks_the_event_loop(audit: Audit) -> None:
    class SlowHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            threading.Event().wait(0.5)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        async def run() -> float:
            s = sender(f"http://127.0.0.1:{server.server_address[1]}/", audit)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for i in range(6):
                s.submit("agent.health", {"n": i})
            submitted = loop.time() - started
            ticks = 0
            while s._queue is not None and s._queue.qsize() and ticks < 30:
                await asyncio.sleep(0.01)  # the loop keeps running while deliveries wait
                ticks += 1
            await s.stop(flush_s=0.1)
            return submitted

        assert asyncio.run(run()) < 0.1
    finally:
        server.shutdown()
        server.server_close()
    assert "webhook.failed" in [e[1] for e in audit.events]  # unsent at shutdown: audited


def test_health_events_only_when_alerts_change(audit: Audit) -> None:
    disk = {"id": "disk-full", "severity": "critical", "message": "/ is 99% full"}
    info = {"id": "long-uptime", "severity": "info", "message": "up 90 days"}
    with Receiver([]) as rx:
        async def run() -> None:
            s = sender(rx.url, audit,
                       lookup_agent=lambda agent_id: {"hostname": "pc-17", "label": "",
                                                      "group": "default"})
            assert not s.agent_health("ag_1", 1, [info])  # info alone is no alert
            assert s.agent_health("ag_1", 1, [disk, info])
            assert not s.agent_health("ag_1", 1, [disk])  # same set (reconnect): no repeat
            assert s.agent_health("ag_1", 1, [])  # cleared: resolved
            assert not s.agent_health("ag_1", 1, [])
            assert await s.drain(10)
            await s.stop()

        asyncio.run(run())
    bodies = [json.loads(r["body"]) for r in rx.requests]
    assert [b["data"]["status"] for b in bodies] == ["alerting", "resolved"]
    assert bodies[0]["data"]["alerts"] == [disk]
    assert bodies[0]["data"]["hostname"] == "pc-17"


def test_event_filter(audit: Audit) -> None:
    s = sender("http://127.0.0.1:1/", audit, events=["session.*"])
    assert s.wants("session.start") and s.wants("session.end")
    assert not s.wants("agent.health")
    assert not WebhookSender("", "", audit).enabled
    assert not WebhookSender("file:///etc/passwd", SECRET, audit).enabled


def test_outside_the_event_loop_is_audited_not_silent(audit: Audit) -> None:
    s = sender("http://127.0.0.1:1/", audit)
    assert not s.submit("agent.health", {})
    assert audit.events[-1][3]["reason"] == "no_event_loop"


def test_config_validates_and_hides_the_secret(tmp_path: Path) -> None:
    env = {"BACKLINE_DATA_DIR": str(tmp_path), "BACKLINE_WEBHOOK_URL":
           "https://hook:pw@tickets.example/in", "BACKLINE_WEBHOOK_SECRET": SECRET,
           "BACKLINE_WEBHOOK_EVENTS": "agent.health, session.*"}
    cfg = relay_config.load(environ=env)
    assert cfg.webhook_events == ["agent.health", "session.*"]
    shown = cfg.shown()
    assert shown["webhook_secret"] == "***" and SECRET not in json.dumps(shown)
    assert "pw" not in shown["webhook_url"]
    with pytest.raises(relay_config.ConfigError, match="webhook_secret"):
        relay_config.load(environ={**env, "BACKLINE_WEBHOOK_SECRET": "short"})
    with pytest.raises(relay_config.ConfigError, match="http"):
        relay_config.load(environ={**env, "BACKLINE_WEBHOOK_URL": "ftp://x/"})


def test_the_relays_sender_delivers_signed_events(tmp_path: Path) -> None:
    from backline.relay.state import open_relay

    with Receiver([]) as rx:
        cfg = relay_config.load(environ={"BACKLINE_DATA_DIR": str(tmp_path),
                                         "BACKLINE_WEBHOOK_URL": rx.url,
                                         "BACKLINE_WEBHOOK_SECRET": SECRET})
        relay = open_relay(cfg)

        async def run() -> None:
            assert relay.webhooks.submit("session.start", {"session_id": "se_1", "agent_id": "ag_1",
                                                          "technician": "ann"})
            await relay.stop_background()  # flushes the queue

        asyncio.run(run())
    assert len(rx.requests) == 1
    body = rx.requests[0]["body"]
    assert verify(SECRET, body, rx.requests[0]["headers"]["X-Backline-Signature"])
    assert json.loads(body)["data"]["technician"] == "ann"
