"""No process a fix starts outlives its run, however it detached (agent/fixes/reaper.py):
the reviewer's ``setsid sh -c 'sleep ...' &`` (/tmp/rev_setsid.py) and a double fork
at the timeout and at a cancel; when the script simply exits, its background jobs go
and the daemons it started on purpose (their own session) stay; and the script's own
exit status and signal still reach the ``end`` event through the reaper."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from backline.agent.fixes.executor import run_fix, session_members
from tests.unit.test_fix_agent_trust import fix

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")


def marked(tag: str) -> list[int]:
    """Live processes whose command line carries ``tag``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[-1].split()[0]
        except OSError:
            continue
        if tag.encode() in cmd and state != b"Z":
            found.append(int(name))
    return found


def exactly(cmd: str) -> list[int]:
    """Live processes whose whole command line is ``cmd``."""
    found = []
    for pid in marked(cmd):
        try:
            line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if line.rstrip(b"\0").replace(b"\0", b" ") == cmd.encode():
            found.append(pid)
    return found


def escaping(tag: str, tail: str, ready: Path | None = None) -> str:
    """A script whose children leave its session (setsid) and its tree (double fork).
    With ``ready``, each child writes a file there once it runs (the setsid ones: in
    their new session) and the script waits for the three before its ``tail``: else a
    script that exits at once can end before a daemon's setsid ran, and that daemon,
    still in the script's session, is rightly taken along."""
    def child(n: int, setsid: str) -> str:
        mark = f": > {ready / f'{n}.ready'}; " if ready is not None else ""
        return f"{setsid}sh -c '{mark}exec sleep {tag}{n}' </dev/null >/dev/null 2>&1 &"

    wait = ""
    if ready is not None:
        files = " ".join(f"[ -e {ready / f'{n}.ready'} ] &&" for n in (1, 2, 3))
        wait = (f"i=0; until {files} true; do i=$((i+1)); [ $i -gt 200 ] && break; "
                "sleep 0.05; done\n")
    return (f"{child(1, 'setsid ')}\n({child(2, 'setsid ')})\n({child(3, '')})\n"
            f"{wait}echo started\n" + tail)


def run(script: str, timeout_s: int = 30, cancel_after: float | None = None
        ) -> tuple[list[dict[str, Any]], float]:
    events: list[dict[str, Any]] = []

    async def main() -> None:
        cancel = asyncio.Event()

        async def on_event(event: dict[str, Any]) -> None:
            events.append(event)
            if event["type"] == "output" and cancel_after is not None:
                asyncio.get_running_loop().call_later(cancel_after, cancel.set)

        await run_fix(fix(script=script, verify=None, timeout_s=timeout_s), {}, 1 << 20,
                      on_event, cancel)

    started = time.monotonic()
    asyncio.run(main())
    return events, time.monotonic() - started


def end(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "end")


def test_setsid_and_double_fork_do_not_survive_the_timeout() -> None:
    tag = f"98{os.getpid() % 1000:03d}1"
    events, took = run(escaping(tag, "sleep 100\n"), timeout_s=1)
    try:
        assert end(events)["timed_out"] is True and took < 10
        assert marked(f"sleep {tag}") == []
        assert session_members(events[0]["pid"]) == []
    finally:
        for pid in marked(f"sleep {tag}"):
            os.kill(pid, 9)


def test_setsid_does_not_survive_a_cancel() -> None:
    tag = f"98{os.getpid() % 1000:03d}2"
    events, _ = run(escaping(tag, "sleep 100\n"), cancel_after=0.3)
    try:
        assert end(events)["cancelled"] is True
        assert marked(f"sleep {tag}") == []
    finally:
        for pid in marked(f"sleep {tag}"):
            os.kill(pid, 9)


def test_a_script_that_exits_takes_its_jobs_along_and_releases_its_daemons(
        tmp_path: Path) -> None:
    """A script that finished by itself: what it left in its session (a double-forked
    background job) goes; what it started as a daemon (``setsid``, as a SysV service
    or dhclient does) was started on purpose and stays. Its own status is kept."""
    tag = f"98{os.getpid() % 1000:03d}3"
    events, took = run(escaping(tag, "exit 3\n", ready=tmp_path))
    try:
        assert end(events)["exit_status"] == 3 and end(events)["signal"] is None
        assert took < 10 and marked(f"sleep {tag}3") == []
        assert marked(f"sleep {tag}1") != [] and marked(f"sleep {tag}2") != []
    finally:
        for pid in marked(f"sleep {tag}"):
            os.kill(pid, 9)
    events, _ = run("echo x\nkill -KILL $$\n")
    assert end(events)["exit_status"] is None and end(events)["signal"] == "SIGKILL"
    events, _ = run("echo ok\n")
    assert end(events)["exit_status"] == 0


# --- a script that kills its reaper (review 12b, SHOULD-FIX 1) ----------------------


def test_a_writer_that_escapes_everything_cannot_outlast_the_timeout() -> None:
    """``env -i setsid ... yes & kill -9 $PPID``: the reaper is gone and the writer left
    the session, the tree and the run's marker (a clean environment), and it keeps the
    output pipe full. The drain is bounded by the run's deadline: the run ends."""
    tag = f"98{os.getpid() % 1000:03d}4"
    script = f"env -i setsid sh -c 'exec yes {tag}' &\nsleep 0.2\nkill -9 $PPID\nsleep 100\n"
    events, took = run(script, timeout_s=2)
    try:
        assert end(events)["signal"] == "SIGKILL"  # the reaper's own death, as seen
        assert took < 2 + 5 + 5, took  # timeout + DRAIN_GRACE_S + a loaded box
        deadline = time.monotonic() + 3  # its read end closed: EPIPE/SIGPIPE ends it
        while marked(f"yes {tag}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked(f"yes {tag}") == []
    finally:
        for pid in marked(f"yes {tag}"):
            os.kill(pid, 9)


def test_what_carries_the_runs_marker_goes_when_the_reaper_is_killed() -> None:
    """``setsid sleep & kill -9 $PPID``: the sleeper left the session and, its reaper
    dead, the tree; it still carries the run's BACKLINE_FIX_DIR in its environment, and
    the executor's sweep of /proc/*/environ ends it."""
    tag = f"98{os.getpid() % 1000:03d}5"
    script = (f"setsid sh -c 'sleep {tag}' </dev/null >/dev/null 2>&1 &\n"
              "sleep 0.2\nkill -9 $PPID\n")
    _events, took = run(script, timeout_s=30)
    try:
        assert took < 10
        deadline = time.monotonic() + 3
        while marked(f"sleep {tag}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked(f"sleep {tag}") == []
    finally:
        for pid in marked(f"sleep {tag}"):
            os.kill(pid, 9)


def test_the_reaper_ends_the_tree_when_its_parent_dies() -> None:
    """PR_SET_PDEATHSIG: the agent (here a shell standing in for it) killed with
    SIGKILL, the reaper gets SIGTERM and ends everything below it; and a script whose
    reaper is killed dies with it."""
    import subprocess
    import sys

    from backline.agent.fixes.executor import REAPER
    tag = f"98{os.getpid() % 1000:03d}6"
    inner = f"setsid sh -c 'sleep {tag}1' </dev/null >/dev/null 2>&1 & exec sleep {tag}2"
    parent = subprocess.Popen(
        ["/bin/sh", "-c", '"$0" -I -B "$1" 1 -- /bin/sh -c "$2" & wait',
         sys.executable, REAPER, inner], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (exactly(f"sleep {tag}1") and exactly(f"sleep {tag}2")) and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert exactly(f"sleep {tag}1") and exactly(f"sleep {tag}2")
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 8
        while marked(f"sleep {tag}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marked(f"sleep {tag}") == []
    finally:
        for pid in marked(f"sleep {tag}"):
            os.kill(pid, 9)
