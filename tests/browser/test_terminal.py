"""The web terminal in real Chromium, against a real relay and a real agent (its pty
and login shell): typing, resizing, copy and paste, closing, replaying the recording
with asciinema-player, the audit trail; a policy that refuses it; hostile output and a
flood. The page is watched for dialogs, CSP violations and script errors throughout."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import (
    CHROMIUM_PRESENT,
    SKIP_REASON,
    Watched,
    new_user,
    shot,
    sign_in,
)
from tests.harness import AgentProcess, RelayProcess, audit_actions, wait_for

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import Browser, Page, expect

ALLOW_SHELL = '[capabilities]\ninfo = "allow"\ndiagnostics = "allow"\nshell = "allow"\n'
# The default policy says nothing of the shell: it is denied.
NO_SHELL = '[capabilities]\ninfo = "allow"\ndiagnostics = "allow"\n'
TECH, TECH_PASSWORD = "terry", "terry's password 12"

TIMES = "\u00d7"  # the console shows a size as 120, the multiplication sign, 30
ROWS = ".terminal-host .xterm-rows > div"
PLAYER_LINES = "#replay .ap-line"
_ANY_LINE = """([selector, pattern]) => {
    const re = new RegExp(pattern);
    return [...document.querySelectorAll(selector)]
        .some((e) => re.test(e.textContent.replace(/\\u00a0/g, ' ').trim()));
}"""


def wait_line(p: Page, selector: str, pattern: str, timeout: float = 20_000) -> None:
    """Until one line shown under ``selector`` matches ``pattern`` as a whole."""
    p.wait_for_function(_ANY_LINE, arg=[selector, f"^(?:{pattern})$"], timeout=timeout)


def has_line(p: Page, selector: str, pattern: str) -> bool:
    return bool(p.evaluate(_ANY_LINE, [selector, f"^(?:{pattern})$"]))


def type_line(p: Page, text: str) -> None:
    p.locator(".terminal-host .xterm-screen").click()
    p.keyboard.type(text)
    p.keyboard.press("Enter")


@pytest.fixture(scope="module")
def technician(site: RelayProcess) -> str:
    new_user(site, TECH, "technician", TECH_PASSWORD)
    site.cli("group", "grant", "default", TECH)
    return TECH


@pytest.fixture
def clipboard_page(page: Watched, site: RelayProcess) -> Watched:
    page.page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=site.url)
    return page


def start_agent(site: RelayProcess, root: Path, name: str, policy: str) -> AgentProcess:
    agent = AgentProcess(root, name)
    assert agent.enroll(site.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(policy)
    return agent.start()


@pytest.fixture
def shell_agent(site: RelayProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    agent = start_agent(site, tmp_path, "term-box", ALLOW_SHELL)
    try:
        yield agent
    finally:
        agent.stop()


def open_session_with_terminal(p: Page, agent: AgentProcess) -> str:
    """From the agent's page, a session that is granted the terminal; its id."""
    p.goto(f"/#/agent/{agent.agent_id}")
    expect(p.locator("dl.facts")).to_contain_text("Online", timeout=20_000)
    form = p.get_by_role("form", name="Open a support session")
    form.get_by_label("Reason").fill("printer queue stuck")
    form.get_by_label("Terminal").check()
    form.get_by_role("button", name="Open session").click()
    expect(p.locator("#session-state")).to_have_text("ready")
    expect(p.locator("#session-capabilities")).to_contain_text("shell")
    return p.url.rsplit("/", 1)[1]


def open_terminal(p: Page) -> None:
    p.get_by_role("button", name="Open terminal").click()
    expect(p.locator("#term-state")).to_have_text("Connected", timeout=30_000)


def events(site: RelayProcess, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_actions(site) if e["action"] == action]


def activity(agent: AgentProcess) -> list[dict[str, Any]]:
    path = agent.state_dir / "activity.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def terminal_size(p: Page) -> tuple[int, int]:
    cols, rows = p.locator("#term-size").inner_text().split(TIMES)
    return int(cols), int(rows)


# --- the tests -----------------------------------------------------------------------


def test_terminal_types_resizes_closes_and_replays(clipboard_page: Watched, site: RelayProcess,
                                                   technician: str,
                                                   shell_agent: AgentProcess) -> None:
    """Acceptance 2: a technician opens a session and its terminal, types
    `echo $((6*7))` and sees 42; resizes the window and `stty size` follows; pastes
    and copies; closes it; the recording replays in the console (speed, seek) and
    shows 42; the playback is in the audit trail."""
    p = clipboard_page.page
    sign_in(p, technician, TECH_PASSWORD)
    session_id = open_session_with_terminal(p, shell_agent)
    expect(p.locator("#no-recordings")).to_be_visible()
    # The info panel tells beforehand what the agent's policy allows.
    p.get_by_role("button", name="Ask the agent").click()
    expect(p.locator("table.policy tr[data-capability='shell']")).to_contain_text("allow")
    open_terminal(p)
    expect(p.locator("#term-recorded")).to_have_text("● Recorded")
    expect(p.locator("#term-role")).to_have_text("You have control")

    type_line(p, "echo $((6*7))")
    wait_line(p, ROWS, "42")
    shot(p, "session-terminal")

    # The window shrinks: the screen refits, the relay is told, the pty follows.
    before = terminal_size(p)
    p.set_viewport_size({"width": 1000, "height": 700})
    expect(p.locator("#term-size")).not_to_have_text(f"{before[0]}{TIMES}{before[1]}")
    cols, rows = terminal_size(p)
    assert cols < before[0] and rows < before[1], (before, (cols, rows))
    # The resize reaches the pty a moment after the screen refits: ask until it tells
    # the new size (bounded), each answer on a line of its own.
    for attempt in range(10):
        type_line(p, f"echo size{attempt}-$(stty size | tr ' ' x)-end")
        wait_line(p, ROWS, rf"size{attempt}-\d+x\d+-end")
        if has_line(p, ROWS, rf"size{attempt}-{rows}x{cols}-end"):
            break
    else:
        raise AssertionError(f"stty size never became {rows} {cols}")

    # Paste (the console's Paste button reads the clipboard) and copy (a selection).
    p.evaluate("text => navigator.clipboard.writeText(text)", "echo pasted-$((3*3))")
    p.get_by_role("button", name="Paste").click()
    # The Paste button reads the clipboard asynchronously, then gives the terminal its
    # focus back: Enter pressed before that lands on the button (a second paste).
    wait_line(p, ROWS, r".*echo pasted-\$\(\(3\*3\)\)")
    expect(p.locator(".terminal-host textarea")).to_be_focused()
    p.keyboard.press("Enter")
    wait_line(p, ROWS, "pasted-9")
    # A paste larger than one frame goes out in several (the relay takes at most 64 KiB
    # a frame); one larger than the terminal takes is not sent, and said so.
    p.evaluate("text => navigator.clipboard.writeText(text)",
               "echo " + "x" * 100_000 + " | wc -c")
    p.get_by_role("button", name="Paste").click()
    wait_line(p, ROWS, r".*x \| wc -c")
    expect(p.locator(".terminal-host textarea")).to_be_focused()
    p.keyboard.press("Enter")
    wait_line(p, ROWS, "100001", timeout=30_000)
    p.evaluate("text => navigator.clipboard.writeText(text)", "y" * 200_000)
    p.get_by_role("button", name="Paste").click()
    expect(p.locator("#term-notice")).to_contain_text("Not sent: 196 KiB at once")
    expect(p.locator("#term-state")).to_have_text("Connected")
    type_line(p, "clear; echo pasted-$((3*3))")
    wait_line(p, ROWS, "pasted-9")
    p.locator(ROWS, has_text=re.compile(r"^\s*pasted-9\s*$")).last.click(click_count=3, force=True)
    p.get_by_role("button", name="Copy").click()
    expect(p.get_by_text("Copied the selection.")).to_be_visible()
    assert "pasted-9" in p.evaluate("() => navigator.clipboard.readText()")

    p.get_by_role("button", name="Close terminal").click()
    expect(p.locator("#term-state")).to_have_text("Closed")

    # The recording is listed once the relay has stored it, and replays.
    row = p.locator("table.recordings tbody tr")
    expect(row).to_have_count(1, timeout=20_000)
    recording_id = row.get_attribute("data-recording")
    assert recording_id
    row.get_by_role("button", name="Play").click()
    expect(p.locator("#replay")).to_have_attribute("data-state", "ready")
    # It plays from the start; twice as fast; 42 shows as it did (the big paste later
    # scrolls it away), the end shows the last command, and back at 0 it is gone.
    p.get_by_label("Speed").select_option("2")
    wait_line(p, PLAYER_LINES, "42", timeout=30_000)
    shot(p, "recording-replay")
    p.get_by_role("button", name="Go to the end").click()
    wait_line(p, PLAYER_LINES, "pasted-9")
    p.get_by_label("Go to second").fill("0")
    p.get_by_role("button", name="Go", exact=True).click()
    p.wait_for_function("""() => ![...document.querySelectorAll('#replay .ap-line')]
        .some((e) => e.textContent.includes('pasted-9'))""", timeout=10_000)

    played = wait_for(lambda: [e for e in events(site, "recording.played")
                               if recording_id in json.dumps(e)], 15, "recording.played")
    assert len(played) == 1, played  # speed changes and seeks are not new playbacks
    assert played[0]["actor"].endswith(technician), played[0]
    assert session_id in json.dumps(played[0])


def test_terminal_refused_by_policy_is_shown_and_audited(page: Watched, site: RelayProcess,
                                                        technician: str,
                                                        tmp_path: Path) -> None:
    """The agent's policy does not allow the shell (the default): the console says the
    terminal was refused, and both sides audit the refusal."""
    agent = start_agent(site, tmp_path, "no-shell-box", NO_SHELL)
    try:
        p = page.page
        sign_in(p, technician, TECH_PASSWORD)
        session_id = open_session_with_terminal(p, agent)
        p.get_by_role("button", name="Open terminal").click()
        expect(p.locator("#term-error")).to_contain_text("Refused")
        expect(p.locator("#term-state")).to_have_text("Refused")
        expect(p.locator(".terminal-host")).to_be_hidden()  # no screen that never was
        expect(p.get_by_role("button", name="Open terminal")).to_be_enabled()
        shot(p, "terminal-refused")
        refused = wait_for(lambda: [
            e for e in events(site, "session.channel.refused")
            if e["target"] == f"session:{session_id}" and e["details"].get("capability") == "shell"
        ], 15, "the relay's refusal in the audit trail")
        assert refused[0]["details"]["reason"].startswith("refused_by_agent"), refused
        local = wait_for(lambda: [
            e for e in activity(agent) if e.get("session_id") == session_id
            and e.get("event") == "channel.refused" and e.get("capability") == "shell"
        ], 15, "the agent's own record of the refusal")
        assert local[0]["reason"] == "policy_deny", local
    finally:
        agent.stop()


def test_a_colleague_watches_and_types_only_once_given_control(
        browser: Browser, page: Watched, site: RelayProcess, technician: str,
        shell_agent: AgentProcess) -> None:
    """A second console on the same terminal sees the output, cannot type, and can
    once the technician hands control over."""
    new_user(site, "vera", "technician", "vera's password 12")
    site.cli("group", "grant", "default", "vera")
    p = page.page
    sign_in(p, technician, TECH_PASSWORD)
    open_session_with_terminal(p, shell_agent)
    session_url = p.url
    open_terminal(p)
    terminal_id = p.locator("#term-id").inner_text()
    context = browser.new_context(ignore_https_errors=True, base_url=site.url,
                                  viewport={"width": 1200, "height": 900})
    colleague = Watched(context.new_page())
    try:
        q = colleague.page
        sign_in(q, "vera", "vera's password 12")
        expect(q.locator("#live-status")).to_have_text("Live")
        q.goto(session_url)
        expect(q.get_by_role("button", name="Open terminal")).to_be_disabled()  # not hers
        q.get_by_text("Watch a terminal a colleague opened").click()
        q.get_by_role("form", name="Join a terminal").get_by_label("Terminal").fill(terminal_id)
        q.get_by_role("button", name="Watch").click()
        expect(q.locator("#term-role")).to_have_text(
            "View only (another technician has control)")
        type_line(p, "echo seen-$((7*8))")
        wait_line(q, ROWS, "seen-56")
        type_line(q, "echo typed-by-viewer")  # xterm takes no input in view-only mode
        type_line(p, "echo still-$((9*9))")
        wait_line(q, ROWS, "still-81")
        assert not has_line(q, ROWS, ".*typed-by-viewer.*")
        assert not has_line(p, ROWS, ".*typed-by-viewer.*")

        hand = p.get_by_role("form", name="Hand control")
        hand.get_by_label("Hand control to").fill("vera")
        hand.get_by_role("button", name="Hand over").click()
        expect(q.locator("#term-role")).to_have_text("You have control")
        expect(p.locator("#term-role")).to_have_text("View only (another technician has control)")
        type_line(q, "echo viewer-$((8*8))")
        wait_line(p, ROWS, "viewer-64")
        wait_line(q, ROWS, "viewer-64")
    finally:
        context.close()
    colleague.check()


ASK_SCRIPT = """#!/bin/sh
# The customer's consent program: says yes, then stays as the indicator of the live
# terminal until the agent ends it or the customer closes it (the test kills it).
printf '%s\\n' "$*" > "{dir}/question.txt"
printf '%s|%s|%s\\n' "$BACKLINE_TECHNICIAN" "$BACKLINE_CAPABILITY" "$BACKLINE_REASON" \\
  > "{dir}/env.txt"
echo $$ > "{dir}/indicator.pid"
echo yes
exec sleep 600
"""


def test_terminal_asked_of_the_customer_who_then_ends_it(page: Watched, site: RelayProcess,
                                                        technician: str,
                                                        tmp_path: Path) -> None:
    """Policy `ask`: the customer's consent program (a subprocess) is asked who wants a
    terminal and why, says yes and stays open as the indicator; the technician types;
    the customer closes the indicator and the terminal ends at once, in the console
    too."""
    consent = tmp_path / "consent"
    consent.mkdir()
    script = consent / "ask.sh"
    script.write_text(ASK_SCRIPT.format(dir=consent))
    script.chmod(0o755)
    policy = NO_SHELL + f'shell = "ask"\n\n[ask]\ntimeout_s = 30\ncommand = ["{script}"]\n'
    agent = start_agent(site, tmp_path, "ask-box", policy)
    try:
        p = page.page
        sign_in(p, technician, TECH_PASSWORD)
        open_session_with_terminal(p, agent)
        open_terminal(p)
        asked = (consent / "env.txt").read_text().strip()
        assert asked == f"{technician}|shell|printer queue stuck", asked
        assert technician in (consent / "question.txt").read_text()
        type_line(p, "echo asked-$((2*2))")
        wait_line(p, ROWS, "asked-4")
        pid = int((consent / "indicator.pid").read_text())
        os.kill(pid, signal.SIGTERM)  # the customer closes the indicator
        expect(p.locator("#term-state")).to_have_text(
            "Ended (exit status 77: the customer's side ended it)")
        expect(p.get_by_role("button", name="Open terminal")).to_be_enabled()
    finally:
        agent.stop()


# Output a hostile machine might send: a title with HTML, an OSC 52 clipboard write and
# an OSC 8 javascript: link, the alternate screen, 24-bit colour (which xterm.js sets as
# style attributes: see csp_shims.js), absurd CSI parameters, C1 controls,
# invalid and cut UTF-8. Nothing that asks the terminal to answer (an answer would be
# typed into the shell).
GARBAGE = (
    r"printf '\033]0;<img src=x onerror=alert(1)>\007\033]52;c;ZWNobyBwd25lZA==\007"
    r"\033]8;;javascript:alert(2)\033\\link\033]8;;\033\\"
    r"\033[?1049h\033[31;1;4;5;7mRED\033[99999999999;99999999999H\033[?1049l"
    r"\033[38;2;255;100;0;48;2;0;0;255mTRUECOLOUR\033[0m"
    r"\033[999999999999999999999999m\033[?9999999h\033(0lqk\033(B\016x\017"
    r"\302\2331;33m\302\2350;c1-title\007\302\233m\n'"
)


def test_hostile_output_renders_safely_and_a_flood_keeps_the_console_responsive(
        page: Watched, site: RelayProcess, technician: str, shell_agent: AgentProcess) -> None:
    """Acceptance 3, the browser's part: escape-sequence garbage and invalid UTF-8 are
    shown as a terminal shows them and do nothing to the page; during
    `yes | head -c 1G` the page still answers, Ctrl+C stops the flood and the shell
    answers again."""
    p = page.page
    sign_in(p, technician, TECH_PASSWORD)
    open_session_with_terminal(p, shell_agent)
    open_terminal(p)
    title = p.title()

    type_line(p, GARBAGE)
    type_line(p, r"printf '\xff\xfe\xc3\x28\xe2\x82 utf8-%s\n' $((4*4))")
    # xterm.js drops bytes that are not UTF-8 (and a sequence cut short) and shows
    # the rest: the "(" after the bad lead byte, then the computed text.
    wait_line(p, ROWS, r"\(\s*utf8-16")
    # Random bytes without ESC and without the lead byte of the C1 controls (nothing
    # that could ask the terminal to answer), then a full reset of the screen.
    type_line(p, "head -c 65536 /dev/urandom | tr -d '\\033\\302'; printf '\\033c'; "
                 "echo ok-$((2+3))")
    wait_line(p, ROWS, "ok-5", timeout=30_000)
    expect(p.locator("#term-state")).to_have_text("Connected")
    assert p.title() == title  # the terminal's title changes are not the page's
    assert p.locator("img[src='x'], iframe, a[href^='javascript']").count() == 0

    type_line(p, "yes | head -c 1G")
    wait_line(p, ROWS, "y")
    # The page answers a click while the flood is on: the Copy button with nothing
    # selected says so. Then the script, and Ctrl+C reaches the shell.
    p.get_by_role("button", name="Copy").click()
    expect(p.get_by_text("Select text in the terminal first")).to_be_visible(timeout=10_000)
    assert p.evaluate("() => 6 * 7") == 42
    assert has_line(p, ROWS, "y")  # still flooding, or just done: it was on screen
    p.locator(".terminal-host .xterm-screen").click()
    p.keyboard.press("Control+C")
    type_line(p, "echo flood-over-$((5*5))")
    wait_line(p, ROWS, "flood-over-25", timeout=120_000)
    expect(p.locator("#term-state")).to_have_text("Connected")
    p.get_by_role("button", name="Close terminal").click()
    expect(p.locator("#term-state")).to_have_text("Closed")
