"""Running one approved fix script, exactly as the issue-12 contract says.

Everything that reaches the script is decided here, not by the relay:

* a private folder (``mkdtemp``: mode 0700) is its working directory, ``HOME`` and
  ``TMPDIR``, and is removed afterwards;
* its environment is only ``PATH`` (a fixed system path), ``LANG=C.UTF-8``, ``HOME``,
  ``TMPDIR``, ``BACKLINE_FIX_ID``, ``BACKLINE_FIX_VERSION``, ``BACKLINE_FIX_DIR`` and
  the validated ``BACKLINE_PARAM_*`` values: parameters are never spliced into a
  command line, so ``$(touch X)`` is a string the script receives, nothing more;
* it runs in a session of its own (``start_new_session``) with stdin ``/dev/null``;
  at its timeout, at a cancel, and when the script itself has exited, the whole
  session is ended (SIGTERM, :data:`KILL_GRACE_S`, SIGKILL): a child that forked a
  grandchild sleeping forever leaves no process behind;
* output is streamed live as ``output`` events of at most 16 KiB, kept up to
  ``max_output`` bytes, then one ``cut`` event; everything after is still read (so
  the script never blocks on a full pipe) but only counted, never held: memory stays
  bounded by a few read buffers whatever the script prints;
* the verify script runs afterwards in the same folder and environment (60 s at most,
  its first 4 KiB kept), unless the run was cancelled.

``on_event`` gets each event as the dict the fix channel sends as one JSON line; it
may be a coroutine function, awaited before more output is read (back-pressure: a
slow channel slows the reading, it never grows a buffer).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import inspect
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.agent import proctree

if TYPE_CHECKING:
    from backline.common.fixes.manifest import FixManifest

SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: The most raw bytes in one ``output`` event (before base64).
CHUNK = 16 * 1024
#: How much one read of a pipe takes at most.
READ = 64 * 1024
KILL_GRACE_S = 2.0
#: How long past the run's deadline its output is still read, at most, after the
#: script (or its reaper) is gone: the end of a slow channel, never a writer forever.
DRAIN_GRACE_S = 5.0
VERIFY_TIMEOUT_S = 60
VERIFY_KEEP = 4 * 1024
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
#: The largest ``max_output`` a request may ask for.
MAX_OUTPUT_LIMIT = 1024 * 1024 * 1024
PARAM_PREFIX = "BACKLINE_PARAM_"

Event = dict[str, Any]
OnEvent = Callable[[Event], "Awaitable[None] | None"]

SUFFIX = {"sh": ".sh", "bash": ".sh", "python": ".py", "powershell": ".ps1"}


class FixRunError(Exception):
    """The fix could not even be started. ``reason`` is the refusal the fix channel
    sends: ``platform`` when this machine has no usable interpreter for it,
    ``agent_error`` when this agent could not prepare the run (no private folder, a
    full disk): a fault of this machine, not of the fix or its platform."""

    def __init__(self, message: str, reason: str = "platform") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class VerifyResult:
    passed: bool
    exit_status: int | None
    output: bytes


@dataclass(frozen=True)
class RunResult:
    """What the ``end`` (and ``verify``) events said."""

    exit_status: int | None
    signal: str | None
    timed_out: bool
    cancelled: bool
    duration_ms: int
    output_bytes: int
    kept_bytes: int
    output_sha256: str
    verify: VerifyResult | None = None

    @property
    def succeeded(self) -> bool:
        return (self.exit_status == 0 and not self.timed_out and not self.cancelled
                and (self.verify is None or self.verify.passed))


def interpreter_argv(interpreter: str) -> list[str] | None:
    """The program (and its options) that runs a script file of ``interpreter``, looked
    up on the fixed system path only; ``None`` when this machine has none."""
    if interpreter == "python":
        # The agent's own Python, isolated: no PYTHON* variables, no user site, no cwd.
        return [sys.executable, "-I", "-B"]
    candidates = {"sh": ("sh",), "bash": ("bash",), "powershell": ("pwsh", "powershell")}
    for name in candidates.get(interpreter, ()):
        found = shutil.which(name, path=SAFE_PATH)
        if found:
            if interpreter == "powershell":
                return [found, "-NoLogo", "-NoProfile", "-NonInteractive", "-File"]
            return [found]
    return None


def fix_environment(manifest: FixManifest, folder: str, env_params: Mapping[str, str]
                    ) -> dict[str, str]:
    """The script's whole environment (nothing of the agent's own leaks in)."""
    env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": folder, "TMPDIR": folder,
           "BACKLINE_FIX_ID": str(manifest.id), "BACKLINE_FIX_VERSION": str(manifest.version),
           "BACKLINE_FIX_DIR": folder}
    for name, value in env_params.items():
        if not name.startswith(PARAM_PREFIX) or "=" in name or "\0" in name or "\0" in value:
            raise ValueError(f"{name[:60]!r} is not a parameter variable")
        env[name] = value
    return env


#: The parent each script runs under on Linux (agent/fixes/reaper.py).
REAPER = str(Path(__file__).with_name("reaper.py"))
#: How long past its own grace the reaper is given to end the tree before the
#: executor kills what it can find itself.
REAPER_SLACK_S = 3.0
#: Kept for the tests and callers that looked here (agent/proctree.py has them).
session_members = proctree.session_members


def use_reaper() -> bool:
    """Whether scripts run under the subreaper (Linux: ``prctl`` and ``/proc``)."""
    return sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def _reaper_python() -> str:
    """An interpreter for the reaper (standard library only): the agent's own, or the
    system's ``python3`` when the agent's cannot be executed by this user."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable
    return shutil.which("python3", path=SAFE_PATH) or sys.executable


def wrapped(argv: list[str]) -> list[str]:
    """``argv`` as the executor starts it: under the reaper where there is one."""
    if not use_reaper():
        return argv
    return [_reaper_python(), "-I", "-B", REAPER, f"{KILL_GRACE_S:g}", "--", *argv]


def sweep_marked(folder: str | None) -> int:
    """SIGKILL every process that carries this run's ``BACKLINE_FIX_DIR=<folder>`` (the
    private folder's path, made by ``mkdtemp``: unique to the run) in its environment:
    what escaped a reaper that was killed. Repeated a few times (a process may fork
    while the walk runs); returns how many were signalled."""
    if folder is None or not use_reaper():
        return 0
    entry = f"BACKLINE_FIX_DIR={folder}".encode()
    total = 0
    for _ in range(20):
        pids = proctree.carrying(entry)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        total += len(pids)
    return total


async def end_tree(proc: asyncio.subprocess.Process, folder: str | None = None) -> None:
    """End the script and everything it started, and reap the script (or its reaper).

    Under the reaper: SIGTERM to the reaper, which ends every descendant (SIGTERM,
    :data:`KILL_GRACE_S`, SIGKILL) and exits; if it has not within
    :data:`REAPER_SLACK_S` more, SIGKILL to it and to every descendant and session
    member found. Without one (not Linux): SIGTERM to the script's whole session,
    :data:`KILL_GRACE_S`, then SIGKILL to whatever is left. (Also when the script has
    exited: what it left running goes with it.)

    With ``folder`` (the run's private folder): when the executor had to end the run
    (timeout, cancel) or the reaper died of a signal (the script may have killed it,
    leaving what it started orphaned outside the tree and the session), every process
    still carrying the run's mark is killed (:func:`sweep_marked`). A script that exited
    by itself is not swept: the daemons it started on purpose stay (see reaper.py)."""
    sid = proc.pid
    loop = asyncio.get_running_loop()
    if use_reaper():
        ending = proc.returncode is None
        if proc.returncode is None:
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()),
                                       KILL_GRACE_S + REAPER_SLACK_S)
        if proc.returncode is None or proctree.session_members(sid):
            proctree.signal_tree(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        if ending or (proc.returncode is not None and proc.returncode < 0):
            proctree.signal_session(sid, signal.SIGKILL)
            sweep_marked(folder)
        return
    proctree.signal_session(sid, signal.SIGTERM)
    deadline = loop.time() + KILL_GRACE_S
    while loop.time() < deadline:
        if proc.returncode is not None and not proctree.session_members(sid):
            break
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.05)
    proctree.signal_session(sid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        await proc.wait()


async def _emit(on_event: OnEvent, event: Event) -> None:
    result = on_event(event)
    if inspect.isawaitable(result):
        await result


class _Output:
    """Counts, keeps up to the cap, hashes what it keeps, emits ``output``/``cut``.

    stdout and stderr are read concurrently; one lock makes each chunk's events go out
    whole and in the order they were hashed, so the SHA-256 of the kept bytes in the
    order the ``output`` events carry them is ``output_sha256``."""

    def __init__(self, cap: int, on_event: OnEvent | None) -> None:
        self.cap = cap
        self.on_event = on_event
        self.seen = 0
        self.kept = 0
        self.sha = hashlib.sha256()
        self.cut = False
        self.buffer = bytearray()  # only without on_event (the verify script)
        self._lock = asyncio.Lock()

    async def add(self, fd: int, data: bytes) -> None:
        async with self._lock:
            self.seen += len(data)
            room = self.cap - self.kept
            keep = data[:max(room, 0)]
            for i in range(0, len(keep), CHUNK):
                piece = keep[i:i + CHUNK]
                self.kept += len(piece)
                self.sha.update(piece)
                if self.on_event is None:
                    self.buffer.extend(piece)
                else:
                    await _emit(self.on_event, {"type": "output", "fd": fd,
                                                "b64": base64.b64encode(piece).decode()})
            if len(keep) < len(data) and not self.cut:
                self.cut = True
                if self.on_event is not None:
                    await _emit(self.on_event, {"type": "cut", "kept_bytes": self.kept})


async def _pump(stream: asyncio.StreamReader, fd: int, out: _Output) -> None:
    while True:
        data = await stream.read(READ)
        if not data:
            return
        await out.add(fd, data)


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.BaseTransport]:
    """A bounded reader of the pipe ``fd`` (the transport pauses at 2 x :data:`READ`)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader, transport


@dataclass
class _Ran:
    returncode: int | None
    timed_out: bool
    cancelled: bool
    duration_ms: int


async def _run_script(argv: list[str], folder: str, env: dict[str, str], timeout_s: float,
                      out: _Output, cancel: asyncio.Event | None,
                      on_start: Callable[[int], Awaitable[None]] | None = None) -> _Ran:
    started = time.monotonic()
    # Pipes of our own, not asyncio's: its ``wait()`` would also wait for the pipes to
    # close, which a grandchild that escaped can hold open forever.
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        proc = await asyncio.create_subprocess_exec(
            *wrapped(argv), cwd=folder, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=out_w, stderr=err_w, start_new_session=True, close_fds=True)
    except OSError as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        raise FixRunError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(out_w)
        os.close(err_w)
    transports: list[asyncio.BaseTransport] = []
    timed_out = cancelled = False
    try:
        stdout, t1 = await _open_reader(out_r)
        transports.append(t1)
        stderr, t2 = await _open_reader(err_r)
        transports.append(t2)
        if on_start is not None:
            await on_start(proc.pid)
        pumps = asyncio.gather(_pump(stdout, 1, out), _pump(stderr, 2, out))
        waiting = asyncio.ensure_future(proc.wait())
        cancelling = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
        try:
            waiters: set[asyncio.Future[Any]] = {waiting, pumps}
            if cancelling is not None:
                waiters.add(cancelling)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout_s
            while True:
                done, _ = await asyncio.wait(waiters, timeout=max(0, deadline - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                if waiting in done:
                    break
                if cancelling is not None and cancelling in done:
                    cancelled = True
                    break
                if pumps in done:
                    waiters.discard(pumps)
                    if pumps.exception() is not None:  # whoever read the events is gone
                        cancelled = True
                        break
                    continue  # the script closed its output and goes on
                timed_out = True
                break
            # The script is gone or must go; so must everything it started (its
            # session), else a background child holding the pipes would keep it alive.
            await end_tree(proc, folder)
            # Bounded by the run's own deadline, whatever holds the pipes (a writer that
            # escaped the reaper, the session and the mark would otherwise keep it).
            await _drain(pumps, out, max(deadline, loop.time()) + DRAIN_GRACE_S)
        finally:
            if cancelling is not None:
                cancelling.cancel()
            waiting.cancel()
            if not pumps.done():
                pumps.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pumps
    except BaseException:  # cancelled (the session went) or failed: nothing stays
        proctree.signal_tree(proc.pid, signal.SIGKILL)
        raise
    finally:
        for transport in transports:
            transport.close()
    return _Ran(proc.returncode, timed_out, cancelled,
                round((time.monotonic() - started) * 1000))


async def _drain(pumps: asyncio.Future[Any], out: _Output, until: float) -> None:
    """What is still in the pipes, for as long as it keeps coming (a slow channel is
    waited for) but never past ``until`` (loop time: the run's deadline plus
    :data:`DRAIN_GRACE_S`); a pipe that stays open with nothing coming is held by a
    process that left the session, and is given up after :data:`KILL_GRACE_S`. What is
    given up is closed by the caller: a writer still there gets EPIPE/SIGPIPE."""
    loop = asyncio.get_running_loop()
    seen = -1
    while out.seen != seen:
        seen = out.seen
        left = until - loop.time()
        if left <= 0:
            return
        try:
            await asyncio.wait_for(asyncio.shield(pumps), min(KILL_GRACE_S, left))
            return
        except TimeoutError:
            continue


def _status(returncode: int | None) -> tuple[int | None, str | None]:
    if returncode is None:
        return None, None
    if returncode < 0:
        try:
            return None, signal.Signals(-returncode).name
        except ValueError:
            return None, str(-returncode)
    return returncode, None


def _write_script(folder: str, name: str, text: str) -> str:
    path = Path(folder) / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
    return str(path)


async def run_fix(manifest: FixManifest, env_params: Mapping[str, str], max_output: int,
                  on_event: OnEvent, cancel: asyncio.Event | None = None) -> RunResult:
    """Run ``manifest``'s script (and verify script) with ``env_params`` (the mapping
    ``validate_params`` made), streaming events to ``on_event``: ``start``,
    ``output``..., ``cut`` (once, if the cap is reached), ``end``, ``verify``.

    The caller has already checked signatures, revocation, platform, policy, params
    and consent (:mod:`backline.agent.fixes.checks`); this only runs."""
    argv = interpreter_argv(manifest.interpreter)
    if argv is None:
        raise FixRunError(f"no {manifest.interpreter} interpreter on this machine")
    if not 0 <= max_output <= MAX_OUTPUT_LIMIT:
        raise ValueError("max_output out of range")
    if cancel is not None and cancel.is_set():  # cancelled before it started: never start
        empty = hashlib.sha256().hexdigest()
        await _emit(on_event, {"type": "end", "exit_status": None, "signal": None,
                               "timed_out": False, "cancelled": True, "duration_ms": 0,
                               "output_bytes": 0, "kept_bytes": 0, "output_sha256": empty})
        return RunResult(None, None, False, True, 0, 0, 0, empty)
    suffix = SUFFIX.get(manifest.interpreter, "")
    try:
        folder = tempfile.mkdtemp(prefix="backline-fix-")  # 0700, owned by the agent
    except OSError as exc:
        raise FixRunError(f"cannot make a private folder: {exc.strerror or exc}",
                          "agent_error") from None
    try:
        try:
            os.chmod(folder, 0o700)
            env = fix_environment(manifest, folder, env_params)
            script = _write_script(folder, ".backline-fix" + suffix, manifest.script)
        except OSError as exc:
            raise FixRunError(f"cannot write the script in its private folder: "
                              f"{exc.strerror or exc}", "agent_error") from None
        out = _Output(max_output, on_event)

        async def started(pid: int) -> None:
            await _emit(on_event, {"type": "start", "pid": pid})

        ran = await _run_script([*argv, script], folder, env, float(manifest.timeout_s), out,
                                cancel, started)
        status, sig = _status(ran.returncode)
        result = RunResult(status, sig, ran.timed_out, ran.cancelled, ran.duration_ms,
                           out.seen, out.kept, out.sha.hexdigest())
        await _emit(on_event, {"type": "end", "exit_status": status, "signal": sig,
                               "timed_out": ran.timed_out, "cancelled": ran.cancelled,
                               "duration_ms": ran.duration_ms, "output_bytes": out.seen,
                               "kept_bytes": out.kept, "output_sha256": out.sha.hexdigest()})
        verify_text = manifest.verify
        if verify_text and not ran.cancelled and not (cancel is not None and cancel.is_set()):
            try:
                verify = await _verify(argv, folder, env, verify_text, suffix,
                                       min(VERIFY_TIMEOUT_S, int(manifest.timeout_s)), cancel)
            except (FixRunError, OSError) as exc:
                # After ``end`` the channel's last word is the verify line: a verify that
                # cannot start did not pass, and says why there (never a ``refused``).
                why = str(exc) if isinstance(exc, FixRunError) else exc.strerror or str(exc)
                verify = VerifyResult(False, None,
                                      f"the verify script could not start: {why}"
                                      .encode()[:VERIFY_KEEP])
            result = RunResult(**{**result.__dict__, "verify": verify})
            await _emit(on_event, {"type": "verify", "passed": verify.passed,
                                   "exit_status": verify.exit_status,
                                   "output_b64": base64.b64encode(verify.output).decode()})
        return result
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def _verify(argv: list[str], folder: str, env: dict[str, str], text: str, suffix: str,
                  timeout_s: int, cancel: asyncio.Event | None) -> VerifyResult:
    script = _write_script(folder, ".backline-verify" + suffix, text)
    out = _Output(VERIFY_KEEP, None)
    ran = await _run_script([*argv, script], folder, env, float(max(1, timeout_s)), out, cancel)
    status, _ = _status(ran.returncode)
    passed = status == 0 and not ran.timed_out and not ran.cancelled
    return VerifyResult(passed, status, bytes(out.buffer))
