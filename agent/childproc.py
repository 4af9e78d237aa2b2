"""One short-lived ``python -m MODULE`` child: a JSON request in, a JSON answer out.

The long-lived agent keeps cryptography (and asyncssh) out of its own process: the
handshake signature and the pin-set check (agent/keychild.py) and the fix documents
(agent/fixes/child.py) are each done by a child that exits afterwards, so its memory
goes back to the system. This is the one copy of how such a child is started, fed,
bounded in time and size, and reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from typing import Any

#: For ``create_subprocess_exec``: the child leads a process group of its own, so that
#: :func:`end` ends what it started too.
OWN_GROUP: dict[str, Any] = {"start_new_session": True} if os.name == "posix" else {}


async def end(proc: asyncio.subprocess.Process) -> None:
    """Kill a child started with :data:`OWN_GROUP`, with whatever it started, and reap
    it. Anything left holding its output pipe would otherwise keep the reader waiting
    past the timeout (a shell's ``sleep 30`` kept the agent 30 s after a 0.5 s one), or
    outlive it as an orphan."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        await proc.wait()


async def ask(module: str, request: dict[str, Any], *, max_request: int, max_answer: int,
              timeout_s: float, failed: type[OSError], what: str
              ) -> tuple[int | None, dict[str, Any] | None]:
    """``(exit status, answer object or None)`` of one ``python -m module`` fed
    ``request``. A request over ``max_request`` bytes is ``ValueError``; a child that
    cannot start or gives no answer in ``timeout_s`` is ``failed`` (an ``OSError``
    subclass; ``what`` names the child in its message). The child is always reaped."""
    data = (json.dumps(request) + "\n").encode()
    if len(data) > max_request:
        raise ValueError(f"request over {max_request} bytes")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", module, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, **OWN_GROUP)
    except OSError as exc:
        raise failed(f"could not start the {what}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate(data)
    except TimeoutError:
        raise failed(f"the {what} gave no answer in {timeout_s:g} s") from None
    finally:
        await end(proc)
    try:
        answer = json.loads(out) if len(out) <= max_answer else None
    except ValueError:
        answer = None
    return proc.returncode, answer if isinstance(answer, dict) else None
