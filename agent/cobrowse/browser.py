"""Finding and launching the co-browse browser, and the asyncio layer of the protocol.

The browser is a Chromium-family one already on the machine (Chromium, Chrome, Edge,
Brave; or the path the policy names in ``[cobrowse] browser``), started with a fresh
temporary profile that is deleted when the co-browse ends, and driven over
``--remote-debugging-pipe`` (see :mod:`.cdp`: no debugging port any local process
could reach). ``--no-sandbox`` is passed only when the agent runs as root (Chromium
refuses to start as root otherwise); everywhere else the renderer sandbox stays on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backline.agent.cobrowse.cdp import CDPCore, CDPProtocolError, Event, Response

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable",
              "microsoft-edge", "microsoft-edge-stable", "brave-browser", "brave")
PLATFORM_PATHS = (
    "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
    "/Applications/Chromium.app/Contents/MacOS/Chromium",
    "/Applications/Microsoft Edge.app/Contents/MacOS/Microsoft Edge",
    "/Applications/Brave Browser.app/Contents/MacOS/Brave Browser",
    r"C:\Program Files\Google\Chrome\Application\chrome.exe",
    r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe",
)
COMMAND_TIMEOUT_S = 15.0


class BrowserError(Exception):
    """No browser, or it would not start or went away."""


class CDPError(Exception):
    """The browser answered a command with an error."""

    def __init__(self, method: str, error: dict[str, Any]) -> None:
        super().__init__(f"{method}: {str(error.get('message', error))[:300]}")
        self.error = error


def find_browser(configured: str = "") -> str:
    if configured:
        if Path(configured).is_file() and os.access(configured, os.X_OK):
            return configured
        raise BrowserError(f"the policy's [cobrowse] browser {configured!r} is not an "
                           "executable file")
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    for path in PLATFORM_PATHS:
        if Path(path).is_file():
            return path
    raise BrowserError("no Chromium-family browser found (Chromium, Chrome, Edge, Brave); "
                       "name one in the policy: [cobrowse] browser = \"/path\"")


def browser_flags(profile: Path, headless: bool, width: int = 1280, height: int = 720
                  ) -> list[str]:
    flags = ["--remote-debugging-pipe", f"--user-data-dir={profile}", "--no-first-run",
             "--no-default-browser-check", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-quic",
             "--disable-features=Translate,MediaRouter,OptimizationHints,"
             "DisableLoadExtensionCommandLineSwitch",
             "--password-store=basic", "--use-mock-keychain", f"--window-size={width},{height}"]
    if headless:
        flags.append("--headless")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")
    return [*flags, "about:blank"]


def display_available() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


#: Puts the pipe ends on fds 3 and 4, as --remote-debugging-pipe wants, then becomes
#: the browser (a shell cannot: dash redirects only fds 0 to 9). On Linux the browser
#: also gets a parent-death signal (kept across exec): the agent killed, the browser
#: goes too, not left running the customer's session in its own process group.
_TRAMPOLINE = ("import os, sys\n"
               "r, w, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])\n"
               "if sys.platform.startswith('linux'):\n"
               "    import ctypes, signal\n"
               "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)\n"
               "    if os.getppid() != parent:\n"
               "        sys.exit(1)\n"
               "os.dup2(r, 3)\nos.dup2(w, 4)\nos.close(r)\nos.close(w)\n"
               "os.execv(sys.argv[4], sys.argv[4:])\n")
PROFILE_PREFIX = "backline-cobrowse-"
#: In each profile: ``host-pid`` of the agent that made it (kept while that one lives).
AGENT_MARK = "backline-agent.pid"


def sweep_profiles(root: Path | None = None) -> list[Path]:
    """Delete the temporary profiles of browsers no longer running (an agent that
    crashed could not): those whose Chromium lock (``SingletonLock``, a link to
    ``host-pid``) and the agent's mark (:data:`AGENT_MARK`, the same) name dead
    processes of this host, or that have neither and are over an hour old. Only this
    user's folders; what was removed is returned."""
    import time

    root = root or Path(tempfile.gettempdir())
    host = socket.gethostname()
    removed: list[Path] = []
    try:
        candidates = list(root.glob(PROFILE_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        try:
            st = folder.lstat()
            if not folder.is_dir() or folder.is_symlink() or (
                    hasattr(os, "getuid") and st.st_uid != os.getuid()):
                continue
            owners = []
            with contextlib.suppress(OSError):
                owners.append(os.readlink(folder / "SingletonLock"))
            with contextlib.suppress(OSError, UnicodeDecodeError):
                owners.append((folder / AGENT_MARK).read_text()[:300].strip())
            if owners:
                if any(_owner_alive(owner, host) for owner in owners):
                    continue
            elif time.time() - st.st_mtime < 3600:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _owner_alive(owner: str, host: str) -> bool:
    """``host-pid`` names a live process, or one of another host (not ours to judge)."""
    name, _, pid = owner.rpartition("-")
    return name != host or not pid.isdigit() or _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie (not yet reaped) is no browser
        if Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            return False
    return True


def _above(fd: int, lowest: int = 10) -> int:
    import fcntl

    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, lowest)
    os.close(fd)
    return moved


class _Reader(asyncio.Protocol):
    def __init__(self, conn: CDPConnection) -> None:
        self.conn = conn

    def data_received(self, data: bytes) -> None:
        self.conn._data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._lost("the browser closed its end of the pipe")


class CDPConnection:
    """Commands as awaitables; events to one callback (synchronous: it must not block)."""

    def __init__(self, on_event: Callable[[Event], None]) -> None:
        self.core = CDPCore()
        self.on_event = on_event
        self._pending: dict[int, tuple[str, asyncio.Future[dict[str, Any]]]] = {}
        self._writer: asyncio.WriteTransport | None = None
        self.closed = asyncio.Event()
        self.why_closed = ""

    async def attach(self, read_fd: int, write_fd: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: _Reader(self), os.fdopen(read_fd, "rb", 0))
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol,
                                                     os.fdopen(write_fd, "wb", 0))
        self._writer = transport

    def _data(self, data: bytes) -> None:
        try:
            messages = self.core.receive(data)
        except CDPProtocolError as exc:
            self._lost(f"the browser broke the protocol: {exc}")
            return
        for message in messages:
            if isinstance(message, Response):
                method, future = self._pending.pop(message.id, ("", None))  # type: ignore[assignment]
                if future is None or future.done():
                    continue
                if message.error is not None:
                    future.set_exception(CDPError(method, message.error))
                else:
                    future.set_result(message.result or {})
            else:
                self.on_event(message)

    def _lost(self, why: str) -> None:
        if self.closed.is_set():
            return
        self.why_closed = why
        self.closed.set()
        for method, future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError(f"{method}: {why}"))
        self._pending.clear()
        if self._writer is not None:
            self._writer.close()

    def send_nowait(self, method: str, params: dict[str, Any] | None = None,
                    session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        if self.closed.is_set() or self._writer is None:
            future.set_exception(BrowserError(f"{method}: {self.why_closed or 'not open'}"))
            return future
        ident, data = self.core.command(method, params, session_id)
        self._pending[ident] = (method, future)
        self._writer.write(data)
        return future

    async def send(self, method: str, params: dict[str, Any] | None = None,
                   session_id: str | None = None, timeout: float = COMMAND_TIMEOUT_S
                   ) -> dict[str, Any]:
        return await asyncio.wait_for(self.send_nowait(method, params, session_id), timeout)


class Browser:
    """One launched browser: its process, its profile folder, its connection."""

    def __init__(self, proc: asyncio.subprocess.Process, profile: Path,
                 conn: CDPConnection) -> None:
        self.proc = proc
        self.profile = profile
        self.conn = conn

    @classmethod
    async def launch(cls, executable: str, on_event: Callable[[Event], None],
                     headless: bool | None = None, extra_flags: list[str] | None = None
                     ) -> Browser:
        sweep_profiles()
        profile = Path(tempfile.mkdtemp(prefix=PROFILE_PREFIX))
        (profile / AGENT_MARK).write_text(f"{socket.gethostname()}-{os.getpid()}")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # The child's ends are moved to 3 and 4 by the trampoline; they must not already
        # be 3 or 4 themselves (one dup2 would then clobber the other).
        to_browser_r, from_browser_w = _above(to_browser_r), _above(from_browser_w)
        show = display_available() if headless is None else not headless
        argv = [sys.executable, "-c", _TRAMPOLINE, str(to_browser_r), str(from_browser_w),
                str(os.getpid()), executable, *(extra_flags or []),
                *browser_flags(profile, headless=not show)]
        errors = open(profile / "browser-stderr.log", "wb")  # noqa: ASYNC230 (a new local file)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=errors, pass_fds=(to_browser_r, from_browser_w),
                start_new_session=True)
        except OSError as exc:
            for fd in (to_browser_r, to_browser_w, from_browser_r, from_browser_w):
                os.close(fd)
            shutil.rmtree(profile, ignore_errors=True)
            raise BrowserError(f"could not start {executable}: {exc}") from None
        finally:
            errors.close()
            with contextlib.suppress(OSError):
                os.close(to_browser_r)
            with contextlib.suppress(OSError):
                os.close(from_browser_w)
        conn = CDPConnection(on_event)
        await conn.attach(from_browser_r, to_browser_w)
        browser = cls(proc, profile, conn)
        try:
            await conn.send("Browser.getVersion", timeout=20)
        except Exception as exc:
            said = ""
            with contextlib.suppress(OSError):
                said = (profile / "browser-stderr.log").read_text(errors="replace")[-600:]
            await browser.close()
            raise BrowserError(f"{executable} did not answer over the DevTools pipe: "
                               f"{exc} {said.strip()}") from None
        return browser

    async def close(self) -> None:
        """End the browser (politely, then its whole process group) and delete the profile."""
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.conn.send("Browser.close", timeout=2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 3)
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5)
        else:  # helpers (renderers, zygote) outliving the main process
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.conn._lost("closed")
        shutil.rmtree(self.profile, ignore_errors=True)
