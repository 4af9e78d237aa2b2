"""The real agent (``backline-agent``'s own ``main``) with its ``info`` capability
replaced, for tests of what the relay does with a channel's output:

- ``BULKY_MODE=flood``: ``info`` writes ``BULKY_BYTES`` bytes (default 64 MiB) of JSON
  lines as fast as the channel takes them: far past the relay's 8 MiB bound;
- ``BULKY_MODE=hang``: ``info`` writes one line, creates the file ``BULKY_MARK``,
  then waits (for the test to kill the agent in the middle of the channel).

Run as ``python -m tests.bulky_agent --state-dir DIR run``. Everything else (enrollment,
the control socket, the tunnel, the SSH server, the local policy) is the agent's.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from backline.agent import capabilities, sessions
from backline.agent.capabilities import SessionContext

LINE = ('{"type":"filler","text":"' + "x" * 1000 + '"}\n')


async def bulky_info(process: Any, ctx: SessionContext) -> int:
    if os.environ.get("BULKY_MODE", "flood") == "hang":
        process.stdout.write('{"type":"started"}\n')
        await process.stdout.drain()
        mark = os.environ.get("BULKY_MARK")
        if mark:
            os.close(os.open(mark, os.O_CREAT | os.O_WRONLY))  # the test kills the agent now
        await asyncio.sleep(3600)
        return 0
    left = int(os.environ.get("BULKY_BYTES", str(64 * 1024 * 1024)))
    chunk = LINE * 64
    while left > 0:
        process.stdout.write(chunk[:left])
        await process.stdout.drain()
        left -= len(chunk)
    return 0


def registry() -> capabilities.Registry:
    reg = builtin()
    reg.register("info", bulky_info, "test: a lot of output, or none for a long time",
                 replace=True)
    return reg


builtin = capabilities.builtin_registry
capabilities.builtin_registry = registry
sessions.builtin_registry = registry  # type: ignore[attr-defined]

if __name__ == "__main__":
    from backline.agent.cli import main

    sys.exit(main())
