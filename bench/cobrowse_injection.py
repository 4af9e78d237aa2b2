"""CDP injection versus an extension, for the co-browse recorder (docs/cobrowse.md).

For each way and run: a fresh browser, the loopback test site (tests/sites/cobrowse/),
then what the recording holds 4 s after the navigation (the early shadow root and
constructed stylesheet made by a page script that runs first, the late shadow root,
the same- and cross-origin frames, the changing element) and the time from
``Page.navigate`` to the page's first full snapshot reaching Python. Writes
bench/results/cobrowse_injection.json.

    .venv/bin/python -m bench.cobrowse_injection [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backline.agent.cobrowse.session import CoBrowse
from backline.agent.policy import CobrowsePolicy

ROOT = Path(__file__).resolve().parents[1]
NEEDLES = {"early shadow root": "EARLY-SHADOW-TEXT", "early constructed sheet": "rgb(1, 2, 3)",
           "late shadow root": "LATE-SHADOW-TEXT", "late shadow sheet": "rgb(4, 5, 6)",
           "same-origin frame": "SAME-ORIGIN-FRAME-TEXT", "changing element": "TICK-2"}
#: (the cross-origin frame, merged by the agent since, is not among these: the results
#: in bench/results/cobrowse_injection.json were measured before)


async def one(way: str, url: str, browser: str) -> dict[str, Any]:
    lines: list[str] = []
    got_first: list[float] = []

    def emit(line: Any) -> None:
        text = line if isinstance(line, str) else json.dumps(line)
        # The first full snapshot of the site's page (not of the first about:blank):
        # rrweb sends its Meta event (with the href) and the snapshot together.
        if not got_first and '"type":2,' in text and f'"href":"{url}' in text:
            got_first.append(time.monotonic())
        lines.append(text)

    cb = CoBrowse(CobrowsePolicy(browser=browser), emit, injection=way)
    try:
        await cb.start(headless=True)
        started = time.monotonic()
        await cb.navigate(url)
        await asyncio.sleep(4)
    finally:
        await cb.close()
    text = "\n".join(lines)
    return {"missed": [k for k, v in NEEDLES.items() if v not in text],
            "first_snapshot_ms": round((got_first[0] - started) * 1000, 1) if got_first
            else None, "bytes": len(text)}


async def measure(url: str, runs: int, browser: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for way in ("cdp", "extension"):
        done = [await one(way, url, browser) for _ in range(runs)]
        firsts = [r["first_snapshot_ms"] for r in done if r["first_snapshot_ms"]]
        results[way] = {"runs": done, "first_snapshot_ms_median":
                        statistics.median(firsts) if firsts else None}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--browser", default="/usr/bin/chromium")
    args = parser.parse_args()
    site = subprocess.Popen([sys.executable, "-m", "tests.sites.cobrowse.server"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert site.stdout is not None
        ports = json.loads(site.stdout.readline())
        results = asyncio.run(measure(f"http://127.0.0.1:{ports['a']}/", args.runs,
                                      args.browser))
    finally:
        site.kill()
        site.wait()
    out = ROOT / "bench" / "results" / "cobrowse_injection.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
