"""The ``shell`` capability on the agent's SSH server, in process over an in-memory tunnel:
an asyncssh client asks for a pty and the ``shell`` subsystem, as the relay does, and
talks to a real login shell: ``echo``, ``stty size`` after a window change, ``TERM``,
the exit status; ``deny`` refuses the channel, ``ask`` asks (and the indicator that
stays open can end it); closing the channel leaves no process of the shell behind."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from backline.agent.capabilities import builtin_registry
from backline.agent.capabilities.shell import session_members
from backline.agent.consent import Answer, Held
from backline.agent.policy import from_table
from backline.agent.sshserver import EXIT_REFUSED
from tests.unit.test_agent_ssh import PRINCIPAL, Kit, connect
from tests.unit.test_wstunnel import run_async

pytestmark = pytest.mark.skipif(os.name != "posix", reason="ptys are POSIX")


class HoldingAsker:
    """The customer: answers, and for a terminal keeps an indicator open."""

    available = True

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.questions: list[str] = []
        self.held: list[Held] = []
        self.closed = 0

    async def ask(self, question: str, timeout: float) -> Answer:
        raise AssertionError("a terminal must be asked with ask_and_hold")

    async def ask_and_hold(self, question: str, timeout: float, ctx: Any = None,
                           capability: str = "") -> Answer:
        self.questions.append(question)
        if not self.allowed:
            return Answer(False, "customer_declined")

        def close() -> None:
            self.closed += 1

        held = Held(close)
        self.held.append(held)
        return Answer(True, "customer_allowed", held)


def shell_kit(tmp: Path, decision: str = "allow", **shell: str) -> Kit:
    kit = Kit(tmp, policy=from_table({"capabilities": {"shell": decision, "info": "allow"},
                                      "shell": dict(shell)}))
    kit.registry = builtin_registry()
    return kit


def pty_cert(kit: Kit) -> tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]:
    key = asyncssh.generate_private_key("ssh-ed25519")
    now = time.time()
    cert = kit.ca.generate_user_certificate(
        key, "alice", principals=[PRINCIPAL], valid_after=int(now - 60),
        valid_before=int(now + 600), permit_x11_forwarding=False,
        permit_agent_forwarding=False, permit_port_forwarding=False, permit_pty=True,
        permit_user_rc=False, touch_required=False)
    return key, cert


async def open_shell(conn: asyncssh.SSHClientConnection, cols: int = 80, rows: int = 24,
                     term: str = "xterm-256color") -> asyncssh.SSHClientProcess[bytes]:
    return await conn.create_process(subsystem="shell", term_type=term,
                                     term_size=(cols, rows), encoding=None)


async def until(proc: asyncssh.SSHClientProcess[bytes], marker: bytes,
                timeout: float = 15) -> bytes:
    """Everything the terminal shows until ``marker`` (bounded in time and size)."""
    seen = b""
    async with asyncio.timeout(timeout):
        while marker not in seen:
            chunk = await proc.stdout.read(65536)
            assert chunk, f"the terminal closed before {marker!r}; it showed {seen[-500:]!r}"
            seen += chunk
            assert len(seen) < 1 << 20
    return seen


SHELL = ("shell",)


@run_async
async def test_a_login_shell_in_a_pty_echoes_resizes_and_exits_with_its_status(
        tmp_path: Path) -> None:
    kit = shell_kit(tmp_path)
    made: list[Any] = []
    settings = kit.settings
    kit.settings = lambda capabilities=SHELL: made.append(settings(capabilities)) or made[-1]  # type: ignore[method-assign]
    conn, server = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn, 80, 24)
        proc.stdin.write(b"echo $((6*7))\n")
        assert b"42\r\n" in await until(proc, b"42\r\n")
        assert dict(made[0].in_use) == {"shell": 1}  # what `backline-agent sessions` shows
        # (Quotes split the markers, so the terminal's echo of the line never matches.)
        proc.stdin.write(b'echo size=$(stty size) term=$TERM login=$0 home=$HOME "E""ND"\n')
        seen = await until(proc, b"END")
        me = pwd.getpwuid(os.getuid())
        assert b"size=24 80" in seen and b"term=xterm-256color" in seen
        assert f"login=-{os.path.basename(me.pw_shell)}".encode() in seen  # login semantics
        assert f"home={me.pw_dir}".encode() in seen
        proc.change_terminal_size(132, 43)
        proc.stdin.write(b'echo "re""sized=$(stty size)"\n')
        assert b"resized=43 132" in await until(proc, b"resized=43 132")
        proc.stdin.write(b"exit 3\n")
        await asyncio.wait_for(proc.wait_closed(), 15)
        assert proc.exit_status == 3
    await asyncio.wait_for(server, 10)
    assert dict(made[0].in_use) == {}
    events = [e for e in kit.log.read() if e["event"].startswith(("shell.", "channel."))]
    start = next(e for e in events if e["event"] == "shell.start")
    assert start["account"] == me.pw_name and start["term"] == "xterm-256color"
    assert (start["cols"], start["rows"]) == (80, 24)
    end = next(e for e in events if e["event"] == "channel.end")
    assert end["capability"] == "shell" and end["exit_status"] == 3


@run_async
async def test_closing_the_channel_kills_everything_the_shell_started(tmp_path: Path) -> None:
    kit = shell_kit(tmp_path)
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn)
        # A background job in a process group of its own (job control), and a foreground one.
        proc.stdin.write(b"set -m; sleep 300 & sleep 301; echo never\n")
        await until(proc, b"sleep 301")
        pid = next(e["pid"] for e in kit.log.read() if e["event"] == "shell.start")
        await eventually(lambda: sleeps(pid) == ["sleep 300", "sleep 301"], "both sleeps")
        proc.close()
        await eventually(lambda: session_members(pid) == [], "no process of the session left")
    await eventually(lambda: [e for e in kit.log.read() if e["event"] == "shell.end"],
                     "shell.end in the activity log")


async def eventually(check: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def sleeps(sid: int) -> list[str]:
    """The ``sleep`` commands running in the session ``sid``."""
    found = []
    for pid in session_members(sid):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").strip()
        except OSError:
            continue
        if cmd.startswith(b"sleep "):
            found.append(cmd.decode())
    return sorted(found)


@run_async
async def test_deny_refuses_the_channel_and_logs_it(tmp_path: Path) -> None:
    kit = shell_kit(tmp_path, "deny")
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await open_shell(conn)
    assert ("channel.refused", "policy_deny") in kit.refusals()
    assert not [e for e in kit.log.read() if e["event"] == "shell.start"]


@run_async
async def test_a_shell_needs_a_pty_and_a_pty_needs_a_terminal(tmp_path: Path) -> None:
    kit = shell_kit(tmp_path)
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=("shell", "info"))
    async with conn:
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="shell", encoding=None)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.create_process(subsystem="info", term_type="xterm",
                                      term_size=(80, 24))
        with pytest.raises(asyncssh.ChannelOpenError):  # larger than the contract allows
            await open_shell(conn, cols=501)
    assert ("channel.refused", "needs_pty") in kit.refusals()
    assert ("channel.refused", "pty_not_offered") in kit.refusals()
    assert ("pty.refused", "bad_pty") in kit.refusals()


@run_async
async def test_ask_shows_who_what_and_why_and_the_indicator_can_end_it(tmp_path: Path
                                                                       ) -> None:
    kit = shell_kit(tmp_path, "ask")
    asker = HoldingAsker(True)
    kit.asker = asker  # type: ignore[assignment]
    settings = kit.settings
    kit.settings = lambda capabilities=SHELL: _with_reason(settings(capabilities))  # type: ignore[method-assign]
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn)
        proc.stdin.write(b"echo $((6*7))\n")
        await until(proc, b"42\r\n")
        assert asker.questions == [
            "Technician alice asks to open a terminal on this machine, where they can run "
            "any command you could (printer jams) [ticket T-7]. Allow?"]
        asker.held[0].ended.set()  # the customer closes the indicator
        await asyncio.wait_for(proc.wait_closed(), 15)
        assert proc.exit_status == EXIT_REFUSED
    assert asker.closed == 1
    start = next(e for e in kit.log.read() if e["event"] == "channel.start")
    assert start["decision"] == "ask" and start["how"] == "customer_allowed"
    assert ("channel.refused", "customer_ended") in kit.refusals()


def _with_reason(settings: Any) -> Any:
    from dataclasses import replace

    settings.session = replace(settings.session, reason="printer jams", ticket="T-7")
    return settings


@run_async
async def test_ask_declined_ends_the_channel_with_77_and_one_line(tmp_path: Path) -> None:
    kit = shell_kit(tmp_path, "ask")
    kit.asker = HoldingAsker(False)  # type: ignore[assignment]
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn)
        await asyncio.wait_for(proc.wait_closed(), 15)
        assert proc.exit_status == EXIT_REFUSED
        err = await proc.stderr.read()
    assert json.loads(err) == {"refused": "customer_declined", "capability": "shell"}
    assert ("channel.refused", "customer_declined") in kit.refusals()


@run_async
async def test_an_account_the_policy_names(tmp_path: Path) -> None:
    kit = shell_kit(tmp_path, account="nobody")  # nobody has no login shell
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn)
        await asyncio.wait_for(proc.wait_closed(), 15)
        assert proc.exit_status == EXIT_REFUSED
        err = json.loads(await proc.stderr.read())
    if os.getuid() == 0:
        assert "has no login shell" in err["detail"]
    else:
        assert "not root" in err["detail"]
    assert [e["event"] for e in kit.log.read() if e["event"] == "shell.refused"]


@run_async
async def test_as_root_the_shell_runs_as_the_named_account(tmp_path: Path) -> None:
    other = next((p for p in pwd.getpwall() if p.pw_uid >= 1000 and p.pw_uid < 60000
                  and p.pw_shell.endswith(("bash", "sh", "zsh"))), None)
    if os.getuid() != 0 or other is None:
        pytest.skip("needs root and an ordinary account with a login shell")
    kit = shell_kit(tmp_path, account=other.pw_name)
    conn, _ = await connect(kit, [pty_cert(kit)], capabilities=SHELL)
    async with conn:
        proc = await open_shell(conn)
        proc.stdin.write(b'echo "wh""o=$(id -u)"\n')
        assert f"who={other.pw_uid}".encode() in await until(proc, f"who={other.pw_uid}"
                                                             .encode())
        proc.stdin.write(b"exit\n")
        await asyncio.wait_for(proc.wait_closed(), 15)
        assert proc.exit_status == 0
