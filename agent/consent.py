"""Asking the customer: "Technician X asks to run Y. Allow?".

Three ways, chosen by what the machine offers:

* :class:`TerminalAsker` for ``backline-agent join``: the customer is at the terminal
  that started it, so the question is printed there and a line is read back;
* :class:`DesktopAsker` for the background agent when a display is available: a small
  dialog in a child process (a hung GUI cannot hang the agent, and a timeout kills it);
* :class:`NoAsker` otherwise: with no way to ask, ``ask`` means no.

* :class:`CommandAsker` when the policy names a consent program (``[ask] command``).

Every asker fails closed: no answer within the policy's timeout, a closed terminal or
a dialog that cannot open all mean no.

For a terminal (``shell``) the question stays on screen after a yes, as an indicator
that a technician has a terminal on this machine (:meth:`ask_and_hold`, giving a
:class:`Held`): the dialog turns into a "terminal open: End it" window, and closing
it ends the terminal at once. The terminal asker prints a line when it opens and
another when it closes (Ctrl-C ends the whole session there).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, NamedTuple, Protocol


class Held:
    """The customer's view of a live channel after a yes (a dialog left open).

    ``ended`` is set when the customer closes it; :meth:`close` takes it down when the
    channel ends first."""

    def __init__(self, close: Callable[[], Any] | None = None) -> None:
        self.ended = asyncio.Event()
        self._close = close

    async def close(self) -> None:
        if self._close is not None:
            result = self._close()
            if asyncio.iscoroutine(result):
                await result
            self._close = None


class Answer(NamedTuple):
    allowed: bool
    # customer_allowed | customer_declined | no_answer | no_way_to_ask
    how: str
    #: After a yes from :meth:`ask_and_hold`: the indicator left open, if any.
    held: Held | None = None


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

    async def ask_and_hold(self, question: str, timeout: float, ctx: Any = None,
                           capability: str = "", indicator: str = "") -> Answer:
        """:meth:`ask`; after a yes, one line says the terminal is open, one that it closed."""
        answer = await self.ask(question, timeout)
        if not answer.allowed:
            return answer
        who = _printable(getattr(ctx, "technician", "") or "the technician")
        self.out.write(f"[backline] {capability or 'a terminal'} open for {who}: it stays "
                       "open until they close it or you press Ctrl-C.\n")
        self.out.flush()

        def closed() -> None:
            self.out.write(f"[backline] {capability or 'the terminal'} closed.\n")
            self.out.flush()

        return Answer(True, answer.how, Held(closed))


_DIALOG = """
import sys, tkinter
from tkinter import messagebox
root = tkinter.Tk()
root.withdraw()
root.attributes("-topmost", True)
ok = messagebox.askyesno("Backline support", sys.argv[-1], default="no", parent=root)
if not ok or sys.argv[1] != "--hold":
    sys.exit(0 if ok else 1)
print("yes", flush=True)
# Stay open as the indicator: closing this window ends the terminal.
root.deiconify()
root.title("Backline support: terminal open")
tkinter.Label(root, text=sys.argv[2], padx=16, pady=12, wraplength=420).pack()
tkinter.Button(root, text="End it now", command=root.destroy).pack(pady=(0, 12))
root.protocol("WM_DELETE_WINDOW", root.destroy)
root.mainloop()
"""


def display_available() -> bool:
    if sys.platform in ("win32", "darwin"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _printable(text: str) -> str:
    return "".join(ch for ch in text if ch.isprintable())[:300]


class CommandAsker:
    """A consent program in a child process (a hung GUI cannot hang the agent, and a
    timeout kills it): the question is its last argument; exit status 0, or a first
    line ``yes``, means yes, anything else no. With ``hold``, a program that said
    ``yes`` and keeps running is the indicator: the agent ends it when the channel
    ends, and its exiting first ends the channel."""

    def __init__(self, argv: Sequence[str], hold_argv: Sequence[str] | None = None) -> None:
        self.argv = list(argv)
        self.hold_argv = list(argv if hold_argv is None else hold_argv)
        #: The indicator text among hold_argv, if any (DesktopAsker's).
        self.hold_text = ""
        self._lock = asyncio.Lock()

    @property
    def available(self) -> bool:
        return bool(self.argv)

    async def ask(self, question: str, timeout: float) -> Answer:
        return await self._ask([*self.argv, question], timeout, None, "", hold=False)

    async def ask_and_hold(self, question: str, timeout: float, ctx: Any = None,
                           capability: str = "", indicator: str = "") -> Answer:
        """``indicator``: what the window left open says, when this asker's own
        indicator text (``hold_text``, the last fixed argument) is not the right one."""
        argv = list(self.hold_argv)
        if indicator and self.hold_text and argv and argv[-1] == self.hold_text:
            argv[-1] = indicator
        return await self._ask([*argv, question], timeout, ctx, capability, hold=True)

    def _env(self, ctx: Any, capability: str) -> dict[str, str]:
        env = dict(os.environ)
        if ctx is not None:
            env.update(BACKLINE_TECHNICIAN=_printable(ctx.technician),
                       BACKLINE_CAPABILITY=capability, BACKLINE_REASON=_printable(ctx.reason),
                       BACKLINE_TICKET=_printable(ctx.ticket),
                       BACKLINE_SESSION=ctx.session_id)
        return env

    async def _ask(self, argv: list[str], timeout: float, ctx: Any, capability: str,
                   hold: bool) -> Answer:
        if not self.available:
            return Answer(False, "no_way_to_ask")
        async with self._lock:  # one question at a time
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, env=self._env(ctx, capability))
            except OSError:
                return Answer(False, "no_way_to_ask")
            assert proc.stdout is not None
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), timeout)
                said_yes = line.strip().lower() == b"yes"
                if not said_yes:
                    code = await asyncio.wait_for(proc.wait(), timeout)
            except (TimeoutError, ValueError):  # ValueError: a line over 64 KiB
                await _kill(proc)
                return Answer(False, "no_answer")
        if said_yes:
            if not hold:
                await _kill(proc)
                return Answer(True, "customer_allowed")
            return Answer(True, "customer_allowed", _held_by(proc))
        if code == 0:
            return Answer(True, "customer_allowed")
        if code == 1:
            return Answer(False, "customer_declined")
        return Answer(False, "no_way_to_ask")  # no display after all, Tk missing, ...


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


def _held_by(proc: asyncio.subprocess.Process) -> Held:
    held = Held(lambda: _kill(proc))

    async def watch() -> None:
        await proc.wait()
        held.ended.set()

    task = asyncio.ensure_future(watch())
    held._watch = task  # type: ignore[attr-defined]  # kept alive with the indicator
    return held


class DesktopAsker(CommandAsker):
    """A yes/no dialog (Tk) in a child process; anything but a clear yes is no. For a
    terminal it stays open after the yes, as the indicator with an "End it now" button."""

    def __init__(self) -> None:
        text = ("A technician has a terminal on this machine. Close this window to end it "
                "at once.")
        super().__init__([sys.executable, "-c", _DIALOG, "--ask"],
                         [sys.executable, "-c", _DIALOG, "--hold", text])
        self.hold_text = text

    @property
    def available(self) -> bool:
        return display_available() and importlib.util.find_spec("tkinter") is not None


def default_asker(command: Sequence[str] = ()) -> Asker:
    """What the background agent uses: the policy's consent program when it names one,
    else a dialog when it can show one, else nothing."""
    if command:
        return CommandAsker(command)
    desktop = DesktopAsker()
    return desktop if desktop.available else NoAsker()


#: How each capability is put to the customer ("Technician X asks to ...").
WHAT = {
    "shell": "open a terminal on this machine, where they can run any command {account}",
}


def question(technician: str, capability: str, reason: str = "", ticket: str = "",
             account: str = "") -> str:
    """The words shown to the customer: who asks, for what, and why. Everything in them
    came from the relay, so control characters are dropped before they reach a terminal."""
    what = WHAT.get(capability)
    if what is None:
        text = f"Technician {technician} asks to use '{capability}' on this machine"
    else:
        who = f"as the user {account}" if account else "you could"
        text = f"Technician {technician} asks to {what.format(account=who)}"
    if reason:
        text += f" ({reason})"
    if ticket:
        text += f" [ticket {ticket}]"
    return "".join(ch for ch in text + ". Allow?" if ch.isprintable())
