"""Co-browse end to end: both halves together, never a stand-in.

A real relay; a real enrolled agent process (``backline-agent run``) whose ``cobrowse``
room is the real one, with its own headless Chromium; the loopback test site
(tests/sites/cobrowse/, two origins); the technician's console in Playwright's
Chromium. The policy allows viewing; control is asked of the customer through the
``[ask] command`` (a subprocess that says yes and stays as the indicator), as other
tests answer consent.

The customer's own keyboard: the agent's browser is started through a wrapper (the
policy's ``[cobrowse] browser``) that adds ``--remote-debugging-port=0``, so the test can
reach that browser over the DevTools protocol as a second client and type with
trusted key events (``Input.dispatchKeyEvent``), as a keyboard would. The agent's own
pipe is untouched.

What is proved (issue 13, acceptance 1 and 2): the technician's view shows the page and
the element that changes every second; the private element is absent; the password the
customer types is in 0 bytes of anything the relay holds (its whole data directory:
database, blobs, logs; its log; the recording served back), searched raw, in base64 at
every alignment and JSON-escaped; without control the technician's click does nothing
in the customer's page, nor does a page script clicking every element (nothing grants
control); after the grant a console click fires the page's click handler (a trusted
event) and typing reaches a text field; releasing control, or the
customer closing the control indicator, stops it at once. Also: a colleague watching
(``?watch=1``) sees the page; a proposed URL opens; the screencast's frames show.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.cobrowse_support import (
    TEXT_JS,
    CustomerBrowser,
    cobrowse_agent,
    customer_browser,
    open_cobrowse,
    serve_site,
    where,
)
from tests.browser.helpers import CHROMIUM_PRESENT, SKIP_REASON, Watched, new_user, sign_in
from tests.harness import AgentProcess, RelayProcess, wait_for

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import Browser, expect

TECH, TECH_PASSWORD = "cleo", "cleo's password 5678"
WATCHER = "wade"  # a colleague of the same group, watching
PASSWORD = "Kq7zW9pXv2"  # what the customer types into the password field
PRIVATE = "PRIVATE-SECRET-4711"  # the site's data-backline-private element's text
TYPED = "hello"  # what the technician types into the name field, with control
_TEXT = TEXT_JS

# What of the page's harder parts the replayed page has: its frames (same-origin, and
# cross-origin: merged by the agent), shadow roots (one made before any recorder could start) and
# constructed stylesheets (the document's, and a shadow root's).
_PARTS = """() => {
  const d = document.querySelector('#cobrowse-live iframe').contentDocument;
  const w = d.defaultView;
  const text = (id) => {
    const f = d.getElementById(id);
    const b = f && f.contentDocument && f.contentDocument.body;
    return b ? b.textContent.trim() : null;
  };
  const shadowP = (id) => {
    const h = d.getElementById(id);
    return h && h.shadowRoot ? h.shadowRoot.querySelector('p') : null;
  };
  const early = shadowP('early-host'), late = shadowP('late-host');
  return {same: text('same'), cross: text('cross'),
          early: early && early.textContent, late: late && late.textContent,
          lateColor: late && w.getComputedStyle(late).color,
          bodyFont: w.getComputedStyle(d.body).fontFamily};
}"""
_PARTS_CROSS = f"""() => (({_PARTS})().cross || '').startsWith('CROSS-ORIGIN-FRAME-TEXT')"""


def forms_of(secret: str) -> list[bytes]:
    """The secret raw and in base64 at each of the three alignments (JSON escapes are
    undone by :func:`unescaped` before searching, whichever characters were escaped)."""
    raw = secret.encode()
    forms = [raw]
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        # Drop the characters that depend on the padding bytes and the tail.
        forms.append(enc[(4 * pad + 2) // 3 + 1: -4] if pad else enc[:-4])
    forms.append(base64.urlsafe_b64encode(raw)[:-4])
    return [f for f in forms if len(f) >= 8]


def test_the_search_finds_the_secret_in_every_form_it_could_take(tmp_path: Path) -> None:
    """Hostile check of the search itself: a store holding the password raw, JSON-escaped
    or base64-encoded at any alignment (inside other bytes) is found."""
    wrapped = [PASSWORD.encode(), json.dumps(PASSWORD, ensure_ascii=True).encode()
               .replace(b"K", b"\\u004b"),
               *(base64.b64encode(b"x" * pad + PASSWORD.encode() + b"tail") for pad in range(3)),
               base64.urlsafe_b64encode(b"yy" + PASSWORD.encode())]
    for i, blob in enumerate(wrapped):
        (tmp_path / f"f{i}").write_bytes(b"before " + blob + b" after")
        assert found_in(tmp_path, forms_of(PASSWORD)), blob
        (tmp_path / f"f{i}").unlink()
    (tmp_path / "clean").write_bytes(b"*" * len(PASSWORD))
    assert found_in(tmp_path, forms_of(PASSWORD)) == []


def unescaped(data: bytes) -> bytes:
    """``\\u00XX`` JSON escapes of ASCII characters undone, wherever they are."""
    return re.sub(rb"\\u00([0-7][0-9a-fA-F])", lambda m: bytes([int(m.group(1), 16)]), data)


def hits_in(data: bytes, forms: list[bytes]) -> list[bytes]:
    plain = unescaped(data)
    return [f for f in forms if f in data or f in plain]


def found_in(root: Path, forms: list[bytes]) -> list[str]:
    hits = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        hits += [f"{path}: {f!r}" for f in hits_in(path.read_bytes(), forms)]
    return hits


@pytest.fixture
def site_pages() -> Iterator[dict[str, int]]:
    with serve_site() as ports:
        yield ports


@pytest.fixture
def agent(site: RelayProcess, tmp_path: Path) -> Iterator[AgentProcess]:
    with cobrowse_agent(site, tmp_path, "cb-e2e", TECH, TECH_PASSWORD) as a:
        yield a


def clicks(customer: CustomerBrowser) -> list[dict[str, Any]]:
    return customer.eval("window.__clicks")  # type: ignore[no-any-return]


def watch_from_another_console(browser: Browser, site: RelayProcess, session_url: str
                               ) -> None:
    """A colleague of the group joins the open co-browse (?watch=1): the catch-up from the
    last snapshot renders the page, later changes follow, the private element is absent,
    and this console cannot send."""
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
        w.page.wait_for_function(f"() => ({_TEXT})('tick') !== null", timeout=30_000)
        first = w.page.evaluate(_TEXT, "tick")
        w.page.wait_for_function(
            f"() => {{ const t = ({_TEXT})('tick'); return t && t !== {first!r}; }}",
            timeout=20_000)
        assert PRIVATE not in w.page.evaluate(
            "() => document.querySelector('#cobrowse-live iframe')"
            ".contentDocument.documentElement.outerHTML")
        # The cross-origin frame is in the catch-up too (attached after the snapshot).
        w.page.wait_for_function(_PARTS_CROSS, timeout=20_000)
        expect(w.page.get_by_role("button", name="Ask for control")).to_have_count(0)
        w.check()
    finally:
        context.close()


def test_cobrowse_end_to_end(page: Watched, browser: Browser, site: RelayProcess,
                             agent: AgentProcess, site_pages: dict[str, int],
                             tmp_path: Path) -> None:
    p = page.page
    url = f"http://127.0.0.1:{site_pages['a']}/"
    sign_in(p, TECH, TECH_PASSWORD)
    open_cobrowse(p, agent.agent_id, url)
    expect(p.locator("#cobrowse-control")).to_contain_text("not granted")

    # 1. The page, and a change of the ticking element, in the technician's view.
    p.wait_for_function(f"() => ({_TEXT})('tick') !== null", timeout=60_000)
    heading = p.evaluate("""() => document.querySelector('#cobrowse-live iframe')
                              .contentDocument.querySelector('h1').textContent""")
    assert heading == "Co-browse test site"
    first = p.evaluate(_TEXT, "tick")
    p.wait_for_function(f"() => {{ const t = ({_TEXT})('tick'); return t && t !== {first!r}; }}",
                        timeout=20_000)
    # The private element is absent (rrweb keeps a placeholder, none of its content).
    html = p.evaluate("""() => document.querySelector('#cobrowse-live iframe')
                           .contentDocument.documentElement.outerHTML""")
    assert PRIVATE not in html
    deadline = time.monotonic() + 20
    while True:  # (a loop, so that a failure shows what the view had)
        parts = p.evaluate(_PARTS)
        if (parts["same"] and parts["late"] and parts["cross"]) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert parts["same"] == "SAME-ORIGIN-FRAME-TEXT", parts
    # The cross-origin (out-of-process) frame: its own rrweb, merged by the agent under
    # its <iframe> (never posted to the embedding page: tests/unit/
    # test_cobrowse_agent_frames.py); its text changes every second, and so does the view.
    assert (parts["cross"] or "").startswith("CROSS-ORIGIN-FRAME-TEXT"), parts
    p.wait_for_function(f"""() => {{
      const d = document.querySelector('#cobrowse-live iframe').contentDocument;
      const f = d.getElementById('cross');
      const b = f && f.contentDocument && f.contentDocument.body;
      return b && b.textContent.trim().startsWith('CROSS-ORIGIN-FRAME-TEXT')
        && b.textContent.trim() !== {parts["cross"]!r};
    }}""", timeout=20_000)
    assert (parts["early"], parts["late"]) == ("EARLY-SHADOW-TEXT", "LATE-SHADOW-TEXT"), parts
    assert (parts["lateColor"], parts["bodyFont"]) == ("rgb(4, 5, 6)", "sans-serif"), parts
    watch_from_another_console(browser, site, p.url)

    # The customer types a password (trusted key events, through their own browser).
    customer = customer_browser(tmp_path / "consent")
    try:
        customer.attach(url)
        customer.type_into("pw", PASSWORD)
        assert customer.eval("document.getElementById('pw').value") == PASSWORD
        # The customer leaves the field (the recorder samples inputs at "last": the
        # value is recorded on change, so keystroke timing never leaves the machine);
        # the masked value reaches the view (as many "*" as typed), never the characters.
        customer.eval("document.getElementById('pw').blur()")
        p.wait_for_function("""(n) => {
          const d = document.querySelector('#cobrowse-live iframe').contentDocument;
          const pw = d.getElementById('pw');
          return pw && pw.value === '*'.repeat(n);
        }""", arg=len(PASSWORD), timeout=20_000)

        # 2. Without a grant, the technician's click does nothing in the customer's page.
        assert clicks(customer) == []
        b = where(p, "btn")
        p.mouse.click(b["x"], b["y"])
        time.sleep(1.5)
        assert clicks(customer) == []
        # A page script clicking everything in the page grants nothing (there is
        # nothing in the page to click: consent is the agent's own UI).
        customer.eval("document.querySelectorAll('body *:not([type=file])')"
                      ".forEach((e) => { try { e.click(); } catch (x) {} })")
        time.sleep(1.5)
        expect(p.locator("#cobrowse-control")).to_contain_text("not granted")
        assert not (tmp_path / "consent" / "questions.txt").exists()
        assert all(c["trusted"] is False for c in clicks(customer))
        customer.eval("window.__clicks = []")
        # Asked of the customer (the [ask] command says yes), granted.
        p.get_by_role("button", name="Ask for control").click()
        expect(p.locator("#cobrowse-control")).to_contain_text("granted: your clicks",
                                                               timeout=30_000)
        assert "CONTROL" in (tmp_path / "consent" / "questions.txt").read_text()
        b = where(p, "btn")
        p.mouse.click(b["x"], b["y"])
        got = wait_for(lambda: clicks(customer) or None, 15, "the page's click handler")
        assert len(got) == 1 and got[0]["trusted"] is True, got
        # Typing reaches a text field.
        n = where(p, "name")
        p.mouse.click(n["x"], n["y"])
        wait_for(lambda: customer.eval("document.activeElement && document.activeElement.id")
                 == "name", 15, "the name field to have the focus")
        p.keyboard.type(TYPED)
        wait_for(lambda: customer.eval("document.getElementById('name').value") == TYPED,
                 15, "the technician's typing in the name field")
        # Released: stops at once.
        p.get_by_role("button", name="Release control").click()
        expect(p.locator("#cobrowse-control")).to_contain_text("revoked", timeout=20_000)
        b = where(p, "btn")
        p.mouse.click(b["x"], b["y"])
        p.keyboard.type("zz")
        time.sleep(1.5)
        assert len(clicks(customer)) == 1
        assert customer.eval("document.getElementById('name').value") == TYPED
        # Granted again; the customer closes the control indicator (their one action):
        # control ends at once, in the console too, and the next click does nothing.
        p.get_by_role("button", name="Ask for control").click()
        expect(p.locator("#cobrowse-control")).to_contain_text("granted: your clicks",
                                                               timeout=30_000)
        pids = (tmp_path / "consent" / "indicators.pid").read_text().split()
        assert len(pids) == 2, pids
        os.kill(int(pids[-1]), signal.SIGTERM)
        expect(p.locator("#cobrowse-control")).to_contain_text("revoked", timeout=20_000)
        b = where(p, "btn")
        p.mouse.click(b["x"], b["y"])
        time.sleep(1.5)
        assert len(clicks(customer)) == 1
        expect(p.locator("#cobrowse-state")).to_have_text("Connected")

        # A proposed URL is opened in the customer's browser; the view follows it.
        other = f"{url}index.html?step=2"
        propose = p.get_by_role("form", name="Propose a URL")
        propose.get_by_label("Propose URL").fill(other)
        propose.get_by_role("button", name="Propose").click()
        # (the view shows the address without its query: a query may carry a token)
        expect(p.locator("#cobrowse-url")).to_have_text(f"{url}index.html", timeout=20_000)
        wait_for(lambda: customer.eval("location.href") == other, 20,
                 "the customer's browser on the proposed URL")
        p.wait_for_function(f"() => ({_TEXT})('tick') !== null", timeout=30_000)
    finally:
        customer.close()

    # The screencast (the policy allows it here), shown as images while asked for.
    p.locator("#cobrowse-screencast").check()
    expect(p.locator("#cobrowse-frame")).to_have_attribute(
        "src", re.compile(r"^data:image/jpeg;base64,/9j/[A-Za-z0-9+/=]{100,}$"), timeout=20_000)
    p.locator("#cobrowse-screencast").uncheck()

    # The end; the recording is stored.
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=30_000)
    row = p.locator("tr[data-cobrowse-recording]").first
    expect(row).to_be_visible(timeout=20_000)
    rec_id = row.get_attribute("data-cobrowse-recording")
    recording = p.evaluate("""async (id) => {
      const r = await fetch(`/api/v1/recordings/${encodeURIComponent(id)}`,
                            {credentials: "same-origin"});
      return await r.text();
    }""", rec_id)
    # The recording has the page, the masked password input, and no private content.
    assert "Co-browse test site" in recording and "*" * len(PASSWORD) in recording
    assert PRIVATE not in recording

    # 0 bytes of the password anywhere the relay received, logged, recorded or stored.
    forms = forms_of(PASSWORD)
    site.stop()  # every write flushed (the module's relay ends here: last test of it)
    assert found_in(site.data_dir, forms) == []
    assert hits_in(site.log_path.read_bytes(), forms) == []
    assert hits_in(recording.encode(), forms) == []
    assert found_in(site.data_dir, forms_of(PRIVATE)) == []
