"""Running blocking work without letting it block anything else.

psutil, ``getaddrinfo`` and ``statvfs`` can block for a long time (a hung NFS mount,
a dead resolver). Each such call runs in its own *daemon* thread, so that a timeout
really frees the caller: the event loop goes on, and a one-shot ``diagnose`` can exit
even while a thread is stuck in the kernel (a pool thread would be joined at exit).
Commands run as subprocesses with a timeout, no shell, a bounded output, and are
killed when time is up.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from backline.agent import childproc

T = TypeVar("T")

MAX_OUTPUT = 256 * 1024

# Names of blocking calls still stuck from an earlier run: a second run does not pile
# another thread onto the same hung mount or resolver, it reports the first one.
_stuck: set[str] = set()
_stuck_lock = threading.Lock()


class StillStuck(RuntimeError):
    """An earlier call with the same key has not returned yet."""


async def in_thread(fn: Callable[..., T], *args: Any, timeout: float, key: str | None = None
                    ) -> T:
    """Run ``fn(*args)`` in a daemon thread; raise TimeoutError after ``timeout``."""
    if key is not None:
        with _stuck_lock:
            if key in _stuck:
                raise StillStuck(f"{key}: an earlier call has not returned yet")
            _stuck.add(key)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(ok: bool, value: Any) -> None:
        if not future.done():
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def work() -> None:
        try:
            result: Any = fn(*args)
            ok = True
        except BaseException as exc:  # handed to the awaiting task, not lost
            result, ok = exc, False
        finally:
            if key is not None:
                with _stuck_lock:
                    _stuck.discard(key)
        try:
            loop.call_soon_threadsafe(deliver, ok, result)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    threading.Thread(target=work, name=f"diag-{key or getattr(fn, '__name__', 'call')}",
                     daemon=True).start()
    async with asyncio.timeout(timeout):
        return await future


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


def which(name: str) -> str | None:
    return shutil.which(name)


async def run_command(argv: Sequence[str], timeout: float, limit: int = MAX_OUTPUT
                      ) -> CommandResult:
    """Run a command (never through a shell) and return at most ``limit`` bytes of
    each output; the process is killed if it outlives ``timeout``."""
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "SYSTEMD_PAGER": "", "PAGER": "cat",
           "SYSTEMD_COLORS": "0", "NO_COLOR": "1"}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=env, **childproc.OWN_GROUP)
    assert proc.stdout is not None and proc.stderr is not None

    async def bounded(stream: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while chunk := await stream.read(64 * 1024):
            if len(data) < limit:  # past the limit, drain so the child never blocks
                data += chunk[: limit - len(data)]
        return bytes(data)

    try:
        async with asyncio.timeout(timeout):
            out, err = await asyncio.gather(bounded(proc.stdout), bounded(proc.stderr))
            code = await proc.wait()
    except BaseException:
        await childproc.end(proc)
        raise
    return CommandResult(code, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))
