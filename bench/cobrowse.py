"""Co-browse: DOM mirroring (rrweb) versus the screencast, in one run (issue 13,
acceptance 3).

``python -m bench.cobrowse [--duration 60]``. Everything real, as in
tests/browser/test_cobrowse_e2e.py: a relay, an enrolled agent process with its
headless Chromium on the loopback test site (tests/sites/cobrowse/), the technician's
console in Playwright's Chromium. Scripted browsing in the customer's page, the same in
both phases: the site's own changes (an element every second, a cross-origin frame
every second, not recorded: its content never leaves the machine) plus, every 250 ms,
a stamp: a counter written in a fixed element and painted as the colour of a fixed
160 px block (the counter modulo 8 as its red, green and blue bits), its time
(``Date.now()`` in the customer's page) kept there.

Phase 1, ``duration / 2`` seconds: DOM only. Phase 2, ``duration / 2``: the screencast
on (the DOM keeps flowing too).

- bytes per second at the relay: from the co-browse recording (every agent line the
  relay received and accepted, byte for byte): phase 1 = every line before the first
  ``frame`` line, over phase 1's length (so the page's first full snapshot, sent
  before phase 1 starts, counts against DOM mode: the figure is high, not low);
  screencast = the ``frame`` lines, over phase 2's length.
- change-to-view latency: in the technician's page, a ``requestAnimationFrame`` loop
  reads the stamp in the replayed page (DOM) or decodes the block's colour from the
  newest screencast image drawn into a canvas (screencast); a stamp's latency is the
  time from its change in the customer's page to the first animation frame of the
  technician's page that shows it, or a later stamp (same machine, same clock); a
  stamp never shown counts to the end of the watch. p50 / p95 of each. The
  screencast's colours repeat every 8 stamps, so a frame more than 8 stamps late cannot
  be matched: those changes are counted in ``screencast_unmatched``, not hidden.

Phase 3 (issue 13, acceptance 4), in the same session: a second co-browse on the
test site's ``/large.html`` (10,000 elements in 1,250 rows, some changing). The
recorder starts as soon as the page has its root element, so the rows reach it as the
parser inserts them (mutations, over the parser's tasks; inject.js says why).
Measured: the longest main-thread task in the customer's page over its load and 5 s of
changes (PerformanceObserver ``longtask``, observed by a page script in its head), how
long its DOMContentLoaded dispatch took (where rrweb's own start would serialise the
whole page), the heartbeat's largest gap, what was sent (``large_page_load_kib``: the rrweb lines
from the page's address to the fresh snapshot below, i.e. its load and 5 s of changes;
and its first full snapshot), the time from "Start
co-browse" to the whole page in the technician's view (the browser's start, consent
and page load included) and from the end of the customer's DOMContentLoaded to the
whole page in the view. Then a fresh full snapshot of the loaded page, as the agent
asks for after it had to drop events: its task (``large_page_resnapshot_task_ms``, 0
when no task was over 50 ms), its size and ``rrweb_part`` lines, and the time until
the view joined it. ``--large-only`` runs phase 3 alone (into
bench/results/cobrowse_large.json); ``--large-runs N`` runs it N times, one after the
other, and lists every run.

Writes bench/results/cobrowse.json (dom_kib_s, screencast_kib_s, dom_view_p95_ms,
screencast_view_p95_ms, large_page_longest_task_ms and the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cpu_model
from tests.browser.cobrowse_support import (
    ASK_SCRIPT,
    SNAPSHOT_NOW_JS,
    WRAPPER,
    customer_browser,
)
from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS, new_user, sign_in
from tests.harness import AgentProcess, RelayProcess, admin_api

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "cobrowse.json"
RESULTS_LARGE = ROOT / "bench" / "results" / "cobrowse_large.json"
TECH, TECH_PASSWORD = "bench", "bench's password 0000"
STAMP_MS = 250

# Injected in the customer's page: the stamp (text and colour), its times kept.
STAMPER = """(() => {
  const box = document.createElement('div');
  box.id = 'bench-box';
  box.style.cssText = 'position:fixed;left:0;top:0;width:160px;height:160px;z-index:99';
  const stamp = document.createElement('span');
  stamp.id = 'bench-stamp';
  stamp.style.cssText = 'position:fixed;left:200px;top:0;z-index:99';
  document.body.append(box, stamp);
  window.__changes = [];
  let n = 0;
  setInterval(() => {
    n += 1;
    const c = n % 8;
    box.style.background = `rgb(${c & 4 ? 255 : 0}, ${c & 2 ? 255 : 0}, ${c & 1 ? 255 : 0})`;
    stamp.textContent = 'S' + n;
    window.__changes.push([n, Date.now()]);
  }, STAMP_MS);
})()""".replace("STAMP_MS", str(STAMP_MS))

# In the technician's page: what the view shows, at every animation frame.
WATCHER = """() => {
  window.__dom = []; window.__cast = [];
  let lastDom = null, lastSrc = null;
  const canvas = document.createElement('canvas');
  const g = canvas.getContext('2d', {willReadFrequently: true});
  const loop = () => {
    const now = Date.now();
    const f = document.querySelector('#cobrowse-live iframe');
    const el = f && f.contentDocument && f.contentDocument.getElementById('bench-stamp');
    const t = el && el.textContent;
    if (t && t !== lastDom) { lastDom = t; window.__dom.push([Number(t.slice(1)), now]); }
    const img = document.getElementById('cobrowse-frame');
    if (img && img.src !== lastSrc && img.complete && img.naturalWidth) {
      lastSrc = img.src;
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      g.drawImage(img, 0, 0);
      const s = img.naturalWidth / 1280;
      const [r, gr, b] = g.getImageData(Math.round(80 * s), Math.round(80 * s), 1, 1).data;
      window.__cast.push([(r > 127 ? 4 : 0) | (gr > 127 ? 2 : 0) | (b > 127 ? 1 : 0), now]);
    }
    requestAnimationFrame(loop);
  };
  requestAnimationFrame(loop);
}"""


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, round(q * (len(v) - 1)))], 1)


def dom_latencies(changes: list[list[int]], seen: list[list[int]], since: int,
                  until: int) -> list[float]:
    """Change n is visible at the first moment the view shows stamp n or a later one:
    a change overtaken by the next before the view drew it counts too, at the frame
    that showed the later one (counting only stamps seen exactly dropped the slow ones,
    which biased the p95 low). A change never seen by the end counts as the time to
    the end of the watch, so it cannot vanish from the figure either."""
    shown = sorted(seen, key=lambda x: x[1])
    out: list[float] = []
    for n, at in changes:
        if not since <= at <= until:
            continue
        t = next((t for m, t in shown if m >= n and t >= at), None)
        out.append((t if t is not None else (shown[-1][1] if shown else at)) - at)
    return out


def cast_latencies(changes: list[list[int]], seen: list[list[int]], since: int,
                   until: int) -> list[float]:
    """A colour seen is the newest change of that colour before it was seen; each change
    counts once, at the first frame that shows it."""
    out: dict[int, float] = {}
    for code, t in seen:
        match = [(n, tc) for n, tc in changes if n % 8 == code and tc <= t]
        if not match:
            continue
        n, tc = match[-1]
        if since <= tc <= until and n not in out and t - tc < 8 * STAMP_MS:
            out[n] = t - tc
    return list(out.values())


def cast_unmatched(changes: list[list[int]], matched: int, since: int, until: int) -> int:
    """Changes of the screencast phase no frame was matched to (a colour is one of 8,
    so a change shown 8 stamps late cannot be told from a newer one): reported, not
    hidden."""
    return sum(1 for _, tc in changes if since <= tc <= until) - matched


LARGE_ROWS = 1250
_LARGE_ROWS_SHOWN = """() => { const f = document.querySelector('#cobrowse-live iframe');
  const r = f && f.contentDocument && f.contentDocument.getElementById('rows');
  return r ? r.querySelectorAll('*').length : 0; }"""
_JOINED = "() => Number(document.querySelector('#cobrowse-live').dataset.joined || 0)"


def large_page(p: Any, consent: Path, url: str, known: set[str]) -> dict[str, Any]:
    """Phase 3: a co-browse of the large page in the same session (the first ended)."""
    from playwright.sync_api import expect

    (consent / "profile.txt").unlink(missing_ok=True)  # the new browser's profile
    start = p.get_by_role("form", name="Start a co-browse")
    start.get_by_label("URL to open").fill(url)
    t = time.monotonic()
    start.get_by_role("button", name="Start co-browse").click()
    shown_at = p.wait_for_function(
        f"() => ({_LARGE_ROWS_SHOWN})() >= {LARGE_ROWS * 8} && Date.now()",
        timeout=120_000, polling="raf").json_value()
    first_view_ms = round((time.monotonic() - t) * 1000)
    customer = customer_browser(consent)
    customer.attach(url)
    # When the customer's page was parsed (the end of its DOMContentLoaded dispatch: its
    # last rows reached the recorder by then), on the same machine's clock as the
    # technician's Date.now().
    parsed_at = customer.eval("""(() => { const n = performance.getEntriesByType(
        'navigation')[0]; return performance.timeOrigin + n.domContentLoadedEventEnd; })()""")
    time.sleep(5)  # the page's changes, recorded
    longest = customer.eval("window.__longest()")
    tasks = customer.eval("window.__longtasks")
    dcl = customer.eval("window.__dcl()")
    gap = customer.eval("window.__maxGap")
    # A fresh full snapshot of the loaded page, as the agent asks for after drops: one
    # task of rrweb's, larger than a line (rrweb_part lines), joined in the view.
    joined = p.evaluate(_JOINED)
    asked_at = customer.eval("performance.now()")
    t = time.monotonic()
    assert customer.eval(SNAPSHOT_NOW_JS), "no snapshot function in the customer's page"
    p.wait_for_function(f"() => ({_JOINED})() > {joined}", timeout=60_000, polling="raf")
    resnapshot_to_view_ms = round((time.monotonic() - t) * 1000)
    time.sleep(1)  # its longtask entry, delivered
    resnapshot_tasks = [x for x in customer.eval("window.__longtasks") if x[0] >= asked_at - 1]
    customer.close()
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=30_000)
    rows = p.locator("tr[data-cobrowse-recording]")
    expect(rows).to_have_count(len(known) + 1, timeout=30_000)
    rec_id = next(i for i in (rows.nth(k).get_attribute("data-cobrowse-recording")
                              for k in range(rows.count())) if i not in known)
    recording = p.evaluate("""async (id) => (await fetch(
        `/api/v1/recordings/${encodeURIComponent(id)}`)).text()""", rec_id)
    lines = [json.loads(x) for x in recording.split("\n") if x]
    # The fresh snapshot's parts: the last set (the first snapshot is in a line).
    firsts = [i for i, x in enumerate(lines) if x.get("type") == "rrweb_part"
              and x.get("index") == 0 and x.get("event") == 2]
    parts = [x for x in lines[firsts[-1]:] if x.get("type") == "rrweb_part"] if firsts else []
    snapshot_chars = sum(len(x["text"]) for x in parts if x.get("event") == 2)
    # What the page sent: the rrweb lines from its address to the fresh snapshot (its
    # load, and 5 s of changes).
    nav = next(i for i, x in enumerate(lines) if x.get("type") == "nav"
               and str(x.get("url")).endswith("/large.html"))
    end = next((i for i, x in enumerate(lines) if x.get("type") == "rrweb_part"), len(lines))
    load_lines = [x for x in lines[nav:end] if x.get("type") == "rrweb"]
    first = next((e for x in load_lines for e in x["events"] if e.get("type") == 2), None)
    return {
        "large_page_longest_task_ms": longest,
        "large_page_long_tasks": tasks,
        "large_page_dcl_dispatch_ms": dcl,
        "large_page_heartbeat_max_gap_ms": round(gap),
        "large_page_first_view_ms": first_view_ms,
        "large_page_parsed_to_view_ms": round(shown_at - parsed_at),
        "large_page_load_kib": round(sum(len(json.dumps(x)) for x in load_lines) / 1024, 1),
        "large_page_first_snapshot_kib": round(len(json.dumps(first)) / 1024, 1)
        if first else None,
        "large_page_resnapshot_task_ms": max([0, *(d for _, d in resnapshot_tasks)]),
        "large_page_resnapshot_to_view_ms": resnapshot_to_view_ms,
        "large_page_snapshot_kib": round(snapshot_chars / 1024, 1),
        "large_page_snapshot_parts": sum(1 for x in parts if x.get("event") == 2),
        "large_page_elements": LARGE_ROWS * 8,
        "recording": rec_id,
    }


def dom_and_screencast(p: Any, consent: Path, url: str, duration: float
                       ) -> tuple[dict[str, Any], str]:
    """Phases 1 and 2: DOM only, then with the screencast; the figures and the
    recording's id."""
    from playwright.sync_api import expect

    start = p.get_by_role("form", name="Start a co-browse")
    start.get_by_label("URL to open").fill(url)
    start.get_by_role("button", name="Start co-browse").click()
    p.wait_for_function("""() => { const f = document.querySelector(
        '#cobrowse-live iframe'); return f && f.contentDocument &&
        f.contentDocument.getElementById('tick'); }""", timeout=60_000)
    customer = customer_browser(consent)
    customer.attach(url)
    p.evaluate(WATCHER)
    customer.eval(STAMPER)
    t0 = int(time.time() * 1000)
    half = duration / 2
    time.sleep(half)
    t1 = int(time.time() * 1000)
    p.locator("#cobrowse-screencast").check()
    time.sleep(half)
    t2 = int(time.time() * 1000)
    p.locator("#cobrowse-screencast").uncheck()
    changes = customer.eval("window.__changes")
    dom_seen = p.evaluate("window.__dom")
    cast_seen = p.evaluate("window.__cast")
    customer.close()
    p.get_by_role("button", name="End co-browse").click()
    expect(p.locator("#cobrowse-state")).to_have_text("Ended", timeout=30_000)
    row = p.locator("tr[data-cobrowse-recording]").first
    expect(row).to_be_visible(timeout=30_000)
    rec_id = str(row.get_attribute("data-cobrowse-recording"))
    recording = p.evaluate("""async (id) => (await fetch(
        `/api/v1/recordings/${encodeURIComponent(id)}`)).text()""", rec_id)
    lines = [x for x in recording.split("\n") if x]
    kinds = [json.loads(x).get("type") for x in lines]
    first_frame = kinds.index("frame") if "frame" in kinds else len(lines)
    dom_bytes = sum(len(x.encode()) + 1 for x in lines[:first_frame])
    cast_bytes = sum(len(x.encode()) + 1 for x, k in zip(lines, kinds, strict=True) if k == "frame")
    dom_lat = dom_latencies(changes, dom_seen, t0, t1 - 500)
    cast_lat = cast_latencies(changes, cast_seen, t1 + 1000, t2 - 500)
    dom_kib_s = round(dom_bytes / 1024 / ((t1 - t0) / 1000), 2)
    cast_kib_s = round(cast_bytes / 1024 / ((t2 - t1) / 1000), 2)
    return {
        "dom_kib_s": dom_kib_s,
        "screencast_kib_s": cast_kib_s,
        "dom_view_p95_ms": pct(dom_lat, 0.95),
        "screencast_view_p95_ms": pct(cast_lat, 0.95),
        "dom_view_p50_ms": pct(dom_lat, 0.5),
        "screencast_view_p50_ms": pct(cast_lat, 0.5),
        "dom_samples": len(dom_lat),
        "screencast_samples": len(cast_lat),
        "screencast_unmatched": cast_unmatched(changes, len(cast_lat), t1 + 1000, t2 - 500),
        "stamps": len(changes),
        "dom_over_screencast": round(dom_kib_s / cast_kib_s, 4) if cast_kib_s else None,
        "screencast_frames": kinds.count("frame"),
    }, rec_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0,
                    help="seconds of scripted browsing, half DOM only, half with the "
                         "screencast (default 60)")
    ap.add_argument("--large-only", action="store_true",
                    help="only phase 3, the large page (results in "
                         "bench/results/cobrowse_large.json unless --out)")
    ap.add_argument("--large-runs", type=int, default=1,
                    help="co-browses of the large page one after another (default 1)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    root = Path(tempfile.mkdtemp(prefix="bench-cobrowse-"))
    site = subprocess.Popen([sys.executable, "-m", "tests.sites.cobrowse.server"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert site.stdout is not None
    ports = json.loads(site.stdout.readline())
    url = f"http://127.0.0.1:{ports['a']}/"
    relay = RelayProcess(root).start()
    admin_api(relay).close()
    new_user(relay, TECH, "technician", TECH_PASSWORD)
    relay.cli("group", "grant", "default", TECH)
    consent = root / "consent"
    consent.mkdir()
    (consent / "ask.sh").write_text(ASK_SCRIPT.format(dir=consent))
    (consent / "chromium.sh").write_text(WRAPPER.format(dir=consent, chromium=CHROMIUM))
    for f in ("ask.sh", "chromium.sh"):
        (consent / f).chmod(0o755)
    agent = AgentProcess(root, "bench-cb")
    assert agent.enroll(relay.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(
        '[capabilities]\ncobrowse = "allow"\n\n'
        f'[ask]\ntimeout_s = 30\ncommand = ["{consent / "ask.sh"}"]\n\n'
        f'[cobrowse]\nbrowser = "{consent / "chromium.sh"}"\nheadless = true\n'
        'screencast = true\n')
    agent.start()
    load_before = os.getloadavg()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            context = browser.new_context(ignore_https_errors=True, base_url=relay.url,
                                          viewport={"width": 1440, "height": 900})
            p = context.new_page()
            sign_in(p, TECH, TECH_PASSWORD)
            p.goto(f"/#/agent/{agent.agent_id}")
            expect(p.locator("dl.facts")).to_contain_text("Online", timeout=30_000)
            form = p.get_by_role("form", name="Open a support session")
            form.get_by_label("Reason").fill("bench")
            form.get_by_role("button", name="Open session").click()
            expect(p.locator("#session-state")).to_have_text("ready", timeout=30_000)
            dom: dict[str, Any] = {}
            known: set[str] = set()
            if not args.large_only:
                dom, rec_id = dom_and_screencast(p, consent, url, args.duration)
                known.add(rec_id)
            load_large = os.getloadavg()
            runs = []
            for _ in range(args.large_runs):
                runs.append(large_page(p, consent, f"{url}large.html", known))
                known.add(runs[-1].pop("recording"))
            browser.close()
    finally:
        agent.stop()
        relay.stop()
        site.kill()
    load_after = os.getloadavg()

    result: dict[str, Any] = {
        **dom,
        **runs[0],
        **({"large_page_runs": [{k: v for k, v in r.items() if k != "large_page_long_tasks"}
                                for r in runs]} if len(runs) > 1 else {}),
        "duration_s": None if args.large_only else args.duration,
        "stamp_ms": STAMP_MS,
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_before_large_page": [round(x, 2) for x in load_large],
                    "loadavg_after": [round(x, 2) for x in load_after]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if args.out is None:
        args.out = RESULTS_LARGE if args.large_only else RESULTS
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
