"""Proactive health: a cheap check on a schedule, pushed to the relay as ``health`` alerts.

Only the *cheap* collectors run (local, fast: disk, memory, load, clock, failed
services) with network probes off, and only rules marked ``cheap = true`` are
judged, so ten thousand idle agents cost the relay nothing until something changes:
the agent sends a ``health`` message once per connection and then only when the
set of alerts (rule id and severity) changes. Info-level findings are not alerts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from backline.agent.diagnostics import netcheck
from backline.agent.diagnostics.config import ConfigError, DiagnosticsConfig, load_config
from backline.agent.diagnostics.engine import collect
from backline.common import protocol
from backline.common.diagnostics.schema import CHEAP_SECTIONS

log = logging.getLogger("backline.agent.health")

ALERT_SEVERITIES = ("critical", "warning")
FIRST_CHECK_MAX_S = 10.0


async def check_health(config: DiagnosticsConfig) -> list[dict[str, str]]:
    """The current alerts: ``[{id, severity, message}]``, most severe first."""
    report = await collect(config, only=CHEAP_SECTIONS, network=False, cheap_rules=True)
    alerts = [{"id": f.rule_id, "severity": f.severity, "message": f.summary[:512]}
              for f in report.findings if f.severity in ALERT_SEVERITIES]
    return alerts[: protocol.MAX_ALERTS]


# One machine has one health: connections sharing a process (a reconnect overlapping
# the old one, a load test running many sessions) share one check and its result.
SHARE_S = 30.0
_shared: tuple[float, asyncio.Future[list[dict[str, str]]]] | None = None


async def shared_check(config: DiagnosticsConfig) -> list[dict[str, str]]:
    """:func:`check_health`, shared with any check started in the last moments."""
    global _shared
    loop = asyncio.get_running_loop()
    share_s = min(SHARE_S, config.health_interval_s / 2)
    if _shared is None or not _reusable(_shared, loop, share_s):
        _shared = (loop.time(), asyncio.ensure_future(check_health(config)))
    return list(await asyncio.shield(_shared[1]))


def _reusable(shared: tuple[float, asyncio.Future[Any]], loop: asyncio.AbstractEventLoop,
              share_s: float) -> bool:
    started, future = shared
    if future.get_loop() is not loop or loop.time() - started > share_s:
        return False
    return not future.done() or (not future.cancelled() and future.exception() is None)


def _config(state_root: Path | None) -> DiagnosticsConfig:
    try:
        return load_config(state_root)
    except ConfigError as exc:
        log.warning("health check uses default settings: %s", exc)
        return DiagnosticsConfig()


async def health_loop(send: Callable[[str], Awaitable[Any]], state_root: Path | None = None,
                      relay_time: float | None = None) -> None:
    """Run for the life of one control connection (the caller cancels it).

    ``relay_time`` from the relay's ``welcome`` lets the clock rules run, and lets
    later diagnostics runs report the offset without asking the relay again.
    """
    if relay_time is not None:
        netcheck.remember_relay_time(relay_time)
    config = _config(state_root)
    if not config.health_interval_s:
        return  # switched off: diagnostics.health_interval_s = 0
    # Spread the first check, so agents reconnecting together do not report together.
    await asyncio.sleep(random.uniform(0, min(config.health_interval_s, FIRST_CHECK_MAX_S)))
    sent: frozenset[tuple[str, str]] | None = None
    while True:
        try:
            alerts = await shared_check(config)
        except Exception:
            log.warning("health check failed; will try again", exc_info=True)
            alerts = None
        if alerts is not None:
            key = frozenset((a["id"], a["severity"]) for a in alerts)
            if key != sent:
                try:
                    await send(protocol.encode("health", alerts=alerts))
                except Exception as exc:  # the connection is going; the session notices
                    log.debug("could not send health alerts: %s", exc)
                    return
                sent = key
                log.info("health: %s", ", ".join(sorted(a["id"] for a in alerts)) or "ok")
        await asyncio.sleep(config.health_interval_s)
        config = _config(state_root)
        if not config.health_interval_s:
            return
