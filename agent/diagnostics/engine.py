"""Running the collectors: all at once, each under its own timeout, streamed as they finish.

The public surface is small on purpose:

* :func:`run_diagnostics` - an async generator of :class:`Section`, in finishing order;
* :func:`collect` - the whole :class:`Report`, findings included;
* :func:`stream_lines` - the same as JSON lines, for the SSH ``diagnostics`` subsystem;
* :func:`serve_subsystem` - that subsystem, given an asyncssh-like process object;
* :func:`evaluate` (from :mod:`.rules`) - findings for any report.

A collector that raises or overruns its timeout becomes a section with
``status = "error"`` and the reason; it never takes the report down with it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol

from backline.agent.diagnostics import netcheck
from backline.agent.diagnostics.collectors import (
    ClockReference,
    Collector,
    Context,
    Unavailable,
    registry,
)
from backline.agent.diagnostics.config import DiagnosticsConfig
from backline.agent.diagnostics.rules import evaluate
from backline.agent.diagnostics.runner import StillStuck
from backline.common.diagnostics.schema import (
    SCHEMA_ID,
    SCHEMA_VERSION,
    SECTIONS,
    Report,
    Section,
    clean,
    report_from_lines,
)

__all__ = ["collect", "evaluate", "report_from_lines", "run_diagnostics", "serve_subsystem",
           "stream_lines"]

log = logging.getLogger("backline.agent.diagnostics")


def agent_info(config: DiagnosticsConfig) -> dict[str, str]:
    from backline.agent.facts import gather

    info = gather()
    if config.agent_id:
        info["agent_id"] = config.agent_id
    return info


async def _run_one(collector: Collector, ctx: Context, disabled: bool) -> Section:
    title = SECTIONS[collector.name]
    if disabled:
        return Section(collector.name, title, "unavailable",
                       summary="disabled by local configuration",
                       error="disabled by local configuration (diagnostics.disabled)")
    started = time.perf_counter()
    try:
        async with asyncio.timeout(ctx.timeout_s):
            data, summary = await collector.run(ctx)
        section = Section(collector.name, title, "ok", data, clean(summary))
    except Unavailable as exc:
        section = Section(collector.name, title, "unavailable", exc.data,
                          summary=clean(f"not available: {exc}"), error=clean(str(exc)))
    except TimeoutError:
        message = f"timed out after {ctx.timeout_s:g} s"
        section = Section(collector.name, title, "error", summary=message, error=message)
    except StillStuck as exc:
        section = Section(collector.name, title, "error", summary="still stuck",
                          error=clean(str(exc)))
    except Exception as exc:
        log.debug("collector %s failed", collector.name, exc_info=True)
        message = clean(f"{type(exc).__name__}: {exc}")
        section = Section(collector.name, title, "error", summary="failed", error=message)
    section.duration_ms = round((time.perf_counter() - started) * 1000, 1)
    return section


def _context(config: DiagnosticsConfig, clock: ClockReference | None, network: bool
             ) -> Context:
    return Context(config=config, timeout_s=config.timeout_s,
                   clock=clock if clock is not None else netcheck.relay_clock(),
                   network=network)


async def run_diagnostics(config: DiagnosticsConfig, *, only: Collection[str] | None = None,
                          clock: ClockReference | None = None, network: bool = True,
                          collectors: list[Collector] | None = None
                          ) -> AsyncIterator[Section]:
    """Start every collector now and yield each section as soon as it is done.

    ``only`` limits the run to some sections (the health check runs the cheap ones);
    ``clock`` is the relay's time if the caller has it (else the one remembered from
    the control socket, else the clock section says "unknown"); ``network=False``
    keeps every probe on the machine.
    """
    ctx = _context(config, clock, network)
    chosen = [c for c in (collectors or registry()) if only is None or c.name in only]
    tasks = [asyncio.create_task(_run_one(c, ctx, c.name in config.disabled),
                                 name=f"diagnostics-{c.name}") for c in chosen]
    try:
        for next_done in asyncio.as_completed(tasks):
            yield await next_done
    finally:
        for task in tasks:
            task.cancel()


def _order(sections: list[Section]) -> list[Section]:
    rank = {name: i for i, name in enumerate(SECTIONS)}
    return sorted(sections, key=lambda s: rank.get(s.name, len(rank)))


async def collect(config: DiagnosticsConfig, *, only: Collection[str] | None = None,
                  clock: ClockReference | None = None, network: bool = True,
                  cheap_rules: bool = False, collectors: list[Collector] | None = None
                  ) -> Report:
    """One complete report, sections in display order, findings evaluated."""
    started = time.time()
    sections = [s async for s in run_diagnostics(config, only=only, clock=clock,
                                                  network=network, collectors=collectors)]
    report = Report(agent=agent_info(config), started_at=started, finished_at=time.time(),
                    sections=_order(sections), thresholds=dict(config.thresholds))
    report.findings = evaluate(report, cheap_only=cheap_rules)
    return report


def _line(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


async def stream_lines(config: DiagnosticsConfig, clock: ClockReference | None = None,
                       only: Collection[str] | None = None) -> AsyncIterator[str]:
    """The report as JSON lines: ``begin``, one ``section`` per collector as it
    finishes, then ``end`` with the findings. The console can show each section
    the moment its line arrives."""
    started = time.time()
    yield _line({"type": "begin", "schema": SCHEMA_ID, "schema_version": SCHEMA_VERSION,
                 "agent": agent_info(config), "started_at": started,
                 "sections": [n for n in SECTIONS if only is None or n in only],
                 "thresholds": config.thresholds})
    sections: list[Section] = []
    async for section in run_diagnostics(config, clock=clock, only=only):
        sections.append(section)
        yield _line({"type": "section", "section": section.as_dict()})
    report = Report(agent={}, started_at=started, finished_at=time.time(),
                    sections=_order(sections), thresholds=dict(config.thresholds))
    findings = evaluate(report)
    yield _line({"type": "end", "finished_at": report.finished_at,
                 "duration_ms": report.duration_ms,
                 "findings": [f.as_dict() for f in findings]})


class _Writer(Protocol):
    def write(self, data: str) -> Any: ...

    async def drain(self) -> None: ...


class _Process(Protocol):
    @property
    def stdout(self) -> _Writer: ...

    def exit(self, status: int) -> None: ...


async def serve_subsystem(process: _Process, config: DiagnosticsConfig,
                          clock: ClockReference | None = None,
                          only: Collection[str] | None = None) -> None:
    """The SSH ``diagnostics`` subsystem: write the JSON lines to the channel (honouring
    its flow control), then exit 0. Policy is checked by the caller, before this."""
    status = 0
    try:
        async for line in stream_lines(config, clock, only):
            process.stdout.write(line)
            await process.stdout.drain()
    except (ConnectionError, BrokenPipeError):
        status = 1
    except Exception:
        log.exception("diagnostics subsystem failed")
        status = 1
    process.exit(status)
