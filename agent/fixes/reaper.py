"""The small parent every fix script runs under (Linux): no process it starts escapes.

A script may ``setsid`` or double-fork, leaving its session and process group, so
killing the session at the end (what the executor did before) missed it and it
outlived its run (the reviewer's ``setsid sh -c 'sleep ...' &``). So the executor does
not start the script itself but this program, in a session of its own::

    python -I -B reaper.py GRACE_S -- INTERPRETER SCRIPT

It makes itself a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``, via ctypes):
every orphan below it, however it detached, is re-parented to it instead of to init,
so it stays in its tree. It then forks and execs the script and waits.

* When the agent sends it SIGTERM (timeout, cancel, channel gone), it ends EVERY
  descendant it finds by walking ``/proc`` (SIGTERM, ``GRACE_S``, then SIGKILL,
  repeated until none is left), whatever session it is in: nothing escapes.
* When the script exits by itself, it ends every descendant still in the run's
  session (the background jobs the script left, as before); a process that left the
  session (``setsid``, as a daemon does: a SysV service restarted by
  ``/etc/init.d/X restart``, the ``dhclient`` that keeps a lease) was started on
  purpose by a script that finished, and is released when the reaper exits.

It exits with the script's own status (a script killed by a signal makes the reaper
die of the same signal), so the executor reports what the script did.

Run by path, with only the standard library (``-I``: no environment, no user site),
in the script's own environment; it prints nothing unless it cannot work, and then it
says so on stderr and exits 125 without running the script.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
EXIT_CANNOT = 125
_WAITED = {signal.SIGCHLD, signal.SIGTERM}


def _live_descendants(root: int, only_sid: int | None = None) -> list[int]:
    """Live (not zombie) processes below ``root``, or only those of session
    ``only_sid`` (the same walk as agent/proctree.py, copied because this file may
    import nothing of the agent)."""
    children: dict[int, list[tuple[int, str, int]]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[-1].split()
            children.setdefault(int(fields[1]), []).append(
                (int(name), fields[0].decode(), int(fields[3])))
        except (OSError, IndexError, ValueError):
            continue
    found, todo, seen = [], [root], {root}
    while todo:
        for pid, state, sid in children.get(todo.pop(), []):
            if pid not in seen:
                seen.add(pid)
                todo.append(pid)
                if state != "Z" and (only_sid is None or sid == only_sid):
                    found.append(pid)
    return found


class _Reaper:
    """The script's pid and status, and the ending of what is below this process.
    ``only_sid`` set: only the processes still in this run's session are ended (the
    script exited by itself; a daemon that left the session is released)."""

    def __init__(self) -> None:
        self.script = 0
        self.status: int | None = None
        self.only_sid: int | None = None

    def below(self) -> list[int]:
        return _live_descendants(os.getpid(), self.only_sid)

    def reap(self) -> None:
        """Wait for every child that has exited (never blocks)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.script and self.status is None:
                self.status = status

    def signal_all(self, sig: int) -> int:
        below = self.below()
        for pid in below:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        return len(below)

    def end_all(self, grace_s: float) -> None:
        """SIGTERM to every descendant, ``grace_s``, then SIGKILL until none is left."""
        if self.signal_all(signal.SIGTERM):
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline:
                self.reap()
                if not self.below():
                    break
                signal.sigtimedwait({signal.SIGCHLD}, 0.05)
        for _ in range(1000):  # a fork bomb racing the walk: walk and kill again
            self.reap()
            if not self.signal_all(signal.SIGKILL):
                break
            signal.sigtimedwait({signal.SIGCHLD}, 0.01)
        if self.only_sid is not None:  # released daemons stay children: do not wait
            self.reap()
            return
        while True:  # what was killed, reaped (blocking: SIGKILL cannot be ignored)
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            if pid == self.script and self.status is None:
                self.status = status


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: reaper.py GRACE_S -- PROGRAM [ARG]...\n")
        return EXIT_CANNOT
    grace_s, program = float(argv[0]), argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getppid()
    # The agent gone (killed, crashed): SIGTERM to this reaper, which then ends the
    # whole tree as on a cancel. SIGTERM is blocked and waited for below, so it is
    # queued even if it comes before the loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, _WAITED)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0 or os.getppid() != parent:
        sys.stderr.write("backline fix reaper: cannot follow the agent's life (or it is "
                         "already gone)\n")
        return EXIT_CANNOT
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.stderr.write("backline fix reaper: cannot become a child subreaper: "
                         f"{os.strerror(ctypes.get_errno())}\n")
        return EXIT_CANNOT
    r = _Reaper()
    me = os.getpid()
    r.script = os.fork()
    if r.script == 0:  # the script: its own signals back to normal, then exec
        # The reaper killed (by the script itself: ``kill -9 $PPID``): the script dies
        # too (its children are the agent's sweep's: agent/fixes/executor.py).
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != me:
            os._exit(EXIT_CANNOT)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _WAITED)
        try:
            os.execv(program[0], program)  # noqa: S606 (the interpreter, no shell)
        except OSError as exc:
            os.write(2, f"backline fix reaper: cannot start {program[0]}: {exc}\n".encode())
        os._exit(127)
    terminated = False
    while True:
        r.reap()
        if r.status is not None:
            break
        info = signal.sigtimedwait(_WAITED, 1.0)
        if info is not None and info.si_signo == signal.SIGTERM:
            terminated = True
            break
    if not terminated:  # the script exited by itself: what left the session stays
        r.only_sid = os.getsid(0)
    r.end_all(grace_s)
    status = r.status if r.status is not None else 0
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
        os.kill(os.getpid(), sig)
        return 128 + sig
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
