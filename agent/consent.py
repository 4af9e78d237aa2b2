"""Asking the customer: "Technician X asks to run Y. Allow?".

Three ways, chosen by what the machine offers:

* :class:`TerminalAsker` for ``backline-agent join``: the customer is at the terminal
  that started it, so the question is printed there and a line is read back;
* :class:`DesktopAsker` for the background agent when a display is available: a small
  dialog in a child process (a hung GUI cannot hang the agent, and a timeout kills it);
* :class:`NoAsker` otherwise: with no way to ask, ``ask`` means no.

Every asker fails closed: no answer within the policy's timeout, a closed terminal or
a dialog that cannot open all mean no.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
from typing import IO, NamedTuple, Protocol


class Answer(NamedTuple):
    allowed: bool
    # customer_allowed | customer_declined | no_answer | no_way_to_ask
    how: str


class Asker(Protocol):
    @property
    def available(self) -> bool: ...

    async def ask(self, question: str, timeout: float) -> Answer: ...


class NoAsker:
    """A machine with nobody to ask (a service without a display)."""

    available = False

    async def ask(self, question: str, timeout: float) -> Answer:
        return Answer(False, "no_way_to_ask")


class TerminalAsker:
    """Questions on the terminal; answers are lines read by one daemon thread (a
    blocked ``readline`` must never keep the process alive after the session)."""

    def __init__(self, stdin: IO[str] | None = None, out: IO[str] | None = None) -> None:
        self.stdin = stdin or sys.stdin
        self.out = out or sys.stdout
        self._queue: asyncio.Queue[str | None] | None = None
        self._eof = False
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        return not self._eof

    def _start(self) -> asyncio.Queue[str | None]:
        if self._queue is None:
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue[str | None] = asyncio.Queue()
            self._queue = queue

            def read() -> None:
                while True:
                    try:
                        line: str | None = self.stdin.readline()
                    except (OSError, ValueError):
                        line = ""
                    if not line:
                        line = None
                    with contextlib.suppress(RuntimeError):  # the loop has closed
                        loop.call_soon_threadsafe(queue.put_nowait, line)
                    if line is None:
                        return

            threading.Thread(target=read, name="backline-stdin", daemon=True).start()
        return self._queue

    def _flush_typeahead(self) -> None:
        """On a real terminal, drop keys pressed before the question (an early Enter
        must not answer it); a pipe's scripted answers are left alone."""
        with contextlib.suppress(Exception):
            if self.stdin.isatty():
                import termios

                termios.tcflush(self.stdin.fileno(), termios.TCIFLUSH)

    async def ask(self, question: str, timeout: float) -> Answer:
        async with self._lock:
            if self._eof:
                return Answer(False, "no_way_to_ask")
            reading = self._queue is not None
            self._flush_typeahead()
            queue = self._start()
            while reading and not queue.empty():  # typed while nothing was asked: no answer
                if queue.get_nowait() is None:
                    self._eof = True
                    return Answer(False, "no_way_to_ask")
            self.out.write(f"{question} [y/N] ")
            self.out.flush()
            try:
                line = await asyncio.wait_for(queue.get(), timeout)
            except TimeoutError:
                self.out.write("\n(no answer: taken as no)\n")
                self.out.flush()
                return Answer(False, "no_answer")
            if line is None:
                self._eof = True
                return Answer(False, "no_way_to_ask")
            if line.strip().lower() in ("y", "yes"):
                return Answer(True, "customer_allowed")
            return Answer(False, "customer_declined")


_DIALOG = """
import sys, tkinter
from tkinter import messagebox
root = tkinter.Tk()
root.withdraw()
root.attributes("-topmost", True)
ok = messagebox.askyesno("Backline support", sys.argv[1], default="no", parent=root)
sys.exit(0 if ok else 1)
"""


def display_available() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


class DesktopAsker:
    """A yes/no dialog (Tk) in a child process; anything but a clear yes is no."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        return display_available() and importlib.util.find_spec("tkinter") is not None

    async def ask(self, question: str, timeout: float) -> Answer:
        if not self.available:
            return Answer(False, "no_way_to_ask")
        async with self._lock:  # one dialog at a time
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _DIALOG, question, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                code = await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return Answer(False, "no_answer")
        if code == 0:
            return Answer(True, "customer_allowed")
        if code == 1:
            return Answer(False, "customer_declined")
        return Answer(False, "no_way_to_ask")  # no display after all, Tk missing, ...


def default_asker() -> Asker:
    """What the background agent uses: a dialog when it can show one, else nothing."""
    desktop = DesktopAsker()
    return desktop if desktop.available else NoAsker()


def question(technician: str, capability: str, reason: str = "") -> str:
    """The words shown to the customer; everything in them came from the relay, so
    control characters are dropped before they reach a terminal."""
    text = f"Technician {technician} asks to use '{capability}' on this machine"
    if reason:
        text += f" ({reason})"
    return "".join(ch for ch in text + ". Allow?" if ch.isprintable())
