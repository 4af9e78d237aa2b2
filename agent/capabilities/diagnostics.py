"""``diagnostics``: the report of ``agent/diagnostics`` (the engine), streamed as JSON lines."""

from __future__ import annotations

import json
from typing import Any

from backline.agent.capabilities.base import EXIT_BAD_REQUEST, SessionContext, read_request


async def run(process: Any, ctx: SessionContext) -> int | None:
    """The diagnostics report as JSON lines (``agent/diagnostics``), streamed.

    The relay first sends a small request (which sections) and closes its side; a
    request this agent cannot honour gets one ``error`` line and exit status 2."""
    from backline.agent.diagnostics import netcheck
    from backline.agent.diagnostics.config import ConfigError, DiagnosticsConfig, load_config
    from backline.agent.diagnostics.engine import serve_subsystem
    from backline.common.diagnostics.request import RequestError, parse_request

    try:
        request = parse_request(await read_request(process))
    except RequestError as exc:
        ctx.log.record("diagnostics.bad_request", session_id=ctx.session_id,
                       detail=str(exc)[:300])
        process.stdout.write(json.dumps({"type": "error", "error": "bad_request",
                                         "detail": str(exc)}) + "\n")
        await process.stdout.drain()
        return EXIT_BAD_REQUEST
    try:
        config = load_config(ctx.state_root)
    except ConfigError as exc:
        ctx.log.record("diagnostics.config_error", session_id=ctx.session_id,
                       detail=str(exc)[:300])
        config = DiagnosticsConfig()
    await serve_subsystem(process, config, clock=netcheck.relay_clock(),
                          only=request.sections)
    return None
