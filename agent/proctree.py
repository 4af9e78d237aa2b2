"""Which processes belong to a session or descend from a process (Linux ``/proc``).

The shell room (agent/capabilities/shell.py) and the fix executor
(agent/fixes/executor.py) both end what they started as a whole: every process of the
session they made, and, for a fix, every descendant of its reaper. One reading of
``/proc/PID/stat`` for both, so the two cannot drift apart (they had, over zombies).

Zombies are left out of every answer: a zombie runs nothing and cannot be signalled
away, only reaped by its parent; counting one would make "is anything left?" wait for
a reap that is not ours to do (the script itself, exited and not yet waited for, is
one). Elsewhere than Linux no process is known (empty lists): callers still signal the
process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Proc:
    """The fields of ``/proc/PID/stat`` this module uses."""

    pid: int
    state: str
    ppid: int
    sid: int


def read_stat(pid: int | str) -> Proc | None:
    """``/proc/PID/stat`` parsed (the command name may hold spaces and parentheses:
    everything after the last ``)`` is split), or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    try:
        return Proc(int(pid), fields[0].decode("ascii", "replace"), int(fields[1]),
                    int(fields[3]))
    except (IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    """Every process this agent can see, zombies included (see :func:`alive`)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for name in names:
        if name.isdigit():
            proc = read_stat(name)
            if proc is not None:
                found.append(proc)
    return found


def alive(procs: list[Proc]) -> list[int]:
    """The pids of ``procs`` that are not zombies."""
    return [p.pid for p in procs if p.state != "Z"]


def session_members(sid: int) -> list[int]:
    """Every live process whose session is ``sid``: a grandchild that left the
    process group is still in the session (one that called ``setsid`` is not: for
    that, :func:`descendants` of a subreaper)."""
    return alive([p for p in processes() if p.sid == sid])


def descendants(root: int) -> list[int]:
    """Every live process below ``root`` in the parent tree (not ``root`` itself)."""
    children: dict[int, list[Proc]] = {}
    for p in processes():
        children.setdefault(p.ppid, []).append(p)
    found: list[Proc] = []
    todo = [root]
    seen = {root}
    while todo:
        for child in children.get(todo.pop(), []):
            if child.pid not in seen:
                seen.add(child.pid)
                found.append(child)
                todo.append(child.pid)
    return alive(found)


def signal_session(sid: int, sig: int) -> None:
    """``sig`` to the process group ``sid`` and to every live member of session ``sid``."""
    with contextlib.suppress(OSError):
        os.killpg(sid, sig)
    for pid in session_members(sid):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def signal_tree(root: int, sig: int) -> None:
    """``sig`` to ``root``'s descendants (found first), its session, and ``root``."""
    below = descendants(root)
    signal_session(root, sig)
    for pid in [*below, root]:
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def carrying(entry: bytes) -> list[int]:
    """Live processes (not this one) whose environment holds the exact ``NAME=value``
    ``entry``: what a fix run started, found by the run's own mark even after it left
    the session and the reaper's tree. Best effort by nature: only processes whose
    ``/proc/PID/environ`` this user may read (its own, or all as root), and a process
    that exec'd with a cleaned environment or overwrote its environment block is not
    found (the executor's drain is bounded by the run's deadline for those)."""
    found = []
    me = os.getpid()
    for p in processes():
        if p.pid == me or p.state == "Z":
            continue
        try:
            with open(f"/proc/{p.pid}/environ", "rb") as fh:
                env = fh.read(1 << 20)
        except OSError:
            continue
        if entry in env.split(b"\0"):
            found.append(p.pid)
    return found
