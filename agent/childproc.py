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
import subprocess
import sys
from typing import Any


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
            stderr=subprocess.DEVNULL)
    except OSError as exc:
        raise failed(f"could not start the {what}: {exc}") from exc
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await proc.communicate(data)
    except TimeoutError:
        raise failed(f"the {what} gave no answer in {timeout_s:g} s") from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    try:
        answer = json.loads(out) if len(out) <= max_answer else None
    except ValueError:
        answer = None
    return proc.returncode, answer if isinstance(answer, dict) else None
