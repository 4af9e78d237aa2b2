"""The agent's fix executor on real subprocesses: the contract's environment and private
folder, parameters inert, the whole tree killed at the timeout and at a cancel (a child
that forks a grandchild sleeping forever leaves no process), output cut at the cap
with memory bounded, the verify script, and a reader that goes away."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from backline.agent.fixes import executor
from backline.agent.fixes.executor import FixRunError, run_fix, session_members
from tests.unit.test_wstunnel import run_async

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="Linux /proc")


def manifest(script: str, *, verify: str | None = None, timeout_s: int = 30,
             interpreter: str = "sh", fix_id: str = "test-fix", version: int = 3) -> Any:
    return SimpleNamespace(id=fix_id, version=version, interpreter=interpreter,
                           script=script, verify=verify, timeout_s=timeout_s)


class Events:
    def __init__(self) -> None:
        self.all: list[dict[str, Any]] = []

    async def __call__(self, event: dict[str, Any]) -> None:
        json.dumps(event)  # every event is one JSON line on the channel
        self.all.append(event)

    def kinds(self) -> list[str]:
        kinds: list[str] = []
        for e in self.all:
            if not kinds or kinds[-1] != e["type"] or e["type"] != "output":
                kinds.append(e["type"])
        return kinds

    def output(self, fd: int | None = None) -> bytes:
        return b"".join(base64.b64decode(e["b64"]) for e in self.all
                        if e["type"] == "output" and (fd is None or e["fd"] == fd))

    def one(self, kind: str) -> dict[str, Any]:
        found = [e for e in self.all if e["type"] == kind]
        assert len(found) == 1, (kind, self.all[-5:])
        return found[0]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


@run_async
async def test_the_script_gets_only_the_contract_environment_in_a_private_folder() -> None:
    events = Events()
    script = ('env | sort; echo "cwd=$(pwd)"; stat -c "mode=%a" "$BACKLINE_FIX_DIR"; '
              'echo oops >&2; read line; echo "stdin=$?"; exit 3')
    result = await run_fix(manifest(script), {"BACKLINE_PARAM_NAME": "value 1"}, 1 << 20,
                           events)
    assert events.kinds() == ["start", "output", "end"]
    assert events.one("start")["pid"] > 0
    env = dict(line.split("=", 1) for line in events.output(1).decode().splitlines()
               if "=" in line and not line.startswith(("cwd=", "mode=", "stdin=")))
    folder = env["BACKLINE_FIX_DIR"]
    env.pop("PWD", None)  # sh sets these itself
    env.pop("SHLVL", None)
    env.pop("OLDPWD", None)
    env.pop("_", None)
    assert env == {"PATH": executor.SAFE_PATH, "LANG": "C.UTF-8", "HOME": folder,
                   "TMPDIR": folder, "BACKLINE_FIX_ID": "test-fix",
                   "BACKLINE_FIX_VERSION": "3", "BACKLINE_FIX_DIR": folder,
                   "BACKLINE_PARAM_NAME": "value 1"}
    text = events.output(1).decode()
    assert f"cwd={folder}" in text and "mode=700" in text
    assert "stdin=1" in text  # /dev/null: read fails at once
    assert events.output(2) == b"oops\n"
    assert not os.path.exists(folder), "the private folder is removed"  # noqa: ASYNC240
    end = events.one("end")
    assert end["exit_status"] == 3 and end["signal"] is None and not end["timed_out"]
    assert end["output_bytes"] == end["kept_bytes"] == len(events.output())
    assert end["output_sha256"] == hashlib.sha256(events.output()).hexdigest()
    assert result.exit_status == 3 and not result.succeeded


@run_async
async def test_hostile_parameter_values_reach_the_script_inert(tmp_path: Path) -> None:
    target = tmp_path / "X"
    values = {"A": f"; touch {target}", "B": f"$(touch {target})", "C": f"`touch {target}`",
              "D": f"' \"; touch {target}; echo '", "E": "-rf /", "F": "*"}
    env = {f"BACKLINE_PARAM_{k}": v for k, v in values.items()}
    events = Events()
    script = ('for v in "$BACKLINE_PARAM_A" "$BACKLINE_PARAM_B" "$BACKLINE_PARAM_C" '
              '"$BACKLINE_PARAM_D" "$BACKLINE_PARAM_E" "$BACKLINE_PARAM_F"; do '
              'printf "%s\\n" "$v"; done')
    await run_fix(manifest(script), env, 1 << 20, events)
    assert events.output(1).decode().splitlines() == list(values.values())
    assert not target.exists()
    with pytest.raises(ValueError):  # only parameter variables may be added
        await run_fix(manifest("true"), {"PATH": "/tmp"}, 100, events)
    with pytest.raises(ValueError):
        await run_fix(manifest("true"), {"BACKLINE_PARAM_X": "a\0b"}, 100, events)


@run_async
async def test_the_timeout_kills_the_whole_tree_a_forked_sleeper_included() -> None:
    events = Events()
    # The child forks a grandchild that sleeps forever and ignores SIGTERM.
    script = ("sh -c 'trap \"\" TERM; sleep 1000 & echo grandchild=$!; wait' &\n"
              "echo child=$!\nsleep 1000\n")
    started = time.monotonic()
    result = await run_fix(manifest(script, timeout_s=1), {}, 1 << 20, events)
    took = time.monotonic() - started
    assert result.timed_out and not result.cancelled
    assert result.exit_status is None and result.signal == "SIGTERM"
    assert took < 1 + executor.KILL_GRACE_S + 3
    pids = {k: int(v) for k, v in (line.split("=") for line in
                                   events.output(1).decode().split())}
    sid = events.one("start")["pid"]
    for _ in range(50):
        if not any(alive(p) for p in pids.values()):
            break
        await asyncio.sleep(0.05)
    assert not any(alive(p) for p in pids.values()), pids
    assert session_members(sid) == []
    assert events.one("end")["timed_out"] is True


@run_async
async def test_a_script_that_exits_takes_its_background_children_with_it() -> None:
    events = Events()
    started = time.monotonic()
    result = await run_fix(manifest("sleep 1000 &\necho left=$!\n", timeout_s=30), {},
                           1 << 20, events)
    assert time.monotonic() - started < 10  # not the timeout: the script had exited
    assert result.exit_status == 0 and not result.timed_out
    left = int(events.output(1).decode().split("=")[1])
    for _ in range(50):
        if not alive(left):
            break
        await asyncio.sleep(0.05)
    assert not alive(left)


@run_async
async def test_cancel_ends_the_tree_and_skips_verify(tmp_path: Path) -> None:
    events = Events()
    cancel = asyncio.Event()
    marker = tmp_path / "verified"

    async def on_event(event: dict[str, Any]) -> None:
        await events(event)
        if event["type"] == "output":
            cancel.set()

    result = await run_fix(manifest("echo go; sleep 1000", verify=f"touch {marker}"), {},
                           1 << 20, on_event, cancel)
    assert result.cancelled and not result.timed_out and result.verify is None
    assert [e["type"] for e in events.all][-1] == "end" and not marker.exists()
    assert session_members(events.one("start")["pid"]) == []


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@run_async
async def test_output_is_cut_at_the_cap_and_the_rest_drained_with_memory_bounded() -> None:
    events = Events()
    total = 256 * 1024 * 1024  # the bounded-size variant; 1 GiB runs in the integration test
    cap = 100_000
    peak = [rss_kib()]
    base = peak[0]
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib())
            await asyncio.sleep(0.02)

    sampler = asyncio.ensure_future(sample())
    try:
        result = await run_fix(manifest(f"head -c {total} /dev/zero; echo tail >&2"), {}, cap,
                               events)
    finally:
        done.set()
        await sampler
    assert result.output_bytes == total + 5 and result.kept_bytes == cap
    cut = events.one("cut")
    assert cut == {"type": "cut", "kept_bytes": cap}
    assert events.output() == b"\0" * cap
    assert max(len(base64.b64decode(e["b64"])) for e in events.all
               if e["type"] == "output") <= executor.CHUNK
    assert events.kinds() == ["start", "output", "cut", "end"]
    assert result.output_sha256 == hashlib.sha256(b"\0" * cap).hexdigest()
    assert peak[0] - base < 16 * 1024, f"RSS grew {peak[0] - base} KiB"


@run_async
async def test_verify_runs_after_in_the_same_folder_and_says_whether_it_worked() -> None:
    events = Events()
    result = await run_fix(manifest("echo done > state", verify='grep -q done state && echo ok'),
                           {}, 1 << 20, events)
    verify = events.one("verify")
    assert verify["passed"] is True and verify["exit_status"] == 0
    assert base64.b64decode(verify["output_b64"]) == b"ok\n"
    assert result.succeeded
    events = Events()
    result = await run_fix(manifest("true", verify="yes | head -c 100000; exit 1"), {},
                           1 << 20, events)
    verify = events.one("verify")
    assert verify["passed"] is False and verify["exit_status"] == 1
    assert len(base64.b64decode(verify["output_b64"])) == executor.VERIFY_KEEP
    assert not result.succeeded


@run_async
async def test_a_verify_that_cannot_start_fails_in_its_verify_line_not_a_refusal() -> None:
    """After ``end`` nothing but ``verify`` may follow (the relay's order): a verify
    script that cannot be written or started is ``passed: false`` with the reason in its
    output, and run_fix returns (it used to raise, and the channel sent ``refused``)."""
    events = Events()
    # the fix itself takes the verify script's file name: the O_EXCL write fails
    result = await run_fix(manifest("touch .backline-verify.sh; echo fixed",
                                    verify="exit 0"), {}, 1 << 20, events)
    assert events.kinds() == ["start", "output", "end", "verify"]
    verify = events.one("verify")
    assert verify["passed"] is False and verify["exit_status"] is None
    assert b"could not start" in base64.b64decode(verify["output_b64"])
    assert result.exit_status == 0 and result.verify is not None
    assert not result.succeeded


@run_async
async def test_python_runs_isolated_and_a_missing_interpreter_is_an_error() -> None:
    events = Events()
    script = "import os, sys\nprint(os.environ['BACKLINE_FIX_ID'], sys.flags.isolated)\n"
    result = await run_fix(manifest(script, interpreter="python"), {}, 1 << 20, events)
    assert result.exit_status == 0 and events.output(1) == b"test-fix 1\n"
    with pytest.raises(FixRunError):
        await run_fix(manifest("x", interpreter="cobol"), {}, 100, events)


@run_async
async def test_a_reader_that_fails_ends_the_run_and_its_tree() -> None:
    pids: list[int] = []

    async def broken(event: dict[str, Any]) -> None:
        if event["type"] == "start":
            pids.append(event["pid"])
        if event["type"] == "output":
            raise BrokenPipeError("the channel closed")

    started = time.monotonic()
    with pytest.raises(BrokenPipeError):
        await run_fix(manifest("echo a; sleep 1000", timeout_s=60), {}, 1 << 20, broken)
    assert time.monotonic() - started < 10
    assert session_members(pids[0]) == []
    assert not alive(pids[0])
    assert os.getpid()  # the test process itself is fine


@run_async
async def test_interleaved_streams_hash_in_the_order_the_events_carry_them() -> None:
    events = Events()
    script = ("head -c 3000000 /dev/urandom | base64 &\n"
              "head -c 3000000 /dev/urandom | base64 >&2 &\nwait\n")

    async def slow_channel(event: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # a drain that waits, as SSH's does
        await events(event)

    result = await run_fix(manifest(script), {}, 3_500_000, slow_channel)
    carried = events.output()
    assert len(carried) == result.kept_bytes == 3_500_000
    assert {e["fd"] for e in events.all if e["type"] == "output"} == {1, 2}
    assert hashlib.sha256(carried).hexdigest() == result.output_sha256
    assert result.output_bytes > result.kept_bytes and events.one("cut")


@run_async
async def test_a_run_whose_task_is_cancelled_leaves_no_process() -> None:
    pids: list[int] = []

    async def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "start":
            pids.append(event["pid"])
        if event["type"] == "output":
            pids.extend(int(p) for p in base64.b64decode(event["b64"]).split())

    task = asyncio.ensure_future(run_fix(manifest(
        "sleep 1000 &\necho $!\nsleep 1000\n", timeout_s=600), {}, 1 << 20, on_event))
    for _ in range(100):
        if len(pids) == 2:
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not any(alive(p) for p in pids):
            break
        await asyncio.sleep(0.02)
    assert len(pids) == 2 and not any(alive(p) for p in pids)
