"""Proactive health: a cheap check on a schedule, pushed to the relay as ``health`` alerts.

Only the *cheap* collectors run (local, fast: disk, memory, load, clock, failed
services) with network probes off, and only rules marked ``cheap = true`` are
judged, so ten thousand idle agents cost the relay nothing until something changes:
the agent sends a ``health`` message once per connection and then only when the
set of alerts (rule id and severity) changes. Info-level findings are not alerts.

The background agent runs each check in a short-lived child process
(``python -m backline.agent.diagnostics.health``), so the collectors and psutil are
never loaded into the long-lived agent: it stays small while idle, and a check that
hangs (a stuck mount) is killed with its process. Its output is bounded and checked
like any input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from backline.agent import childproc
from backline.agent.diagnostics import relaytime
from backline.agent.diagnostics.config import ConfigError, DiagnosticsConfig, load_config
from backline.common import protocol

log = logging.getLogger("backline.agent.health")

ALERT_SEVERITIES = ("critical", "warning")
FIRST_CHECK_MAX_S = 10.0
#: A child's check: how long it may take, and how much it may print.
CHILD_TIMEOUT_S = 60.0
CHILD_MAX_OUTPUT = 64 * 1024


async def check_health(config: DiagnosticsConfig) -> list[dict[str, str]]:
    """The current alerts: ``[{id, severity, message}]``, most severe first."""
    from backline.agent.diagnostics.engine import collect  # the collectors, psutil
    from backline.common.diagnostics.schema import CHEAP_SECTIONS

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


async def check_in_child(state_root: Path | None) -> list[dict[str, str]]:
    """:func:`check_health` in a child process; its answer is validated here."""
    argv = [sys.executable, "-m", "backline.agent.diagnostics.health"]
    if state_root is not None:
        argv += ["--state-root", str(state_root)]
    now = relaytime.relay_now()
    if now is not None:
        argv += ["--relay-time", repr(now)]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        **childproc.OWN_GROUP)
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(CHILD_TIMEOUT_S):
            out = await proc.stdout.read(CHILD_MAX_OUTPUT + 1)
            code = await proc.wait()
    finally:
        await childproc.end(proc)
    if code != 0 or len(out) > CHILD_MAX_OUTPUT:
        raise RuntimeError(f"the health check process failed (exit status {code})")
    return parse_alerts(out)


def parse_alerts(raw: bytes) -> list[dict[str, str]]:
    """The child's JSON list of alerts, each checked; anything else is an error."""
    data = json.loads(raw)
    if not isinstance(data, list):
        raise ValueError("the health check printed no list")
    alerts = []
    for item in data[: protocol.MAX_ALERTS]:
        if not isinstance(item, dict) or item.get("severity") not in ALERT_SEVERITIES or \
                not all(isinstance(item.get(k), str) for k in ("id", "message")):
            raise ValueError("the health check printed a malformed alert")
        alerts.append({"id": item["id"][:128], "severity": item["severity"],
                       "message": item["message"][:512]})
    return alerts


async def health_loop(send: Callable[[str], Awaitable[Any]], state_root: Path | None = None,
                      relay_time: float | None = None, isolated: bool = True) -> None:
    """Run for the life of one control connection (the caller cancels it).

    ``relay_time`` from the relay's ``welcome`` lets the clock rules run, and lets
    later diagnostics runs report the offset without asking the relay again.
    ``isolated`` (the default) runs each check in a child process; otherwise in this
    one, shared with other connections of the process (:func:`shared_check`).
    """
    if relay_time is not None:
        relaytime.remember(relay_time)
    config = _config(state_root)
    if not config.health_interval_s:
        return  # switched off: diagnostics.health_interval_s = 0
    # Spread the first check, so agents reconnecting together do not report together.
    await asyncio.sleep(random.uniform(0, min(config.health_interval_s, FIRST_CHECK_MAX_S)))
    sent: frozenset[tuple[str, str]] | None = None
    while True:
        try:
            alerts = await (check_in_child(state_root) if isolated else shared_check(config))
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


def main(argv: list[str] | None = None) -> int:
    """The child of :func:`check_in_child`: one check, its alerts as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m backline.agent.diagnostics.health")
    p.add_argument("--state-root", type=Path, default=None)
    p.add_argument("--relay-time", type=float, default=None)
    args = p.parse_args(argv)
    if args.relay_time is not None:
        relaytime.remember(args.relay_time)
    alerts = asyncio.run(check_health(_config(args.state_root)))
    sys.stdout.write(json.dumps(alerts) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
