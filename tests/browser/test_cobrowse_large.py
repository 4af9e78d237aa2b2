"""Co-browse of a large page, end to end (issue 13, acceptance 4), and the wheel.

Both real halves, as in test_cobrowse_e2e.py (its helpers: cobrowse_support.py): the
relay, an enrolled agent with its real ``cobrowse`` room and headless Chromium, the
loopback test site's ``/large.html`` (10,000 elements in 1,250 rows, some changing),
the console in Playwright's Chromium.

What is proved:
- the page's full snapshot, larger than a channel line, reaches the technician whole
  (it goes as ``rrweb_part`` lines: the view has every row and all 10,000 elements) and
  its changes follow; a colleague joining later (``?watch=1``) gets it too, from the
  relay's catch-up;
- the customer's page does not freeze while it is recorded: the longest main-thread
  task (PerformanceObserver ``longtask``, observed by a page script that runs before
  the recorder starts) is under :data:`FROZEN_MS`, and a heartbeat every 50 ms kept
  ticking (its largest gap under :data:`FROZEN_MS` too). Generous on purpose: on the
  shared two-core machine at load average 6 to 17 the longest task measured 615 to
  2732 ms (the snapshot itself, in the recorder's DOMContentLoaded listener: it grows
  with the load); a frozen page (a task that never ends) fails it. The exact figure is
  the benchmark's (bench/cobrowse.py, ``large_page_longest_task_ms``); the test prints
  what it saw;
- the wheel: without a control grant a wheel on the technician's view scrolls nothing
  in the customer's page; after the grant it scrolls it, and the view follows;
- the recording holds the parts, and replays.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.cobrowse_support import (
    TEXT_JS,
    cobrowse_agent,
    customer_browser,
    open_cobrowse,
    serve_site,
)
from tests.browser.helpers import CHROMIUM_PRESENT, SKIP_REASON, Watched, new_user, sign_in
from tests.harness import AgentProcess, RelayProcess, wait_for

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import Browser, Page, expect

TECH, TECH_PASSWORD = "lena", "lena's password 2468"
WATCHER = "walt"
ROWS, ELEMENTS = 1250, 10_000
FROZEN_MS = 5000

# What of the large page the replayed page has (in the live view or the replay).
_COUNT = """(sel) => {
  const f = document.querySelector(sel);
  const d = f && f.contentDocument;
  const rows = d && d.getElementById('rows');
  return rows ? {rows: rows.children.length, elements: rows.querySelectorAll('*').length,
                 scrollY: f.contentWindow.scrollY} : null;
}"""


@pytest.fixture
def site_pages() -> Iterator[dict[str, int]]:
    with serve_site() as ports:
        yield ports


@pytest.fixture
def agent(site: RelayProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    with cobrowse_agent(site, tmp_path, "cb-large", TECH, TECH_PASSWORD) as a:
        yield a


def count(p: Page, sel: str = "#cobrowse-live iframe") -> dict[str, int] | None:
    return p.evaluate(_COUNT, sel)  # type: ignore[no-any-return]


def wheel_on_view(p: Page, dy: float) -> None:
    p.locator("#cobrowse-live").scroll_into_view_if_needed()
    box = p.locator("#cobrowse-live").bounding_box()
    assert box is not None
    p.mouse.move(box["x"] + box["width"] / 2, box["y"] + min(200, box["height"] / 2))
    p.mouse.wheel(0, dy)


def watcher_sees_the_whole_page(browser: Browser, site: RelayProcess, session_url: str
                                ) -> None:
    new_user(site, WATCHER, "technician", TECH_PASSWORD)
    site.cli("group", "grant", "default", WATCHER)
    context = browser.new_context(ignore_https_errors=True, base_url=site.url,
                                  viewport={"width": 1200, "height": 900})
    try:
        w = Watched(context.new_page())
        sign_in(w.page, WATCHER, TECH_PASSWORD)
        w.page.goto(session_url)
        w.page.locator("#cobrowse-watch").click()
        expect(w.page.locator("#cobrowse-role")).to_contain_text("Watching", timeout=30_000)
        w.page.wait_for_function(f"() => {{ const c = ({_COUNT})('#cobrowse-live iframe');"
                                 f" return c && c.rows === {ROWS}; }}", timeout=60_000)
        assert count(w.page)["elements"] == ELEMENTS  # type: ignore[index]
        w.check()
    finally:
        context.close()


def test_a_large_page_mirrors_whole_without_freezing_and_the_wheel_needs_control(
        page: Watched, browser: Browser, site: RelayProcess, agent: AgentProcess,
        site_pages: dict[str, int], tmp_path: Path) -> None:
    p = page.page
    url = f"http://127.0.0.1:{site_pages['a']}/large.html"
    sign_in(p, TECH, TECH_PASSWORD)
    started = time.monotonic()
    open_cobrowse(p, agent.agent_id, url, reason="large page")

    # 1. The whole page, in the technician's view, and its changes after.
    p.wait_for_function(f"() => {{ const c = ({_COUNT})('#cobrowse-live iframe');"
                        f" return c && c.rows === {ROWS}; }}", timeout=90_000)
    first_view_s = time.monotonic() - started
    assert count(p)["elements"] == ELEMENTS  # type: ignore[index]
    assert int(p.locator("#cobrowse-live").get_attribute("data-joined") or 0) >= 1
    first = p.evaluate(TEXT_JS, "tick")
    p.wait_for_function(f"() => {{ const t = ({TEXT_JS})('tick'); return t && t !== "
                        f"{first!r}; }}", timeout=20_000)
    p.wait_for_function("""() => [...document.querySelector('#cobrowse-live iframe')
        .contentDocument.querySelectorAll('#rows > div > span')]
        .some((s) => s.textContent.startsWith('changed'))""", timeout=20_000)

    # 2. The customer's page did not freeze.
    customer = customer_browser(tmp_path / "consent")
    try:
        customer.attach(url)
        assert customer.eval("window.__longtasks !== null"), "no longtask observer"
        longest = customer.eval("window.__longest()")
        beats, gap = customer.eval("[window.__beats, window.__maxGap]")
        tasks = customer.eval("window.__longtasks")
        print(f"\nlarge page: first view {first_view_s:.1f} s after start; longest task "
              f"{longest} ms ({len(tasks)} over 50 ms: {tasks}); DOMContentLoaded (the "
              f"snapshot) {customer.eval('window.__dcl()')} ms; heartbeat {beats} beats, "
              f"largest gap {gap:.0f} ms")
        assert longest < FROZEN_MS, tasks
        assert beats > 20 and gap < FROZEN_MS, (beats, gap)

        # A colleague joining now gets the snapshot (in parts) from the relay's catch-up.
        watcher_sees_the_whole_page(browser, site, p.url)

        # 3. The wheel: nothing without control...
        assert customer.eval("window.scrollY") == 0
        wheel_on_view(p, 800)
        time.sleep(1.5)
        assert customer.eval("window.scrollY") == 0
        # ... after the grant, it scrolls the customer's page, and the view follows.
        p.get_by_role("button", name="Ask for control").click()
        expect(p.locator("#cobrowse-control")).to_contain_text("granted: your clicks",
                                                               timeout=30_000)
        wheel_on_view(p, 800)
        scrolled = wait_for(lambda: customer.eval("window.scrollY") or None, 15,
                            "the customer's page to scroll")
        assert scrolled > 100
        p.wait_for_function(f"() => {{ const c = ({_COUNT})('#cobrowse-live iframe');"
                            " return c && c.scrollY > 100; }", timeout=20_000)
        p.get_by_role("button", name="Release control").click()
        expect(p.locator("#cobrowse-control")).to_contain_text("revoked", timeout=20_000)
        before = customer.eval("window.scrollY")
        wheel_on_view(p, 800)
        time.sleep(1.5)
        assert customer.eval("window.scrollY") == before
    finally:
        customer.close()

    # 4. The recording holds the snapshot's parts, and replays the whole page.
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=30_000)
    row = p.locator("tr[data-cobrowse-recording]").first
    expect(row).to_be_visible(timeout=20_000)
    recording = p.evaluate("""async (id) => (await fetch(
        `/api/v1/recordings/${encodeURIComponent(id)}`, {credentials: "same-origin"})).text()""",
                           row.get_attribute("data-cobrowse-recording"))
    kinds = [json.loads(x)["type"] for x in recording.split("\n") if x]
    assert kinds.count("rrweb_part") >= 2, kinds[:20]
    row.get_by_role("button", name="Replay").click()
    p.wait_for_function(f"() => {{ const c = ({_COUNT})('#cobrowse-replay iframe');"
                        f" return c && c.rows === {ROWS}; }}", timeout=60_000)
