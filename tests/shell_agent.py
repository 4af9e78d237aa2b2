"""The real agent (``backline-agent``'s own ``main``), with a ``shell`` capability for
the relay's terminal tests while the agent's own (agent/capabilities/shell.py) is not
on this branch: a ``/bin/sh`` in a pty, bytes both ways, window changes resize it.

When the agent ships its own ``shell`` (``"shell" in capabilities.BUILTIN``), nothing
is replaced: the tests then run against the real one.

Run as ``python -m tests.shell_agent --state-dir DIR run``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import sys
import termios
from typing import Any

import asyncssh

from backline.agent import capabilities, sessions, sshserver
from backline.agent.capabilities import SessionContext


def _size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _controlling() -> None:  # in the child, before exec
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def test_shell(process: Any, ctx: SessionContext) -> int:
    cols, rows, _, _ = process.get_terminal_size()
    master, slave = os.openpty()
    _size(slave, cols or 80, rows or 24)
    env = {"TERM": process.get_terminal_type() or "xterm", "PATH": "/usr/bin:/bin",
           "HOME": os.environ.get("HOME", "/"), "PS1": "$ ", "LANG": "C.UTF-8"}
    proc = await asyncio.create_subprocess_exec(
        "/bin/sh", "-i", stdin=slave, stdout=slave, stderr=slave, env=env,
        start_new_session=True, preexec_fn=_controlling)
    os.close(slave)
    os.set_blocking(master, False)
    loop = asyncio.get_running_loop()

    async def readable() -> None:
        ready: asyncio.Future[None] = loop.create_future()
        loop.add_reader(master, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(master)

    async def output() -> None:
        while True:
            await readable()
            try:
                data = os.read(master, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            if not data:
                return
            process.stdout.write(data)
            await process.stdout.drain()

    async def typing() -> None:
        while True:
            try:
                data = await process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as change:
                _size(master, change.width, change.height)
                continue
            if not data:
                return
            os.write(master, data)

    out = asyncio.ensure_future(output())
    keys = asyncio.ensure_future(typing())
    shell = asyncio.ensure_future(proc.wait())
    closed = asyncio.ensure_future(process.wait_closed())
    try:
        await asyncio.wait({shell, closed}, return_when=asyncio.FIRST_COMPLETED)
        if shell.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(out), 2)
    finally:
        for task in (out, keys, closed):
            task.cancel()
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
            await proc.wait()
        os.close(master)
    return proc.returncode if proc.returncode is not None and proc.returncode >= 0 else 1


class _PtyProcess(sshserver.CapabilityProcess):
    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        if not self._server.screen(subsystem):
            return False
        if subsystem == "shell":
            self._chan.set_encoding(None)
            self._encoding = None
        return True


if "shell" not in capabilities.BUILTIN:
    builtin = capabilities.builtin_registry

    def registry() -> capabilities.Registry:
        reg = builtin()
        reg.register("shell", test_shell, "test: /bin/sh in a pty")
        return reg

    capabilities.builtin_registry = registry
    sessions.builtin_registry = registry  # type: ignore[attr-defined]
    options = sshserver.server_options

    def server_options(settings: sshserver.ServerSettings) -> dict[str, Any]:
        return {**options(settings), "allow_pty": True}

    sshserver.server_options = server_options
    sshserver.AgentSSHServer.session_requested = (  # type: ignore[method-assign]
        lambda self: _PtyProcess(self))

if __name__ == "__main__":
    from backline.agent.cli import main

    sys.exit(main())
