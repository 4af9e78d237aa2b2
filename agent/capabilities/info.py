"""``info``: one JSON object about this agent and session (allowed by default)."""

from __future__ import annotations

import json
import platform
import sys
import time
from typing import Any

from backline.agent.capabilities.base import SessionContext
from backline.agent.facts import gather
from backline.common import __version__


async def run(process: Any, ctx: SessionContext) -> int:
    """One JSON object about this agent and session; reads nothing private."""
    body = {
        "agent": {**gather(), "version": __version__, "python": platform.python_version(),
                  "platform": sys.platform},
        "session": {"id": ctx.session_id, "principal": ctx.principal, "mode": ctx.mode,
                    "technician": ctx.technician, "capabilities": list(ctx.capabilities)},
        "policy": {"source": ctx.policy.source, "capabilities": ctx.policy.summary()},
        "time": round(time.time(), 3),
    }
    process.stdout.write(json.dumps(body, ensure_ascii=False) + "\n")
    await process.stdout.drain()
    return 0
