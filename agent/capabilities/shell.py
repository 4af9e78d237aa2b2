"""``shell``: a terminal on this machine: a login shell in a pty, bytes both ways.

The channel arrives already screened (policy, and for ``ask`` the customer's yes) with
a pty request (terminal type and size; :mod:`backline.agent.sshserver` refuses a
``shell`` without one) and no encoding: what the pty writes goes to the relay as it
is, and what the relay sends is typed into the pty. The shell is the login shell of
the agent's own user, or of the account the policy names (``[shell] account``, only
when the agent runs as root), started as ``login`` starts one (``-bash``: argv[0]
with a dash, in the home directory, with a clean environment and ``TERM`` from the
pty request). A window change resizes the pty. The channel's exit status is the
shell's (128 + N when signal N ended it).

Every read is bounded (:data:`MAX_READ` a time) and paced by the SSH window: while
the relay does not take the output, the pty is not read, so a flood waits in the
kernel's pty buffer rather than in this process. When the channel closes, or the
customer ends the session, every process of the shell's session gets ``SIGHUP`` and,
:data:`HANGUP_GRACE_S` later, ``SIGKILL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pwd
import re
import signal
import struct
import termios
from dataclasses import dataclass
from typing import Any

from backline.agent import proctree
from backline.agent.capabilities.base import SessionContext
from backline.common.capabilities import ChannelExit

MAX_READ = 64 * 1024
HANGUP_GRACE_S = 2.0
#: After the shell exits: how long output still queued in the pty may take to arrive.
DRAIN_AFTER_EXIT_S = 2.0
MAX_COLS, MAX_ROWS = 500, 200
TERM_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
DEFAULT_TERM = "xterm-256color"
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NO_LOGIN = ("nologin", "false")


class ShellRefused(Exception):
    """No shell can be started as asked; the message says why, for the relay and the log."""


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def account_for(named: str) -> Account:
    """The account the terminal runs as: the agent's own, or ``named`` (root only)."""
    me = os.getuid()
    try:
        entry = pwd.getpwnam(named) if named else pwd.getpwuid(me)
    except KeyError:
        raise ShellRefused(f"the policy names the account {named!r}, which this machine "
                           "does not have") from None
    if entry.pw_uid != me and me != 0:
        mine = pwd.getpwuid(me).pw_name
        raise ShellRefused(f"the policy names the account {named!r}, but the agent runs as "
                           f"{mine!r}, not root: it cannot start a shell as another user")
    shell = entry.pw_shell or "/bin/sh"
    if os.path.basename(shell) in NO_LOGIN or not os.access(shell, os.X_OK):
        raise ShellRefused(f"the account {entry.pw_name!r} has no login shell ({shell})")
    home = entry.pw_dir if entry.pw_dir and os.path.isdir(entry.pw_dir) else "/"
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, home, shell)


def environment(account: Account, term: str, session_id: str) -> dict[str, str]:
    """What ``login`` would give the shell, not the agent's own environment."""
    env = {"HOME": account.home, "USER": account.name, "LOGNAME": account.name,
           "SHELL": account.shell, "TERM": term,
           "PATH": ROOT_PATH if account.uid == 0 else USER_PATH,
           "LANG": os.environ.get("LANG") or "C.UTF-8", "BACKLINE_SESSION": session_id}
    if os.environ.get("TZ"):
        env["TZ"] = os.environ["TZ"]
    return env


def clamp_size(cols: int, rows: int) -> tuple[int, int]:
    return max(1, min(int(cols), MAX_COLS)), max(1, min(int(rows), MAX_ROWS))


def set_size(fd: int, cols: int, rows: int) -> None:
    cols, rows = clamp_size(cols, rows)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:  # pragma: no cover - runs in the child, before exec
    """The pty becomes the controlling terminal of the new session (job control, ^C)."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def start_shell(account: Account, term: str, cols: int, rows: int, session_id: str
                      ) -> tuple[asyncio.subprocess.Process, int]:
    """The login shell on a fresh pty; returns it and the pty's controlling side."""
    master, slave = os.openpty()
    try:
        set_size(slave, cols, rows)
        switch: dict[str, Any] = {}
        if account.uid != os.getuid():
            switch = {"user": account.uid, "group": account.gid,
                      "extra_groups": os.getgrouplist(account.name, account.gid)}
        proc = await asyncio.create_subprocess_exec(
            "-" + os.path.basename(account.shell), executable=account.shell,
            stdin=slave, stdout=slave, stderr=slave,
            cwd=account.home,
            env=environment(account, term, session_id), start_new_session=True,
            preexec_fn=_take_terminal, close_fds=True, **switch)
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    os.set_blocking(master, False)
    return proc, master


async def _ready(fd: int, write: bool = False) -> None:
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await waiter
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def pump_output(master: int, process: Any) -> None:
    """pty -> channel, one bounded read at a time, never faster than the relay takes it."""
    while True:
        await _ready(master)
        try:
            data = os.read(master, MAX_READ)
        except BlockingIOError:
            continue
        except OSError:  # EIO: every writer of the pty has gone
            return
        if not data:
            return
        process.stdout.write(data)
        await process.stdout.drain()


async def pump_input(master: int, process: Any) -> None:
    """channel -> pty (keystrokes, paste), and window changes; returns at the channel's EOF."""
    import asyncssh

    while True:
        try:
            data = await process.stdin.read(MAX_READ)
        except asyncssh.TerminalSizeChanged as change:
            with contextlib.suppress(OSError):
                set_size(master, change.width, change.height)
            continue
        if not data:
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(master, view):]
            except BlockingIOError:
                await _ready(master, write=True)


#: One reading of /proc for the shell and the fix executor (agent/proctree.py).
session_members = proctree.session_members
_signal_session = proctree.signal_session


async def hang_up(proc: asyncio.subprocess.Process) -> None:
    """SIGHUP to the shell's whole session, then SIGKILL to whatever is left."""
    sid = proc.pid
    _signal_session(sid, signal.SIGHUP)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(proc.wait()), HANGUP_GRACE_S)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HANGUP_GRACE_S
    while session_members(sid) and loop.time() < deadline:  # noqa: ASYNC110 (no event)
        await asyncio.sleep(0.05)
    _signal_session(sid, signal.SIGKILL)
    await proc.wait()


def exit_status(returncode: int | None) -> int:
    if returncode is None:
        return 1
    return 128 - returncode if returncode < 0 else returncode


async def run(process: Any, ctx: SessionContext) -> int:
    """The login shell, in a pty, for as long as the channel and the shell both live."""
    term = process.get_terminal_type() or DEFAULT_TERM
    cols, rows, _, _ = process.get_terminal_size()
    if not TERM_RE.fullmatch(term):
        term = DEFAULT_TERM
    try:
        account = account_for(ctx.policy.shell_account)
        proc, master = await start_shell(account, term, cols or 80, rows or 24,
                                         ctx.session_id)
    except (ShellRefused, OSError) as exc:
        detail = str(exc)[:300]
        ctx.log.record("shell.refused", session_id=ctx.session_id,
                       technician=ctx.technician, detail=detail)
        process.stderr.write((json.dumps({"refused": "shell_unavailable",
                                          "capability": "shell", "detail": detail})
                              + "\n").encode())
        return ChannelExit.REFUSED
    ctx.log.record("shell.start", session_id=ctx.session_id, technician=ctx.technician,
                   account=account.name, shell=account.shell, term=term, pid=proc.pid,
                   cols=cols, rows=rows)
    output = asyncio.create_task(pump_output(master, process))
    typing = asyncio.create_task(pump_input(master, process))
    shell = asyncio.create_task(proc.wait())
    closed = asyncio.create_task(process.wait_closed())
    try:
        await asyncio.wait({shell, closed}, return_when=asyncio.FIRST_COMPLETED)
        if shell.done() and not closed.done():
            # What the shell wrote last is still in the pty: let it reach the relay.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(output), DRAIN_AFTER_EXIT_S)
    finally:
        for task in (typing, closed, output):
            task.cancel()
        await asyncio.gather(typing, closed, output, return_exceptions=True)
        if proc.returncode is None or session_members(proc.pid):
            await hang_up(proc)
        shell.cancel()
        os.close(master)
        ctx.log.record("shell.end", session_id=ctx.session_id, technician=ctx.technician,
                       pid=proc.pid, exit_status=exit_status(proc.returncode))
    return exit_status(proc.returncode)
