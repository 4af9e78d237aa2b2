"""Audit review at scale (issue 14, acceptance 5): a session's timeline and a search hit.

Builds, in a fresh data directory, one closed session with 10,000 audit events of its
own among other sessions' noise, and a 1-hour terminal recording (asciicast, stored as
the relay stores one: blob, row, ``recording.stored``, text index) with one rare word
printed 45 minutes in. Then starts a real relay process on it and measures:

- ``timeline_ms``: time to first render of the session's timeline page in real
  Chromium (Debian's; from setting the hash to the first event row and the evidence
  drawn), median of the runs; without Chromium, the API's first page instead (the
  result says which in ``timeline_measured_in``). The API's own time is there too.
- ``search_ms``: time from "Search" to the hit shown, in Chromium likewise (and the
  API's own time). ``hit_replay_ms``: from clicking the hit to the 1-hour recording
  fetched, its SHA-256 checked in the page and the player ready at that second.
- ``report_ms``: ``bench.audit_review_report.measure(workdir)`` (helper reports' module:
  1,000,000 audit events and 10,000 sessions); when the module is missing, said, and
  ``report_ms`` is left out.

Goals: timeline ≤ 500 ms, search ≤ 300 ms, report ≤ 2 s.

    python -m bench.audit_review [--events 10000] [--noise 50000] [--runs 7]

Writes bench/results/audit_review.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "audit_review.json"
SESSION, AGENT, TECH = "ss_benchreview0001", "ag_benchreview01", "tess"
NEEDLE = "quetzalcoatl"
NEEDLE_AT = 45 * 60.0
HOUR = 3600.0
GOALS = {"timeline_ms": 500.0, "search_ms": 300.0, "report_ms": 2000.0}
WORDS = ("ls cat grep systemctl status journalctl restart printer spooler cups lpstat queue "
         "error warning disk usage df du mount network ping dns resolv conf route ip addr "
         "service active running failed ok done user home var log tmp etc").split()


def cast_of_an_hour(rng: random.Random) -> bytes:
    """An asciicast of one hour: a prompt, typed commands echoed a character at a time,
    coloured output lines; NEEDLE printed once, at :data:`NEEDLE_AT`."""
    lines = [json.dumps({"version": 2, "width": 120, "height": 40, "timestamp": 0,
                         "env": {"TERM": "xterm-256color"}})]
    t = 0.0
    needle_done = False
    while t < HOUR:
        t += rng.uniform(0.5, 3.0)
        command = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4)))
        lines.append(json.dumps([round(t, 3), "o", "\x1b[1;32mtech@pc\x1b[0m:~$ "]))
        for ch in command:
            t += 0.08
            lines.append(json.dumps([round(t, 3), "o", ch]))
        lines.append(json.dumps([round(t, 3), "o", "\r\n"]))
        for _ in range(rng.randint(1, 12)):
            t += 0.01
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
            if not needle_done and t >= NEEDLE_AT:
                text += f" {NEEDLE}"
                needle_done = True
            lines.append(json.dumps([round(t, 3), "o", f"\x1b[33m{text}\x1b[0m\r\n"]))
    return ("\n".join(lines) + "\n").encode()


def build(data_dir: Path, events: int, noise: int) -> dict[str, Any]:
    """The data set, written through the relay's own modules."""
    import sqlalchemy as sa

    from backline.relay import config, term_index
    from backline.relay.capabilities import recording
    from backline.relay.db import writing
    from backline.relay.schema import support_sessions
    from backline.relay.state import open_relay

    relay = open_relay(config.load(overrides={"data_dir": data_dir}, environ={}))
    rng = random.Random(14)
    now = time.time()
    opened = now - 2 * HOUR
    with writing(relay.engine) as conn:
        conn.execute(support_sessions.insert().values(
            id=SESSION, mode="managed", agent_id=AGENT, group_id=None, technician=TECH,
            opened_by=f"user:{TECH}", reason="printer queue stuck", ticket="HD-1000",
            capabilities="info,diagnostics,shell", state="closed", node="",
            created_at=opened, opened_at=opened, ready_at=opened + 0.2,
            closed_at=opened + HOUR + 60, close_reason="technician"))
    started = time.perf_counter()
    batch = 5000
    for done in range(0, noise, batch):  # other sessions' and agents' events
        relay.audit.append_many([
            (f"user:u{rng.randrange(50)}", rng.choice(["session.channel", "agent.connect",
                                                       "terminal.control", "auth.login"]),
             rng.choice([f"session:ss_other{rng.randrange(2000)}", f"agent:ag_{i}"]),
             {"n": done + i}) for i in range(min(batch, noise - done))])
    for done in range(0, events - 1, batch):  # the session's own
        relay.audit.append_many([
            (f"user:{TECH}", rng.choice(["session.channel", "terminal.control",
                                          "terminal.input.dropped", "cobrowse.navigated"]),
             f"session:{SESSION}",
             {"capability": "info", "exit_status": 0, "bytes": rng.randrange(10_000),
              "sha256": f"{rng.getrandbits(256):064x}", "n": done + i})
            for i in range(min(batch, events - 1 - done))])
    build_s = time.perf_counter() - started
    cast = cast_of_an_hour(rng)
    digest = relay.blobs.put(cast)
    stored = recording.save(relay.engine, session_id=SESSION, capability="shell",
                            agent_id=AGENT, technician=TECH, started_at=opened + 1,
                            duration_s=HOUR, size=len(cast), sha256=digest, keystrokes=False)
    relay.record(f"user:{TECH}", "recording.stored", f"session:{SESSION}",
                 recording=stored.id, capability="shell", sha256=digest, bytes=len(cast),
                 duration_s=HOUR, keystrokes=False)
    t0 = time.perf_counter()
    rows = term_index.index_recording(relay.engine, relay.blobs, recording_id=stored.id,
                                      session_id=SESSION, sha256=digest, keystrokes=False)
    index_ms = (time.perf_counter() - t0) * 1000
    with relay.engine.connect() as conn:
        total = conn.execute(sa.text("select count(*) from audit_events")).scalar()
    relay.engine.dispose()
    return {"recording": stored.id, "recording_bytes": len(cast), "index_rows": rows,
            "index_ms": round(index_ms, 1), "trail_events": total, "build_s": round(build_s, 1)}


def median(values: list[float]) -> float:
    return round(statistics.median(values), 1)


def api_times(api: Any, runs: int) -> dict[str, float]:
    def timed(path: str, params: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        r = api.get(path, params=params)
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            raise SystemExit(f"{path} failed: {r.status_code} {r.text[:200]}")
        return ms

    timeline = [timed(f"/api/v1/sessions/{SESSION}/timeline", {}) for _ in range(runs)]
    search = [timed("/api/v1/session-search", {"text": NEEDLE}) for _ in range(runs)]
    hits = api.get("/api/v1/session-search", params={"text": NEEDLE}).json()["sessions"]
    if not hits or hits[0]["id"] != SESSION or not hits[0]["hits"]:
        raise SystemExit(f"the search did not find the session: {hits}")
    return {"timeline_api_ms": median(timeline), "search_api_ms": median(search),
            "hit_at_s": hits[0]["hits"][0]["at"]}


# In-page timers (performance.now, polled each animation frame, bounded: -1 on timeout).
_TIMELINE_FIRST_RENDER = """(sid) => new Promise((done) => {
  const t0 = performance.now();
  location.hash = '#/timeline/' + sid;
  const tick = () => performance.now() - t0 > 60000 ? done(-1)
    : document.querySelector('table.timeline tbody tr')
      && document.querySelector('table.evidence tbody tr')
      ? requestAnimationFrame(() => done(performance.now() - t0)) : requestAnimationFrame(tick);
  tick();
})"""
_SEARCH_HIT = """() => new Promise((done) => {
  const button = document.querySelector('form[role=search] button[type=submit]');
  const t0 = performance.now();
  button.click();  // renders at once: the button is disabled until the answer is shown
  const tick = () => performance.now() - t0 > 60000 ? done(-1)
    : !button.disabled && document.querySelector('#search-results a.hit')
      ? requestAnimationFrame(() => done(performance.now() - t0)) : requestAnimationFrame(tick);
  tick();
})"""
_HIT_REPLAY = """() => new Promise((done) => {
  const t0 = performance.now();
  location.hash = document.querySelector('#search-results a.hit').getAttribute('href');
  const ok = '#timeline-replay[data-state=ready] [data-check=verified]';
  const tick = () => performance.now() - t0 > 60000 ? done(-1)
    : document.querySelector(ok) ? requestAnimationFrame(() => done(performance.now() - t0))
      : document.querySelector('#timeline-replay[data-state=failed]') ? done(-2)
        : requestAnimationFrame(tick);
  tick();
})"""


def browser_times(relay: Any, password: str, runs: int) -> dict[str, float] | None:
    from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS, CHROMIUM_PRESENT

    if not CHROMIUM_PRESENT:
        return None
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        ctx = browser.new_context(ignore_https_errors=True, base_url=relay.url,
                                  viewport={"width": 1440, "height": 900})
        page = ctx.new_page()
        page.goto("/")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_selector("#live-status", timeout=30_000)
        first_render, search, replay = [], [], []
        for _ in range(runs):
            page.evaluate("() => { location.hash = '#/search'; }")
            page.wait_for_selector("#search-title")
            first_render.append(page.evaluate(_TIMELINE_FIRST_RENDER, SESSION))
            page.evaluate("() => { location.hash = '#/search'; }")
            page.wait_for_selector("#search-title")
            page.get_by_label("Typed or printed in a terminal").fill(NEEDLE)
            search.append(page.evaluate(_SEARCH_HIT))
        replay.append(page.evaluate(_HIT_REPLAY))
        browser.close()
    return {"timeline_ms": median(first_render), "search_ms": median(search),
            "hit_replay_ms": median(replay)}


def report_part(workdir: Path) -> dict[str, Any]:
    try:
        module = importlib.import_module("bench.audit_review_report")
    except ModuleNotFoundError:
        print("bench.audit_review_report is missing (helper reports writes it): "
              "report_ms is omitted", flush=True)
        return {"report": "missing: bench.audit_review_report"}
    workdir.mkdir(parents=True, exist_ok=True)
    result = dict(module.measure(workdir))
    return {"report_ms": float(result["report_ms"]), "report": result}


def main() -> None:
    from bench import cpu_model
    from tests.harness import RelayProcess, admin_api

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000, help="the session's own events")
    ap.add_argument("--noise", type=int, default=50_000, help="other events in the trail")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--no-report", action="store_true", help="skip the report part")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="backline-review-bench-"))
    print(f"building a session of {args.events:,} events and a 1-hour recording in {root}…",
          flush=True)
    built = build(root / "relay", args.events, args.noise)
    print(f"  built: {built}", flush=True)
    relay = RelayProcess(root).start()
    try:
        api = admin_api(relay)
        api_part = api_times(api, args.runs)
        api.close()
        assert relay.admin_password
        browser_part = browser_times(relay, relay.admin_password, args.runs)
    finally:
        relay.stop()
    result: dict[str, Any] = {"session_events": args.events, "noise_events": args.noise,
                              **built, **api_part}
    if browser_part is None:
        result.update(timeline_ms=api_part["timeline_api_ms"],
                      search_ms=api_part["search_api_ms"],
                      timeline_measured_in="api (Chromium not installed)")
    else:
        result.update(browser_part, timeline_measured_in="chromium")
    if not args.no_report:
        result.update(report_part(root / "report"))
    result["goals"] = GOALS
    result["loadavg_after"] = os.getloadavg()  # 1, 5, 15 min, as the runs ended
    result["machine"] = {"cpus": os.cpu_count(), "cpu_model": cpu_model(),
                         "python": platform.python_version(), "platform": platform.platform()}
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"\n{'figure':22} {'value':>10} {'goal':>8}  measured in")
    where = result["timeline_measured_in"]
    for name, unit_where in (("timeline_ms", where), ("search_ms", where),
                             ("hit_replay_ms", where), ("timeline_api_ms", "api"),
                             ("search_api_ms", "api"), ("index_ms", "relay, in-process"),
                             ("report_ms", "bench.audit_review_report")):
        if name in result:
            goal = GOALS.get(name)
            print(f"{name:22} {result[name]:>10} {goal if goal else '':>8}  {unit_where}")
    if "report_ms" not in result:
        print(f"{'report_ms':22} {'—':>10} {GOALS['report_ms']:>8}  (module missing)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
