"""Where the relay finds the web console's built assets, and what it says without them.

They are package data of ``backline.console`` (``console/dist`` in a checkout, built by
scripts/setup; ``backline/console/dist`` in an installed wheel), found with
:mod:`importlib.resources`, so the relay serves the console wherever it is installed,
not only from a source tree next to it. A relay without them (a wheel built before
the console was, an install that left them out) still serves the API; its ``/`` says
what is missing and how to build it, instead of a bare 404.
"""

from __future__ import annotations

import importlib.resources
import logging
from pathlib import Path

log = logging.getLogger("backline.relay.http")

PACKAGE = "backline.console"

MISSING_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Backline: console not installed</title>
</head><body>
<h1>The console's assets are missing</h1>
<p>This relay is running and its API (<code>/api/v1</code>) answers, but it has no web
console to serve: the package <code>backline.console</code> holds no built
<code>dist/index.html</code>.</p>
<p>In a source checkout, run <code>./scripts/setup</code> (it builds them with npm:
<code>cd console &amp;&amp; npm ci &amp;&amp; npm run build</code>). For an installed
relay, build the console first, then the wheel, and install that wheel.</p>
</body></html>
"""


def find(package: str = PACKAGE) -> Path | None:
    """The folder with ``index.html`` and ``assets/``, or ``None`` when there is none
    (the package is missing, not on the file system, or holds no built console)."""
    try:
        root = importlib.resources.files(package) / "dist"
    except ModuleNotFoundError:
        log.warning("no console: the package %s is not installed", package)
        return None
    if not isinstance(root, Path) or not (root / "index.html").is_file():
        log.warning("no console: %s holds no built dist/index.html", package)
        return None
    return root
