"""Co-browse of a large page, end to end (issue 13, acceptance 4), and the wheel.

Both real halves, as in test_cobrowse_e2e.py (its helpers: cobrowse_support.py): the
relay, an enrolled agent with its real ``cobrowse`` room and headless Chromium, the
loopback test site's ``/large.html`` (10,000 elements in 1,250 rows, some changing),
the console in Playwright's Chromium.

What is proved:
- the whole page reaches the technician (every row and all 10,000 elements) and its
  changes follow. The recorder starts as soon as the document has its root element,
  so the rows come as the parser inserts them (rrweb's mutations), not in one full
  snapshot (inject.js says why);
- the customer's page does not freeze while it is recorded: the longest main-thread
  task (PerformanceObserver ``longtask``, observed by a page script in its head) over
  its load and the first seconds of changes stays under :data:`FROZEN_MS`, and a
  heartbeat every 50 ms ticks on (its largest gap under :data:`STALLED_MS`). The
  bound is "not frozen", with room for the loaded machine, not the goal: the figures
  are the benchmark's (bench/cobrowse.py, ``large_page_longest_task_ms``; what was
  measured, and why the bound is what it is: docs/cobrowse.md, "Large pages"); the
  test prints what it saw. That the page is not serialised in one task is checked
  where it shows, in the recording: the page's first full snapshot holds none of the
  rows, and the page's scripts saw the document's true ``readyState``;
- a fresh full snapshot of the loaded page (what the agent asks for after it had to
  drop events), larger than a channel line, reaches the technician whole as
  ``rrweb_part`` lines, and a console joining after it (``?watch=1``) gets it from the
  relay's catch-up, in parts too. That snapshot is one task of rrweb's, held to
  :data:`FROZEN_MS` too;
- the wheel: without a control grant a wheel on the technician's view scrolls nothing
  in the customer's page; after the grant it scrolls it, and the view follows;
- the recording holds the parts, and replays the whole page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.cobrowse_support import (
    SNAPSHOT_NOW_JS,
    TEXT_JS,
    CustomerBrowser,
    cobrowse_agent,
    customer_browser,
    open_cobrowse,
    serve_site,
)
from tests.browser.helpers import CHROMIUM_PRESENT, SKIP_REASON, Watched, sign_in
from tests.harness import AgentProcess, RelayProcess, wait_for

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import Page, expect

TECH, TECH_PASSWORD = "lena", "lena's password 2468"
ROWS, ELEMENTS = 1250, 10_000
#: The longest main-thread task the customer's page may have while it is recorded
#: (docs/cobrowse.md, "Large pages": 89 to 644 ms measured in this test at load 1.5 to
#: 13, against 298 to 1002 ms for rrweb's own start; the margin is for the suite's load,
#: under which a task's wall time also counts the renderer's wait for a core).
FROZEN_MS = 2000
#: The heartbeat's largest gap: it ticks again (a timer is late on a loaded machine).
STALLED_MS = 5000
#: The customer's page has lived this long and its heartbeat ticked this often when its
#: tasks are read.
LIVED_MS, BEATS = 3000, 20

# What of the large page the replayed page has (in the live view or the replay).
_COUNT = """(sel) => {
  const f = document.querySelector(sel);
  const d = f && f.contentDocument;
  const rows = d && d.getElementById('rows');
  return rows ? {rows: rows.children.length, elements: rows.querySelectorAll('*').length,
                 scrollY: f.contentWindow.scrollY} : null;
}"""
_WHOLE = (f"() => {{ const c = ({_COUNT})('#cobrowse-live iframe');"
          f" return c && c.rows === {ROWS}; }}")
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


def joined(p: Page) -> int:
    return int(p.locator("#cobrowse-live").get_attribute("data-joined") or 0)


def wheel_on_view(p: Page, dy: float) -> tuple[float, float]:
    """A wheel on the middle of the view; where the mouse was (on the console's screen)."""
    p.locator("#cobrowse-live").scroll_into_view_if_needed()
    box = p.locator("#cobrowse-live").bounding_box()
    assert box is not None
    at = (box["x"] + box["width"] / 2, box["y"] + min(200, box["height"] / 2))
    p.mouse.move(*at)
    p.mouse.wheel(0, dy)
    return at


def dot(customer: CustomerBrowser) -> float | None:
    """Where the technician's pointer is drawn in the customer's page (its left, px)."""
    left = customer.eval("(() => { const d = document.querySelector("
                         "'[data-backline-overlay]'); return d ? d.style.left : null; })()")
    return float(left.removesuffix("px")) if left else None


class SentBarrier:
    """Returns once whatever the console sent before now has been handled by the agent.
    Without control a mouse move on the view sends the bare pointer, which the agent
    handles in order after any line before it (agent/capabilities/cobrowse.py,
    ``handle``) and draws in the customer's page: each barrier moves the mouse further
    right than any move before it and waits for the drawn pointer to get there. A wheel
    sent by mistake would have been dispatched before it; a short wait lets its scroll
    start."""

    def __init__(self, p: Page, customer: CustomerBrowser) -> None:
        self.p, self.customer = p, customer
        self.rightmost: float | None = None
        self.step = 0

    def __call__(self, at: tuple[float, float]) -> None:
        time.sleep(0.15)  # the console sends the pointer at most every 100 ms
        if self.rightmost is None:
            self.rightmost = wait_for(lambda: dot(self.customer), 20,
                                      "the technician's pointer in the page")
        self.step += 1
        self.p.mouse.move(at[0] + 110 * self.step, at[1])
        least = self.rightmost + 40  # the view's scale is at most 1: 110 px or more
        self.rightmost = wait_for(lambda: (d := dot(self.customer)) is not None
                                  and d > least and d, 20, "the pointer's new place")
        time.sleep(0.3)


def watcher_sees_the_whole_page(p: Page) -> None:
    """A second console joins as a watcher (a tab of the technician's own: a colleague's
    right to watch is test_cobrowse_e2e.py's): the relay's catch-up gives it the page."""
    w = Watched(p.context.new_page())
    try:
        w.page.goto(p.url)
        w.page.locator("#cobrowse-watch").click()
        expect(w.page.locator("#cobrowse-role")).to_contain_text("Watching", timeout=30_000)
        w.page.wait_for_function(_WHOLE, timeout=60_000)
        assert count(w.page)["elements"] == ELEMENTS  # type: ignore[index]
        assert joined(w.page) >= 1  # the catch-up began with the snapshot's parts
        w.check()
    finally:
        w.page.close()


def test_a_large_page_mirrors_whole_without_freezing_and_the_wheel_needs_control(
        page: Watched, agent: AgentProcess, site_pages: dict[str, int], tmp_path: Path
        ) -> None:
    p = page.page
    url = f"http://127.0.0.1:{site_pages['a']}/large.html"
    sign_in(p, TECH, TECH_PASSWORD)
    started = time.monotonic()
    open_cobrowse(p, agent.agent_id, url, reason="large page")

    # 1. The whole page, in the technician's view, and its changes after.
    p.wait_for_function(_WHOLE, timeout=90_000)
    first_view_s = time.monotonic() - started
    assert count(p)["elements"] == ELEMENTS  # type: ignore[index]
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
        assert customer.eval("window.__readyAtHead") == ["loading", False]
        wait_for(lambda: customer.eval(f"performance.now() > {LIVED_MS} && "
                                        f"window.__beats > {BEATS}"), 30,
                 "the customer's page to have lived a while, its heartbeat ticking")
        longest = customer.eval("window.__longest()")
        beats, gap = customer.eval("[window.__beats, window.__maxGap]")
        tasks = customer.eval("window.__longtasks")
        print(f"\nlarge page: whole in the view {first_view_s:.1f} s after the start; "
              f"longest task {longest} ms ({len(tasks)} over 50 ms: {tasks}); heartbeat "
              f"{beats} beats, largest gap {gap:.0f} ms")
        assert longest < FROZEN_MS, tasks
        assert gap < STALLED_MS, (beats, gap)

        # 3. A fresh full snapshot (larger than a line): in parts, joined, whole.
        before = joined(p)
        asked_at = customer.eval("performance.now()")
        assert customer.eval(SNAPSHOT_NOW_JS), "no snapshot function in the page"
        p.wait_for_function(f"() => Number(document.querySelector('#cobrowse-live')"
                            f".dataset.joined || 0) > {before}", timeout=60_000)
        p.wait_for_function(_WHOLE, timeout=30_000)
        assert count(p)["elements"] == ELEMENTS  # type: ignore[index]
        # Seconds after the snapshot's task: its longtask entry (if over 50 ms) is in.
        snap = [t for t in customer.eval("window.__longtasks") if t[0] >= asked_at - 1]
        print(f"fresh full snapshot of the loaded page: its tasks over 50 ms {snap}")
        assert max([0, *(d for _, d in snap)]) < FROZEN_MS, snap

        # A console joining now gets that snapshot (in parts) from the relay's catch-up.
        watcher_sees_the_whole_page(p)

        # 4. The wheel: nothing without control...
        after_what_was_sent = SentBarrier(p, customer)
        assert customer.eval("window.scrollY") == 0
        at = wheel_on_view(p, 800)
        after_what_was_sent(at)
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
        before_y = customer.eval("window.scrollY")
        at = wheel_on_view(p, 800)
        after_what_was_sent(at)
        assert customer.eval("window.scrollY") == before_y
    finally:
        customer.close()

    # 5. The recording holds the snapshot's parts, and replays the whole page.
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=30_000)
    row = p.locator("tr[data-cobrowse-recording]").first
    expect(row).to_be_visible(timeout=20_000)
    recording = p.evaluate("""async (id) => (await fetch(
        `/api/v1/recordings/${encodeURIComponent(id)}`, {credentials: "same-origin"})).text()""",
                           row.get_attribute("data-cobrowse-recording"))
    lines = [json.loads(x) for x in recording.split("\n") if x]
    kinds = [x["type"] for x in lines]
    assert kinds.count("rrweb_part") >= 2, kinds[:20]
    # The page's first full snapshot (in a line of its own kind) was taken before the
    # rows were parsed: they came as mutations.
    nav = next(i for i, x in enumerate(lines)
               if x["type"] == "nav" and str(x.get("url")).endswith("/large.html"))
    first = next((e for x in lines[nav:] if x["type"] == "rrweb" for e in x["events"]
                  if e["type"] == 2), None)
    assert first is not None, "the page's first full snapshot came in parts"
    assert 'row 1:' not in json.dumps(first) and len(json.dumps(first)) < 64 * 1024
    row.get_by_role("button", name="Replay").click()
    p.wait_for_function(f"() => {{ const c = ({_COUNT})('#cobrowse-replay iframe');"
                        f" return c && c.rows === {ROWS}; }}", timeout=60_000)
