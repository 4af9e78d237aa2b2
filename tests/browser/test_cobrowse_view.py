"""The co-browse panel in real Chromium, against a real relay and a real agent whose
``cobrowse`` room is the STAND-IN of tests/cobrowse_standin.py (the contract's JSON
lines, no browser on the agent's side: the agent's real room is built separately).

What is proved: the live view (rrweb's Replayer, bundled) renders the stand-in's
snapshot (its <style> and style attributes applied under the console's strict CSP) and
its later mutations, scaled into a narrow panel; a click on the view
sends nothing before control is granted and, after "Ask for control" and the grant,
goes to the agent mapped through the scale to the page's CSS pixels; releasing stops
it; the status of consent and control is shown; screencast frames are shown as
images; the recording replays from the session page with speed and seek. The page is
watched for CSP violations and script errors throughout (the console's strict policy
stays as it is)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import CHROMIUM_PRESENT, SKIP_REASON, Watched, new_user, shot, sign_in
from tests.harness import RelayProcess
from tests.integration.test_cobrowse_relay import POLICY, StandInAgent

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import Page, expect

TECH, TECH_PASSWORD = "cora", "cora's password 1234"
FRAME = "#cobrowse-live iframe"

# The stand-in's button in the replayed page, in page CSS pixels, and where it is on
# the console's screen (through the view's scale).
_BUTTON = """() => {
  const iframe = document.querySelector('#cobrowse-live iframe');
  const b = iframe.contentDocument.getElementById('go').getBoundingClientRect();
  const f = iframe.getBoundingClientRect();
  const scale = f.width / iframe.offsetWidth;
  return {x: b.left + b.width / 2, y: b.top + b.height / 2, scale,
          screenX: f.left + (b.left + b.width / 2) * scale,
          screenY: f.top + (b.top + b.height / 2) * scale};
}"""
_TEXT = """(id) => {
  const iframe = document.querySelector('#cobrowse-live iframe');
  const el = iframe && iframe.contentDocument && iframe.contentDocument.getElementById(id);
  return el ? el.textContent : null;
}"""


@pytest.fixture
def standin(site: RelayProcess, tmp_path: Path) -> Iterator[StandInAgent]:
    new_user(site, TECH, "technician", TECH_PASSWORD)
    site.cli("group", "grant", "default", TECH)
    agent = StandInAgent(tmp_path, "cb-browser", frames=2, frame_kib=4)
    assert agent.enroll(site.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(POLICY)
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


def inputs(agent: StandInAgent) -> list[dict[str, Any]]:
    return [m for m in agent.received() if m.get("type") == "input"]


def button(p: Page) -> dict[str, float]:
    """Where the replayed page's button is, after scrolling the view into sight."""
    p.locator("#cobrowse-live").scroll_into_view_if_needed()
    return p.evaluate(_BUTTON)  # type: ignore[no-any-return]


def ticker(p: Page) -> str | None:
    return p.evaluate(_TEXT, "ticker")  # type: ignore[no-any-return]


def test_live_view_renders_and_input_goes_only_with_control(page: Watched,
                                                            standin: StandInAgent) -> None:
    p = page.page
    p.set_viewport_size({"width": 700, "height": 900})  # the 800 px page is scaled down
    sign_in(p, TECH, TECH_PASSWORD)
    p.goto(f"/#/agent/{standin.agent_id}")
    expect(p.locator("dl.facts")).to_contain_text("Online", timeout=20_000)
    form = p.get_by_role("form", name="Open a support session")
    form.get_by_label("Reason").fill("checkout page broken")
    form.get_by_role("button", name="Open session").click()
    expect(p.locator("#session-state")).to_have_text("ready")
    start = p.get_by_role("form", name="Start a co-browse")
    start.get_by_label("URL to open").fill("https://shop.example.test/cart?session=abc")
    start.get_by_role("button", name="Start co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Connected", timeout=30_000)
    expect(p.locator("#cobrowse-consent")).to_have_text("Consent to view: given")
    expect(p.locator("#cobrowse-control")).to_contain_text("not granted")
    expect(p.locator("#cobrowse-url")).to_contain_text("https://shop.example.test/cart")
    # The snapshot, rendered, and a later mutation of it.
    p.wait_for_function(f"() => ({_TEXT})('title') === 'Stand-in page'", timeout=20_000)
    first = ticker(p)
    assert first is not None and re.fullmatch(r"tick \d+", first)
    p.wait_for_function(f"() => {{ const t = ({_TEXT})('ticker'); return t && t !== {first!r}; }}",
                        timeout=20_000)
    # The page's <style> and style="" apply, through CSSOM (no CSP violation: the page
    # is watched for them).
    styled = p.evaluate("""() => {
      const d = document.querySelector('#cobrowse-live iframe').contentDocument;
      const w = d.defaultView;
      return [w.getComputedStyle(d.getElementById('title')).color,
              w.getComputedStyle(d.getElementById('ticker')).fontWeight];
    }""")
    assert styled == ["rgb(0, 128, 0)", "700"], styled
    where = button(p)
    assert 0.5 < where["scale"] < 1, where  # scaled to the panel
    # Before the grant: a click sends nothing (only the bare pointer may go).
    p.mouse.click(where["screenX"], where["screenY"])
    p.keyboard.type("x")
    time.sleep(1.0)
    assert inputs(standin) == []
    # The click landed on the view: the bare pointer went (shown in the customer's page).
    assert any(m.get("type") == "pointer" for m in standin.received())
    # Ask; the stand-in grants; now the click reaches the agent, in page pixels.
    p.get_by_role("button", name="Ask for control").click()
    expect(p.locator("#cobrowse-control")).to_contain_text("granted: your clicks", timeout=20_000)
    where = button(p)
    p.mouse.click(where["screenX"], where["screenY"])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(
            m.get("event") == "mouseReleased" for m in inputs(standin)):
        time.sleep(0.2)
    pressed = [m for m in inputs(standin) if m.get("event") == "mousePressed"]
    assert pressed, standin.received()[-5:]
    assert pressed[0]["button"] == "left" and pressed[0]["clicks"] == 1
    assert abs(pressed[0]["x"] - where["x"]) <= 2 and abs(pressed[0]["y"] - where["y"]) <= 2, (
        pressed[0], where)
    # Typing reaches the agent too (the view has the focus since the click).
    p.keyboard.type("ok")
    deadline = time.monotonic() + 15
    typed: list[str] = []
    while time.monotonic() < deadline and typed != ["o", "k"]:
        time.sleep(0.2)
        typed = [m["text"] for m in inputs(standin)
                 if m.get("kind") == "key" and m.get("event") == "keyDown"]
    assert typed == ["o", "k"], inputs(standin)[-6:]
    shot(p, "cobrowse-live")
    # Released: input stops at once.
    p.get_by_role("button", name="Release control").click()
    expect(p.locator("#cobrowse-control")).to_contain_text("revoked", timeout=20_000)
    before = len(inputs(standin))
    where = button(p)
    p.mouse.click(where["screenX"], where["screenY"])
    time.sleep(1.0)
    assert len(inputs(standin)) == before
    # Screencast frames, when the agent sends them, are shown as images.
    p.locator("#cobrowse-screencast").check()
    expect(p.locator("#cobrowse-frame")).to_have_attribute(
        "src", re.compile(r"^data:image/jpeg;base64,[A-Za-z0-9+/=]{4096}$"), timeout=20_000)
    expect(p.locator("#cobrowse-hidden")).to_contain_text("password fields")
    assert {"type": "screencast", "on": True} in standin.received()
    # The end, and the recording replayed with speed and seek.
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=20_000)
    row = p.locator("tr[data-cobrowse-recording]").first
    expect(row).to_be_visible(timeout=20_000)
    row.get_by_role("button", name="Replay").click()
    expect(p.locator("#cobrowse-replay-panel")).to_have_attribute("data-state", "ready",
                                                                  timeout=20_000)
    p.wait_for_function("""() => {
      const f = document.querySelector('#cobrowse-replay iframe');
      const t = f && f.contentDocument && f.contentDocument.getElementById('title');
      return t && t.textContent === 'Stand-in page';
    }""", timeout=20_000)
    p.locator("#cobrowse-speed").select_option("4")
    seek = p.locator("#cobrowse-seek")
    seek.get_by_label("Go to second").fill("1")
    seek.get_by_role("button", name="Go").click()
    p.wait_for_function("""() => {
      const f = document.querySelector('#cobrowse-replay iframe');
      const t = f && f.contentDocument && f.contentDocument.getElementById('ticker');
      return t && /^tick [1-9]/.test(t.textContent);
    }""", timeout=20_000)
    shot(p, "cobrowse-replay")
