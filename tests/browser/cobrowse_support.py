"""What the real co-browse browser tests (and bench/cobrowse.py) share: the loopback
test site as a process, an enrolled agent whose policy allows co-browse (consent to
control answered by an ``[ask] command`` that says yes and stays open as the
indicator; its Chromium started through a wrapper that adds a DevTools port, so the
test can be the customer's keyboard and eyes as a second DevTools client), and the
steps to open a co-browse from the console."""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.browser.helpers import CHROMIUM, CHROMIUM_PRESENT, new_user
from tests.harness import AgentProcess, RelayProcess, wait_for

if CHROMIUM_PRESENT:
    from playwright.sync_api import Page, expect

ROOT = Path(__file__).resolve().parents[2]

ASK_SCRIPT = """#!/bin/sh
# The customer's consent program: yes, then stays open as the indicator.
printf '%s\\n' "$*" >> "{dir}/questions.txt"
echo $$ >> "{dir}/indicators.pid"
echo yes
exec sleep 600
"""

# The policy's browser: the real Chromium, with a DevTools port for the test's
# "customer keyboard" (the profile directory says which port).
WRAPPER = """#!/bin/sh
for a in "$@"; do
  case "$a" in
    --user-data-dir=*) printf '%s\\n' "${{a#--user-data-dir=}}" > "{dir}/profile.txt";;
  esac
done
exec {chromium} --remote-debugging-port=0 "$@"
"""

# Where an element of the replayed page is on the console's screen (through the scale).
WHERE_JS = """(id) => {
  const iframe = document.querySelector('#cobrowse-live iframe');
  const b = iframe.contentDocument.getElementById(id).getBoundingClientRect();
  const f = iframe.getBoundingClientRect();
  const scale = f.width / iframe.offsetWidth;
  return {x: f.left + (b.left + b.width / 2) * scale,
          y: f.top + (b.top + b.height / 2) * scale};
}"""
TEXT_JS = """(id) => {
  const iframe = document.querySelector('#cobrowse-live iframe');
  const el = iframe && iframe.contentDocument && iframe.contentDocument.getElementById(id);
  return el ? el.textContent : null;
}"""

# In the customer's page, what the agent asks for after it had to drop events: the
# recorder's fresh full snapshot (a non-enumerable global named after the agent's
# random binding, agent/cobrowse/assets/inject.js). False when there is none.
SNAPSHOT_NOW_JS = """(() => {
  const name = Object.getOwnPropertyNames(window)
    .find((k) => /^__bl[0-9a-f]{16}_snapshot$/.test(k));
  if (!name) return false;
  window[name]();
  return true;
})()"""


class CustomerBrowser:
    """The agent's Chromium, reached as a second DevTools client (the customer's keyboard
    and eyes): attach to the site's page, evaluate, type."""

    def __init__(self, port: int, path: str) -> None:
        from websockets.sync.client import connect

        self.stack = contextlib.ExitStack()
        self.ws = self.stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}",
                                                   max_size=None))
        self.ids = itertools.count(1)
        self.session: str | None = None

    def send(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None) -> dict[str, Any]:
        n = next(self.ids)
        msg: dict[str, Any] = {"id": n, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + 15
        while True:
            reply = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if reply.get("id") == n:
                assert "error" not in reply, (method, reply)
                return reply.get("result") or {}

    def attach(self, url_prefix: str) -> None:
        def page() -> str | None:
            for t in self.send("Target.getTargets")["targetInfos"]:
                if t["type"] == "page" and t["url"].startswith(url_prefix):
                    return str(t["targetId"])
            return None

        target = wait_for(page, 30, "the site's page in the agent's browser")
        self.session = self.send("Target.attachToTarget",
                                 {"targetId": target, "flatten": True})["sessionId"]

    def eval(self, expression: str) -> Any:
        answer = self.send("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, self.session)
        return (answer.get("result") or {}).get("value")

    def type_into(self, element_id: str, text: str) -> None:
        self.eval(f"document.getElementById({element_id!r}).focus()")
        for ch in text:
            self.send("Input.dispatchKeyEvent", {"type": "keyDown", "key": ch, "text": ch},
                      self.session)
            self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": ch}, self.session)

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def serve_site() -> Iterator[dict[str, int]]:
    """The test site (tests/sites/cobrowse/) on two loopback ports: ``{"a": .., "b": ..}``."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.sites.cobrowse.server"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def cobrowse_agent(site: RelayProcess, tmp_path: Path, name: str, tech: str,
                   tech_password: str) -> Iterator[AgentProcess]:
    """A technician ``tech`` of the default group, and an enrolled agent running with a
    policy that allows co-browse (and the screencast); the consent program and the
    browser wrapper write into ``tmp_path / "consent"``."""
    new_user(site, tech, "technician", tech_password)
    site.cli("group", "grant", "default", tech)
    consent = tmp_path / "consent"
    consent.mkdir()
    ask = consent / "ask.sh"
    ask.write_text(ASK_SCRIPT.format(dir=consent))
    ask.chmod(0o755)
    wrapper = consent / "chromium.sh"
    wrapper.write_text(WRAPPER.format(dir=consent, chromium=CHROMIUM))
    wrapper.chmod(0o755)
    policy = ('[capabilities]\ninfo = "allow"\ncobrowse = "allow"\n\n'
              f'[ask]\ntimeout_s = 30\ncommand = ["{ask}"]\n\n'
              f'[cobrowse]\nbrowser = "{wrapper}"\nheadless = true\nscreencast = true\n')
    a = AgentProcess(tmp_path, name)
    assert a.enroll(site.token()).returncode == 0
    (a.state_dir / "policy.toml").write_text(policy)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def customer_browser(consent: Path) -> CustomerBrowser:
    profile = Path(wait_for(lambda: (consent / "profile.txt").exists()
                            and (consent / "profile.txt").read_text().strip(),
                            30, "the agent to start its browser"))
    active = profile / "DevToolsActivePort"
    wait_for(lambda: active.exists() and len(active.read_text().split()) == 2, 30,
             "the agent's browser's DevTools port")
    port, path = active.read_text().split()
    return CustomerBrowser(int(port), path)


def where(p: Page, element_id: str) -> dict[str, float]:
    """The centre of an element of the replayed page, on the console's screen."""
    p.locator("#cobrowse-live").scroll_into_view_if_needed()
    return p.evaluate(WHERE_JS, element_id)  # type: ignore[no-any-return]


def open_cobrowse(p: Page, agent_id: str, url: str, reason: str = "checkout form broken",
                  ) -> None:
    """From the agent's page: a support session, then a co-browse on ``url``, connected
    with the customer's consent to view."""
    p.goto(f"/#/agent/{agent_id}")
    expect(p.locator("dl.facts")).to_contain_text("Online", timeout=20_000)
    form = p.get_by_role("form", name="Open a support session")
    form.get_by_label("Reason").fill(reason)
    form.get_by_role("button", name="Open session").click()
    expect(p.locator("#session-state")).to_have_text("ready")
    start = p.get_by_role("form", name="Start a co-browse")
    start.get_by_label("URL to open").fill(url)
    start.get_by_role("button", name="Start co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Connected", timeout=30_000)
    expect(p.locator("#cobrowse-consent")).to_have_text("Consent to view: given",
                                                        timeout=30_000)
