"""Control pauses while the customer uses their own mouse or keyboard.

The technician's input (CDP ``Input.*``) and the customer's are both trusted events in
the page: the page cannot tell them apart, and neither can a script in it. The agent
can: it keeps a :class:`Ledger` of what it dispatched itself, and a listener in its
isolated world (:data:`WATCH`, which the page cannot see or call) reports every trusted
``mousedown``, ``keydown`` and ``wheel`` of the top document through a binding exposed
to that world only. A report that matches nothing in the ledger is the customer's: the
session says ``control`` ``paused``, refuses the technician's input, and says
``resumed`` after :data:`QUIET_S` without any.

Not seen: the customer's input inside a frame (its events stay in the frame's
document) and mere mouse moves (the technician's pointer moves too often to tell).
"""

from __future__ import annotations

import json
import math
from collections import deque
from typing import Any

QUIET_S = 1.5
#: How long a dispatched input waits for its report, and how many wait at most.
KEEP_S = 3.0
MAX_ENTRIES = 512
NEAR_PX = 2.0
KINDS = ("mousedown", "keydown", "wheel")
MAX_REPORT = 512


class Ledger:
    """What the agent dispatched, until the page reports it (or it is too old)."""

    def __init__(self) -> None:
        self.entries: deque[tuple[float, str, str, float, float]] = deque(maxlen=MAX_ENTRIES)

    def dispatched(self, kind: str, now: float, *, key: str = "", x: float = 0.0,
                   y: float = 0.0) -> None:
        self.entries.append((now, kind, key, x, y))

    def claim(self, report: dict[str, Any], now: float) -> bool:
        """True when ``report`` is one of the agent's own (and forgets that one)."""
        while self.entries and now - self.entries[0][0] > KEEP_S:
            self.entries.popleft()
        for entry in self.entries:
            _, kind, key, x, y = entry
            if kind != report["t"]:
                continue
            if kind == "keydown" and key != report["key"]:
                continue
            if kind != "keydown" and (abs(x - report["x"]) > NEAR_PX
                                      or abs(y - report["y"]) > NEAR_PX):
                continue
            self.entries.remove(entry)
            return True
        return False


def parse_report(payload: object) -> dict[str, Any] | None:
    """A report from the isolated world, checked (the world is the agent's, but the
    values come from the page's events)."""
    if not isinstance(payload, str) or len(payload) > MAX_REPORT:
        return None
    try:
        raw = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(raw, dict) or raw.get("t") not in KINDS:
        return None
    key, x, y = raw.get("key", ""), raw.get("x", 0), raw.get("y", 0)
    if not isinstance(key, str) or len(key) > 32:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in (x, y)):
        return None
    return {"t": raw["t"], "key": key, "x": float(x), "y": float(y)}


#: Installed at attach with ``Page.addScriptToEvaluateOnNewDocument`` in the agent's
#: isolated world (``worldName``, ``runImmediately``): it runs before any of the page's
#: scripts, so its capture listeners are the window's first, and a page listener that
#: calls ``stopImmediatePropagation`` cannot hide the customer's input from it (one
#: registered by a page script before a later ``Runtime.evaluate`` could). The binding
#: is looked up at each report (it may be installed in the world after this ran) and is
#: exposed to that world only. The top document only: a frame's coordinates are its own.
WATCH = """(() => {
  if (globalThis.__backlineWatching || window !== window.top) return true;
  const name = $BINDING;
  const report = (e) => {
    if (!e.isTrusted) return;
    const send = globalThis[name];
    if (typeof send !== "function") return;
    send(JSON.stringify({ t: e.type, key: String(e.key || "").slice(0, 32),
                          x: e.clientX || 0, y: e.clientY || 0 }));
  };
  for (const t of ["mousedown", "keydown", "wheel"]) {
    window.addEventListener(t, report, { capture: true, passive: true });
  }
  globalThis.__backlineWatching = true;
  return true;
})()"""


def watch_script(binding: str) -> str:
    return WATCH.replace("$BINDING", json.dumps(binding))
