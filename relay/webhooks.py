"""Outgoing webhooks: agent health alerts and session events, POSTed as signed JSON.

For ticketing and chat systems. Each delivery is a JSON body::

    {"id": "evt_...", "type": "agent.health", "time": 1700000000.0,
     "relay": "https://relay.example", "data": {...}}

with ``X-Backline-Event: <type>``, ``X-Backline-Delivery: <id>`` and
``X-Backline-Signature: sha256=<hex HMAC-SHA256 of the raw body with webhook_secret>``;
receivers recompute the HMAC over the bytes they received and compare in constant
time, and may refuse old ``time`` values or repeated ids.

:func:`notify` never blocks its caller: events go into a bounded queue that two
background tasks drain, retrying each failed delivery with exponential backoff.
Nothing is lost silently: an event that fails its last attempt, or finds the queue
full, is logged and audited as ``webhook.failed``. Everything in ``data`` that came
from an agent is the agent's word: receivers must treat it as untrusted text.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from backline.common import __version__

if TYPE_CHECKING:
    from backline.relay.config import RelayConfig

log = logging.getLogger("backline.relay.webhooks")

SIGNATURE_HEADER = "X-Backline-Signature"
EVENT_HEADER = "X-Backline-Event"
DELIVERY_HEADER = "X-Backline-Delivery"
ALERT_SEVERITIES = ("critical", "warning")

Recorder = Callable[..., None]
AgentLookup = Callable[[str], "dict[str, Any] | None"]


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does (shown here so the docs and tests share it)."""
    # As bytes: compare_digest raises TypeError on a non-ASCII str header.
    return hmac.compare_digest(sign(secret, body).encode(),
                               (header or "").encode("utf-8", "replace"))


@dataclass
class Delivery:
    id: str
    type: str
    body: bytes


class NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect would turn the POST into a GET to somewhere else: treat it as a failure."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class WebhookSender:
    """A bounded queue of deliveries and the tasks that send them, with retries."""

    def __init__(self, url: str, secret: str, record: Recorder, origin: str = "",
                 events: list[str] | None = None, attempts: int = 5,
                 base_delay_s: float = 1.0, timeout_s: float = 5.0, max_queue: int = 1000,
                 workers: int = 1, lookup_agent: AgentLookup | None = None) -> None:
        self.url = url
        self.lookup_agent = lookup_agent
        self.secret = secret
        self.record = record
        self.origin = origin
        self.events = list(events or [])
        self.attempts = attempts
        self.base_delay_s = base_delay_s
        self.timeout_s = timeout_s
        self.max_queue = max_queue
        self.workers = workers
        self.delivered = 0
        self.failed = 0
        self._queue: asyncio.Queue[Delivery] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dropped = 0
        self._dropped_reported_at = 0.0
        self._health: dict[str, frozenset[tuple[str, str]]] = {}
        # No redirects (see NoRedirect) and no proxy from the environment (HTTPS_PROXY
        # and friends would route signed alerts and reports through whatever the relay's
        # environment names): the configured URL, directly, or nothing.
        self._opener = urllib.request.build_opener(NoRedirect,
                                                   urllib.request.ProxyHandler({}))

    @classmethod
    def from_config(cls, config: RelayConfig, record: Recorder,
                    lookup_agent: AgentLookup | None = None) -> WebhookSender:
        return cls(config.webhook_url, config.webhook_secret, record,
                   origin=config.effective_public_url, events=config.webhook_events,
                   lookup_agent=lookup_agent)

    @property
    def enabled(self) -> bool:
        return bool(self.secret) and self.url.startswith(("https://", "http://"))

    @property
    def target(self) -> str:
        """Where deliveries go, without any credentials or query in the URL."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"

    def wants(self, event_type: str) -> bool:
        if not self.events:
            return True
        return any(event_type == e or (e.endswith(".*") and event_type.startswith(e[:-1]))
                   for e in self.events)

    def submit(self, event_type: str, data: dict[str, Any]) -> bool:
        """Queue one event (from the event loop); ``False`` if it was not queued."""
        if not self.enabled or not self.wants(event_type):
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a caller outside the relay's event loop: say so, loudly
            self.failed += 1
            log.error("webhook %s event raised outside the event loop; not sent", event_type)
            self.record("relay", "webhook.failed", self.target, reason="no_event_loop",
                        event_type=event_type)
            return False
        if self._queue is None:
            self._queue = asyncio.Queue(self.max_queue)
            self._tasks = [asyncio.create_task(self._worker(), name=f"webhook-{i}")
                           for i in range(self.workers)]
        try:
            self._queue.put_nowait(self._delivery(event_type, data))
        except asyncio.QueueFull:
            self._drop(event_type)
            return False
        return True

    def _delivery(self, event_type: str, data: dict[str, Any]) -> Delivery:
        event_id = "evt_" + secrets.token_hex(12)
        body = json.dumps({"id": event_id, "type": event_type, "time": round(time.time(), 3),
                           "relay": self.origin, "data": data},
                          ensure_ascii=False, separators=(",", ":")).encode()
        return Delivery(event_id, event_type, body)

    def send_blocking(self, event_type: str, data: dict[str, Any]) -> None:
        """Send one event now, once, from a worker thread (the scheduled report: its
        caller audits the outcome and a rerun resends it); the same signed body, opener
        and checks as queued events. ``OSError`` unless answered 2xx, ``ValueError``
        when no webhook is configured."""
        if not self.enabled:
            raise ValueError("no webhook configured (webhook_url and webhook_secret)")
        try:
            status = self._post(self._delivery(event_type, data))
        except urllib.error.URLError as exc:
            raise OSError(str(exc.reason)[:200]) from None
        if not 200 <= status < 300:
            raise OSError(f"HTTP {status}")

    def _drop(self, event_type: str) -> None:
        self._dropped += 1
        self.failed += 1
        log.error("webhook queue full (%d events); dropped a %s event", self.max_queue,
                  event_type)
        now = time.monotonic()
        if now - self._dropped_reported_at >= 60:  # one audit record a minute, with a count
            self.record("relay", "webhook.failed", self.target, reason="queue_full",
                        dropped=self._dropped, event_type=event_type)
            self._dropped, self._dropped_reported_at = 0, now

    async def _worker(self) -> None:
        assert self._queue is not None
        while True:
            delivery = await self._queue.get()
            try:
                await self._deliver(delivery)
            except Exception:
                log.exception("webhook delivery %s crashed", delivery.id)
            finally:
                self._queue.task_done()

    async def _deliver(self, delivery: Delivery) -> None:
        error = ""
        for attempt in range(1, self.attempts + 1):
            try:
                status = await asyncio.to_thread(self._post, delivery)
                if 200 <= status < 300:
                    self.delivered += 1
                    return
                error = f"HTTP {status}"
            except (OSError, ValueError) as exc:
                error = str(getattr(exc, "reason", None) or exc)[:200]
            if attempt < self.attempts:
                delay = self.base_delay_s * 2 ** (attempt - 1)
                log.info("webhook %s attempt %d failed (%s); retrying in %.1f s",
                         delivery.id, attempt, error, delay)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
        self.failed += 1
        log.error("webhook %s (%s) failed after %d attempts: %s", delivery.id, delivery.type,
                  self.attempts, error)
        self.record("relay", "webhook.failed", self.target, event_id=delivery.id,
                    event_type=delivery.type, attempts=self.attempts, reason=error)

    def _post(self, delivery: Delivery) -> int:
        request = urllib.request.Request(  # noqa: S310 - enabled only for http(s) URLs
            self.url, data=delivery.body, method="POST", headers={
            "Content-Type": "application/json",
            "User-Agent": f"backline-relay/{__version__}",
            EVENT_HEADER: delivery.type,
            DELIVERY_HEADER: delivery.id,
            SIGNATURE_HEADER: sign(self.secret, delivery.body),
        })
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until the queue is empty (true) or ``timeout_s`` passed (false)."""
        if self._queue is None:
            return True
        try:
            async with asyncio.timeout(timeout_s):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def stop(self, flush_s: float = 3.0) -> None:
        """Give queued deliveries a moment, then stop; what is left is audited."""
        if self._queue is None:
            return
        if not await self.drain(flush_s):
            left = self._queue.qsize()
            log.error("stopping with %d webhook deliveries unsent", left)
            self.record("relay", "webhook.failed", self.target, reason="shutdown",
                        dropped=left)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._queue = None

    def agent_health(self, agent_id: str, group_id: Any, alerts: list[dict[str, str]]
                     ) -> bool:
        """``agent.health`` when an agent's warning/critical alerts change (including
        when they clear, so a ticket can be closed); info alerts and repeats (an agent
        reports again on every reconnect) are not sent."""
        if not self.enabled or not self.health_changed(agent_id, alerts):
            return False
        active = [a for a in alerts if a.get("severity") in ALERT_SEVERITIES]
        data: dict[str, Any] = {"agent_id": agent_id, "group_id": group_id, "alerts": active,
                                "status": "alerting" if active else "resolved"}
        if self.lookup_agent is not None:
            try:
                agent = self.lookup_agent(agent_id) or {}
                data.update({k: agent.get(k) for k in ("hostname", "label", "group")})
            except Exception:  # the event matters more than its decoration
                log.debug("could not look up agent %s for a webhook", agent_id, exc_info=True)
        return self.submit("agent.health", data)

    def health_changed(self, agent_id: str, alerts: list[dict[str, str]]) -> bool:
        """Remember an agent's warning/critical alerts; true if the set changed."""
        current = frozenset((a["id"], a["severity"]) for a in alerts
                            if a.get("severity") in ALERT_SEVERITIES)
        before = self._health.get(agent_id, frozenset())
        if current:
            self._health[agent_id] = current
        else:
            self._health.pop(agent_id, None)
        return current != before
