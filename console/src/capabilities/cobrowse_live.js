// The co-browse's heavy half, loaded when a co-browse is first opened or replayed: the
// rrweb Replayer (npm rrweb, pinned; bundled by build.mjs into a chunk of its own).
//
// - LiveView: one socket on the relay's co-browse room (docs/cobrowse.md). The agent's
//   rrweb events are applied as they come (Replayer live mode), scaled to the panel;
//   the technician's mouse, wheel and keys on the view are mapped back through that
//   scale to the page's CSS pixels and sent as `input` ONLY while the agent says
//   control is granted (the relay and the agent check again); otherwise the pointer
//   alone is sent, shown in the customer's page. A watcher (?watch=1) sends nothing.
// - Joiner: rrweb_part lines joined into their event, with the relay's rules; the
//   recordings' player (../recordings/cobrowse_player.js) uses it too.
//
// The console's CSP stays strict (style-src 'self'): rrweb rebuilds the page in a
// sandboxed iframe ("allow-same-origin", no scripts) that inherits the console's
// policy, so the page's <style> text and style="" attributes would be refused. The
// frame's guard (guardFrame) carries both through CSSOM instead, which style-src does
// not govern: style attributes become style.cssText, a <style> is an inert stand-in
// whose text becomes a constructed stylesheet adopted by the frame's document (the
// console's own shims, ./shell/csp_shims.js, do the same for the one <style> rrweb
// makes in the console's document). Nothing of the customer's
// page runs: scripts are not recorded and the frame allows none.

import { Replayer } from "rrweb";
import { installCspShims } from "./shell/csp_shims.js";
import { streamUrl } from "./socket.js";

// An event too large for one line comes as rrweb_part lines (docs/cobrowse.md): joined
// here, with the relay's rules (in order, one at a time, bounded), so that what the
// relay let through and what is shown agree.
const MAX_PARTS = 64;
const MAX_PART_CHARS = 16 * 1024 * 1024;

export class Joiner {
  constructor() {
    this.open = null;
    this.joined = 0;
    this.abandoned = 0;
  }

  // Any other rrweb line: a snapshot still in parts will not be finished.
  interrupt() {
    if (this.open) { this.open = null; this.abandoned += 1; }
  }

  // One part; the whole event when it was the last of an in-order set, else null.
  part(m) {
    const ok = typeof m.id === "string" && Number.isInteger(m.index) && Number.isInteger(m.total)
      && Number.isInteger(m.event) && typeof m.text === "string"
      && m.total >= 2 && m.total <= MAX_PARTS && m.index >= 0 && m.index < m.total;
    if (!ok) return null;
    if (m.index === 0) {
      this.interrupt();
      this.open = { id: m.id, total: m.total, event: m.event, texts: [m.text], chars: m.text.length };
      return null;
    }
    const o = this.open;
    if (!o || o.id !== m.id) return null;
    if (m.index !== o.texts.length || m.total !== o.total || m.event !== o.event
        || o.chars + m.text.length > MAX_PART_CHARS) {
      this.interrupt();
      return null;
    }
    o.texts.push(m.text);
    o.chars += m.text.length;
    if (o.texts.length < o.total) return null;
    this.open = null;
    let e;
    try { e = JSON.parse(o.texts.join("")); } catch { e = null; }
    if (!e || typeof e !== "object" || e.type !== o.event) { this.abandoned += 1; return null; }
    this.joined += 1;
    return e;
  }
}

const MOVE_EVERY_MS = 33; // mouse moves sent at most ~30 a second
const POINTER_EVERY_MS = 100; // the bare pointer, ~10 a second

// rrweb's own rules for the replayed page (its block placeholders, <noscript> hidden),
// which it would otherwise put in a <style> element of its own.
const REPLAY_RULES = [".rr-block { background: currentColor; }", "noscript { display: none !important; }"];

export function guardFrame(iframe) {
  const win = iframe.contentWindow;
  const doc = iframe.contentDocument;
  if (!win || !doc || win.__backlineGuarded) return null;
  win.__backlineGuarded = true;
  const setAttribute = win.Element.prototype.setAttribute;
  win.Element.prototype.setAttribute = function setAttributeViaCssom(name, value) {
    if (String(name).toLowerCase() === "style" && this.style) {
      this.style.cssText = String(value);
      return;
    }
    setAttribute.call(this, name, value);
  };
  // A <style> of the replayed page is an inert stand-in (a <template>, never rendered,
  // never parsed as CSS) whose text, and whose `sheet` for rrweb's rule events, is a
  // constructed stylesheet adopted by the frame's document, in document order.
  const sheets = new WeakMap(); // stand-in -> {sheet, text}
  const mine = new WeakSet();
  const base = new win.CSSStyleSheet();
  base.replaceSync(REPLAY_RULES.join("\n"));
  mine.add(base);
  const entryOf = (el) => {
    let entry = sheets.get(el);
    if (!entry) {
      entry = { sheet: new win.CSSStyleSheet(), text: null };
      mine.add(entry.sheet);
      sheets.set(el, entry);
    }
    return entry;
  };
  const create = doc.createElement.bind(doc);
  doc.createElement = function createElement(name, options) {
    if (String(name).toLowerCase() !== "style") return create(name, options);
    const el = create("template");
    el.dataset.backlineStyle = "";
    Object.defineProperty(el, "sheet", { configurable: true, get: () => entryOf(el).sheet });
    return el;
  };
  const resync = () => {
    const d = iframe.contentDocument;
    if (!d) return;
    const ordered = [base];
    for (const el of d.querySelectorAll("template[data-backline-style]")) {
      const entry = entryOf(el);
      const text = el.textContent || "";
      if (entry.text !== text) {
        entry.text = text;
        try {
          entry.sheet.replaceSync(text);
        } catch {
          /* CSS the browser does not take: left out, as it would be */
        }
      }
      ordered.push(entry.sheet);
    }
    const others = [...d.adoptedStyleSheets].filter((sh) => !mine.has(sh));
    d.adoptedStyleSheets = [...ordered, ...others];
  };
  let queued = false;
  const soon = () => {
    if (queued) return;
    queued = true;
    queueMicrotask(() => { queued = false; resync(); });
  };
  const isStyle = (n) => n?.nodeType === 1 && n.hasAttribute?.("data-backline-style");
  const touchesStyle = (n) => n && (isStyle(n) || isStyle(n.parentNode)
    || (n.querySelector && n.querySelector("template[data-backline-style]")));
  new win.MutationObserver((records) => {
    if (records.some((r) => touchesStyle(r.target) || [...r.addedNodes].some(touchesStyle)
      || [...r.removedNodes].some(touchesStyle))) soon();
  }).observe(doc, { subtree: true, childList: true, characterData: true });
  soon();
  return soon;
}

function pageSize(events) {
  const meta = [...events].reverse().find((e) => e?.type === 4 && e.data);
  return meta ? { w: Number(meta.data.width) || 1024, h: Number(meta.data.height) || 768 } : null;
}

// Scale the replayer's wrapper (page CSS pixels) to the host's width.
function fit(host, stage, size) {
  if (!size) return 1;
  const width = host.clientWidth || size.w;
  const scale = Math.min(1, width / size.w);
  stage.style.width = `${size.w}px`;
  stage.style.height = `${size.h}px`;
  stage.style.transform = `scale(${scale})`;
  stage.style.transformOrigin = "0 0";
  host.style.height = `${Math.ceil(size.h * scale)}px`;
  return scale;
}

export class LiveView {
  constructor({ sessionId, watch = false, start = null, onChange }) {
    this.sessionId = sessionId;
    this.watch = watch;
    this.startFrame = start; // {url, reason, screencast}
    this.onChange = onChange;
    this.state = "connecting"; // connecting -> open -> ended | failed | refused
    this.role = watch ? "watch" : null;
    this.consent = {};
    this.control = "none";
    this.asked = false; // the technician asked for control and no answer came yet
    this.url = null;
    this.private = false;
    this.hidden = [];
    this.error = "";
    this.notice = "";
    this.recording = null;
    this.frame = null; // the latest screencast frame {src, w, h}
    this.screencast = false;
    this.size = null;
    this.scale = 1;
    this.eventsSeen = 0;
    this.sent = { input: 0, pointer: 0 };
    this.host = document.createElement("div");
    this.host.className = "cobrowse-host";
    this.host.id = "cobrowse-live";
    this.stage = document.createElement("div");
    this.stage.className = "cobrowse-stage";
    this.overlay = document.createElement("div");
    this.overlay.className = "cobrowse-overlay";
    this.overlay.tabIndex = 0;
    this.overlay.setAttribute("aria-label", "The customer's page (click to focus; input goes on only with control)");
    this.host.append(this.stage, this.overlay);
    this.replayer = null;
    this.joiner = new Joiner();
    this.ws = null;
    this.lastMove = 0;
    this.resize = () => { this.scale = fit(this.host, this.stage, this.size); };
  }

  get inControl() {
    return !this.watch && this.state === "open" && (this.control === "granted" || this.control === "resumed");
  }

  start() {
    const params = this.watch ? { watch: "1" } : undefined;
    const ws = new WebSocket(streamUrl(this.sessionId, "cobrowse", params));
    this.ws = ws;
    ws.onopen = () => {
      if (!this.watch) ws.send(JSON.stringify({ type: "start", ...(this.startFrame || {}) }));
    };
    ws.onmessage = (ev) => this.onFrame(ev.data);
    ws.onclose = () => {
      if (this.state === "connecting" || this.state === "open") {
        this.state = this.state === "connecting" ? "failed" : "ended";
        if (!this.error && this.state === "failed") this.error = "The relay closed the connection.";
      }
      this.changed();
    };
    this.bindInput();
    window.addEventListener("resize", this.resize);
  }

  changed() {
    this.onChange?.();
  }

  send(msg) {
    if (this.watch || !this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  askControl() {
    if (this.send({ type: "request_control" })) { this.asked = true; this.changed(); }
  }

  releaseControl() {
    this.send({ type: "release_control" });
  }

  proposeUrl(url) {
    this.send({ type: "propose_url", url });
  }

  setScreencast(on) {
    if (this.send({ type: "screencast", on })) { this.screencast = on; this.changed(); }
  }

  end() {
    if (!this.send({ type: "end" })) this.ws?.close(1000);
  }

  onFrame(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    if (f.type === "ready") {
      this.state = "open";
      this.role = f.role;
      this.consent = f.consent || {};
      this.control = f.control || "none";
      this.url = f.url || null;
      this.id = f.cobrowse;
    } else if (f.type === "agent" && f.msg) {
      this.onAgent(f.msg);
      if (f.msg.type === "rrweb" || f.msg.type === "rrweb_part") return; // the view redraws itself
    } else if (f.type === "refused") {
      this.notice = `The relay did not pass that on: ${f.detail || f.error}`;
    } else if (f.type === "error") {
      this.state = f.error === "refused_by_customer" || f.error === "refused_by_agent" ? "refused" : "failed";
      this.error = f.detail || f.error;
      this.recording = f.recording || null;
    } else if (f.type === "exit") {
      this.state = "ended";
      this.recording = f.recording || null;
      this.control = "none";
    }
    this.changed();
  }

  onAgent(m) {
    switch (m.type) {
      case "consent":
        this.consent = { ...this.consent, [m.what]: m.answer };
        if (m.what === "control") this.asked = false;
        break;
      case "control":
        this.control = m.state;
        this.asked = false;
        break;
      case "nav":
        this.url = typeof m.url === "string" ? m.url : null;
        this.private = m.private === true; // only its origin is said, nothing is shown
        break;
      case "hidden":
        this.hidden = Array.isArray(m.what) ? m.what.map(String).slice(0, 50) : [];
        break;
      case "frame":
        if (typeof m.b64 === "string" && /^[A-Za-z0-9+/=]*$/.test(m.b64)) {
          this.frame = { src: `data:image/jpeg;base64,${m.b64}`, w: m.w, h: m.h };
        }
        break;
      case "error":
        this.notice = `The customer's side: ${m.detail || m.error}`;
        break;
      case "ended":
        this.notice = `The co-browse ended (${m.reason}).`;
        break;
      case "rrweb":
        this.joiner.interrupt();
        if (Array.isArray(m.events)) this.apply(m.events);
        break;
      case "rrweb_part": {
        const e = this.joiner.part(m);
        if (e) this.apply([e]);
        this.host.dataset.joined = String(this.joiner.joined);
        break;
      }
      default:
        break;
    }
  }

  apply(events) {
    const now = Date.now();
    if (!this.replayer) {
      if (!this.host.isConnected) { // not on the page yet: kept until it is
        (this.pending ||= []).push(...events);
        requestAnimationFrame(() => { const p = this.pending || []; this.pending = null; if (p.length) this.apply(p); });
        return;
      }
      installCspShims(); // rrweb's own <style> in the console's document: see csp_shims.js
      this.replayer = new Replayer([], {
        root: this.stage, liveMode: true, mouseTail: false, triggerFocus: false,
        showWarning: false, useVirtualDom: false,
      });
      this.restyle = guardFrame(this.replayer.iframe);
      this.replayer.startLive(now);
    }
    const size = pageSize(events);
    if (size) { this.size = size; this.resize(); }
    for (const e of events) {
      if (!e || typeof e !== "object" || typeof e.type !== "number") continue;
      // Applied as it comes: the customer's clock is not ours.
      this.replayer.addEvent({ ...e, timestamp: now });
      this.eventsSeen += 1;
    }
    this.host.dataset.events = String(this.eventsSeen);
    if (this.restyle) setTimeout(this.restyle, 0);
  }

  // The technician's pointer and input, in the page's CSS pixels.
  at(ev) {
    const rect = this.overlay.getBoundingClientRect();
    const scale = this.scale || 1;
    const x = Math.max(0, (ev.clientX - rect.left) / scale);
    const y = Math.max(0, (ev.clientY - rect.top) / scale);
    return { x: Math.round(x * 10) / 10, y: Math.round(y * 10) / 10 };
  }

  input(msg) {
    if (!this.inControl) return;
    if (this.send({ type: "input", ...msg })) this.sent.input += 1;
  }

  bindInput() {
    const o = this.overlay;
    // Left and right only: the middle button pastes the customer's X primary selection on
    // Linux, and the relay and the agent refuse it.
    const button = (ev) => ({ 0: "left", 2: "right" })[ev.button];
    o.addEventListener("mousedown", (ev) => {
      o.focus();
      ev.preventDefault();
      if (!button(ev)) return;
      this.input({ kind: "mouse", event: "mousePressed", ...this.at(ev), button: button(ev),
        clicks: Math.min(3, Math.max(1, ev.detail || 1)) });
    });
    o.addEventListener("mouseup", (ev) => {
      if (!button(ev)) return;
      this.input({ kind: "mouse", event: "mouseReleased", ...this.at(ev), button: button(ev),
        clicks: Math.min(3, Math.max(1, ev.detail || 1)) });
    });
    o.addEventListener("mousemove", (ev) => {
      const t = performance.now();
      if (this.inControl) {
        if (t - this.lastMove < MOVE_EVERY_MS) return;
        this.lastMove = t;
        this.input({ kind: "mouse", event: "mouseMoved", ...this.at(ev), button: "none", clicks: 0 });
      } else if (!this.watch && this.state === "open") {
        if (t - this.lastMove < POINTER_EVERY_MS) return;
        this.lastMove = t;
        if (this.send({ type: "pointer", ...this.at(ev) })) this.sent.pointer += 1;
      }
    });
    o.addEventListener("wheel", (ev) => {
      if (!this.inControl) return;
      ev.preventDefault();
      const clamp = (v) => Math.max(-100000, Math.min(100000, v));
      this.input({ kind: "wheel", ...this.at(ev), dx: clamp(ev.deltaX), dy: clamp(ev.deltaY) });
    }, { passive: false });
    o.addEventListener("contextmenu", (ev) => ev.preventDefault());
    const key = (kind) => (ev) => {
      if (!this.inControl) return;
      ev.preventDefault();
      const k = String(ev.key || "").slice(0, 32);
      if (!k) return;
      const code = /^[A-Za-z0-9]{0,32}$/.test(ev.code || "") ? ev.code : "";
      // What the key types: a character, or a carriage return for Enter (so that a form
      // submits as it would under the customer's own keyboard).
      const text = kind !== "keyDown" ? "" : [...k].length === 1 ? k : k === "Enter" ? "\r" : "";
      this.input({ kind: "key", event: kind, key: k, code, text });
    };
    o.addEventListener("keydown", key("keyDown"));
    o.addEventListener("keyup", key("keyUp"));
  }

  dispose() {
    window.removeEventListener("resize", this.resize);
    try { this.ws?.close(1000); } catch { /* closed */ }
    try { this.replayer?.destroy(); } catch { /* gone */ }
    this.replayer = null;
  }
}
