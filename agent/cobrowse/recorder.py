"""rrweb in every page, frame and popup of the co-browse browser, over the DevTools protocol.

How (measured against an extension in docs/cobrowse.md): the browser target auto-attaches
(``Target.setAutoAttach`` with ``flatten`` and ``waitForDebuggerOnStart``) to every page,
popup and out-of-process iframe; each one, while it is still paused before its first
script, gets a binding (``Runtime.addBinding``, a random name) and the recorder
(``Page.addScriptToEvaluateOnNewDocument``, main world: rrweb must see the page's own
``attachShadow`` and ``adoptedStyleSheets`` calls), then is let go
(``Runtime.runIfWaitingForDebugger``). A frame of its parent's origin is recorded by
its parent's rrweb; a frame of another origin records itself, with the same options,
and sends through its own target's binding (or its own execution context's, in
process): the agent merges it into the page's stream (``frames.py``). rrweb's
``recordCrossOriginIframes``, which posts a frame's events to the embedding page with
targetOrigin ``"*"``, stays off (docs/cobrowse.md, "Frames").

The privacy options are built here, from the policy, and cannot be loosened by the
relay: every input value masked (``maskAllInputs``; password and ``cc-*`` fields can
never be unmasked), ``[data-backline-private]`` and the policy's selectors blocked, the
policy's private URLs not recorded at all, no canvas, no fonts, no inlined images.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

from backline.agent.policy import CobrowsePolicy

PRIVATE_SELECTOR = "[data-backline-private]"
OVERLAY_SELECTOR = "[data-backline-overlay]"
#: Fields the technician may never type into, and whose values are masked in any case.
SENSITIVE_SELECTOR = 'input[type="password" i], [autocomplete^="cc-" i]'
#: Text the customer can edit in place (a rich editor, a comment box): masked like an
#: input's value, whatever the page says. Not a "sensitive" field: the technician may
#: type there in control, as into a masked text input. (``document.designMode`` makes a
#: whole page editable without an attribute: no selector can see it.)
EDITABLE_SELECTOR = '[contenteditable]:not([contenteditable="false" i])'
FLUSH_MS = 40


class RecorderMissing(Exception):
    """The bundled rrweb is not in the package (scripts/setup builds it)."""


def glob_regex(pattern: str) -> str:
    """A URL glob (``*`` any run of characters) as a regex that Python and JS read alike."""
    return "^" + ".*".join(re.escape(part).replace("\\/", "/") for part in
                           pattern.split("*")) + "$"


def url_matches(url: str, patterns: tuple[str, ...]) -> bool:
    return any(re.match(glob_regex(p), url) for p in patterns)


def shown_address(url: str, private: tuple[str, ...]) -> dict[str, object]:
    """What the relay is told of an address: ``scheme://host[:port]/path`` (a query or a
    fragment may carry a token, user info a password), and for a page matching the
    policy's ``private_urls`` only its origin and ``"private": True``. The relay writes
    ``nav`` lines raw into the recording and to every console, so this is the only cut."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return {"url": "", "private": url_matches(url, private)}
    if ":" in host:
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}{f':{port}' if port else ''}" if host else (
        f"{parts.scheme}:{parts.path if parts.scheme == 'about' else ''}")
    if url_matches(url, private):
        return {"url": origin, "private": True}
    return {"url": origin + parts.path if host else origin}


@dataclass(frozen=True)
class Privacy:
    mask_selector: str
    block_selector: str
    private_urls: tuple[str, ...]

    @classmethod
    def from_policy(cls, policy: CobrowsePolicy) -> Privacy:
        mask = ", ".join((SENSITIVE_SELECTOR, EDITABLE_SELECTOR, *policy.mask_selectors))
        block = ", ".join((PRIVATE_SELECTOR, OVERLAY_SELECTOR, *policy.block_selectors))
        return cls(mask, block, policy.hidden_urls)

    def hidden(self, policy: CobrowsePolicy) -> list[str]:
        """What the customer is told stays on this machine."""
        return ["all input values (masked)", "password fields", "card fields (cc-*)",
                "editable text (contenteditable)",
                PRIVATE_SELECTOR, *policy.mask_selectors, *policy.block_selectors,
                *(f"pages {p}" for p in policy.private_urls), "the browser's error pages",
                "canvas"]


def rrweb_source() -> str:
    try:
        return (resources.files("backline.agent.cobrowse") / "assets" / "rrweb-record.js"
                ).read_text(encoding="utf-8")
    except (FileNotFoundError, OSError) as exc:
        raise RecorderMissing("the co-browse recorder is not installed (agent/cobrowse/"
                              "assets/rrweb-record.js: run scripts/setup)") from exc


def injection(binding: str, privacy: Privacy) -> str:
    """The script evaluated before any page script in every document."""
    config = {"binding": binding, "privateUrls": [glob_regex(p) for p in privacy.private_urls],
              "maskSelector": privacy.mask_selector, "blockSelector": privacy.block_selector,
              "flushMs": FLUSH_MS}
    template = (resources.files("backline.agent.cobrowse") / "assets" / "inject.js"
                ).read_text(encoding="utf-8")
    # The bundle goes in last: its text may hold "__CONFIG__"-like runs of characters.
    head, _, tail = template.partition("\n__RRWEB__\n")
    return (head.replace("__CONFIG__", json.dumps(config)) + "\n" + rrweb_source() + "\n"
            + tail)


def new_binding() -> str:
    return "__bl" + secrets.token_hex(8)


#: Evaluated in the agent's isolated world: is focus in a field the technician may not
#: type into? "opaque" when focus is inside a cross-origin frame the check cannot see.
FOCUS_CHECK = """(() => {
  const SENSITIVE = $SENSITIVE, PRIVATE = $PRIVATE;
  let el = document.activeElement;
  for (let i = 0; i < 32 && el; i++) {
    if (el.shadowRoot && el.shadowRoot.activeElement) {
      el = el.shadowRoot.activeElement;
      continue;
    }
    if (el.tagName === "IFRAME" || el.tagName === "FRAME") {
      let doc = null;
      try { doc = el.contentDocument; } catch (e) { doc = null; }
      if (!doc) return "opaque";
      el = doc.activeElement;
      continue;
    }
    break;
  }
  if (!el || !el.matches) return "ok";
  if (el.matches(SENSITIVE) || el.closest(PRIVATE)) return "masked";
  return "ok";
})()"""

#: The technician's pointer, drawn by the agent in its isolated world (the page cannot
#: call it); blocked from the recording by OVERLAY_SELECTOR.
POINTER = """((x, y) => {
  let dot = document.querySelector("[data-backline-overlay]");
  if (!dot) {
    dot = document.createElement("div");
    dot.setAttribute("data-backline-overlay", "");
    dot.style.cssText = "position:fixed;z-index:2147483647;pointer-events:none;width:18px;" +
      "height:18px;margin:-9px 0 0 -9px;border-radius:50%;background:rgba(230,60,30,.55);" +
      "box-shadow:0 0 0 3px rgba(230,60,30,.3);left:0;top:0;transition:left .05s,top .05s";
    (document.body || document.documentElement).appendChild(dot);
  }
  dot.style.left = x + "px";
  dot.style.top = y + "px";
  return true;
})($X, $Y)"""


def focus_check(privacy: Privacy, policy: CobrowsePolicy) -> str:
    sensitive = ", ".join((SENSITIVE_SELECTOR, *policy.mask_selectors))
    private = ", ".join((PRIVATE_SELECTOR, *policy.block_selectors))
    return FOCUS_CHECK.replace("$SENSITIVE", json.dumps(sensitive)).replace(
        "$PRIVATE", json.dumps(private))


def pointer_script(x: float, y: float) -> str:
    return POINTER.replace("$X", repr(float(x))).replace("$Y", repr(float(y)))


_EXTENSION_DIRS: list[str] = []


def write_extension(script: str) -> list[str]:
    """The alternative measured against CDP injection: the same script as a Manifest V3
    content script in the main world, at document_start, in all frames. Returns the
    browser flags that load it."""
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.mkdtemp(prefix="backline-cobrowse-ext-"))
    _EXTENSION_DIRS.append(str(folder))
    (folder / "recorder.js").write_text(script, encoding="utf-8")
    (folder / "manifest.json").write_text(json.dumps({
        "manifest_version": 3, "name": "Backline co-browse recorder", "version": "1.0",
        "content_scripts": [{"matches": ["<all_urls>"], "js": ["recorder.js"],
                             "run_at": "document_start", "all_frames": True,
                             "match_origin_as_fallback": True, "world": "MAIN"}]}))
    return [f"--load-extension={folder}", f"--disable-extensions-except={folder}"]


def remove_extension() -> None:
    import shutil

    while _EXTENSION_DIRS:
        shutil.rmtree(_EXTENSION_DIRS.pop(), ignore_errors=True)
