// One terminal: an xterm.js screen bridged to the relay's terminal WebSocket
// (/api/v1/sessions/{id}/stream/shell), speaking the wire contract in
// SHELL_CONTRACT.md (docs/console.md sums it up):
// - output arrives as binary frames and is written to xterm as bytes
//   (write(Uint8Array)): xterm decodes UTF-8 itself, copes with a sequence cut between
//   frames, and shows invalid bytes as U+FFFD; escape sequences are parsed by its
//   state machine, never by the page;
// - after xterm's write callback (the bytes are parsed and on screen) the console acks
//   the total it has rendered, so the relay holds a flood back at the agent's pty
//   instead of in anyone's memory, and a busy tab slows the flood rather than freezing;
// - keystrokes and pastes go out as binary frames, only while this console has control;
// - a resize of the window refits the screen and, when in control, tells the relay.

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import { installCspShims } from "./csp_shims.js";
import { streamUrl } from "../socket.js";

// The contract asks for an ack at least every 64 KiB rendered; half that keeps the
// relay's 256 KiB window from running dry while xterm is still parsing.
const ACK_EVERY = 32 * 1024;
// The relay takes keystroke frames of at most 64 KiB and ends a terminal whose shell
// leaves more than 256 KiB of input untaken: a paste goes out in 16 KiB frames, and
// one larger than MAX_PASTE is not sent at all (said on the panel).
const INPUT_FRAME = 16 * 1024;
export const MAX_PASTE = 128 * 1024;
const MAX_COLS = 500;
const MAX_ROWS = 200;
const RESIZE_DEBOUNCE_MS = 80;

const REFUSED = "Refused: the customer's agent does not allow a terminal in this session.";
const ERRORS = {
  refused: REFUSED,
  refused_by_agent: REFUSED,
  refused_by_customer: "Refused: the customer said no to a terminal.",
  agent_gone: "The customer's agent went away: the terminal has ended.",
  recording_failed: "The recording could not be written, so the relay ended the terminal "
    + "(nothing unrecorded happens while recording is on).",
  too_slow: "This console fell too far behind the terminal's output and was disconnected.",
  no_such_terminal: "There is no such terminal open in this session.",
  too_many_viewers: "That terminal has as many consoles watching as it allows.",
  not_in_session: "Refused: this session was not granted a terminal.",
};

const CLOSE_CODES = {
  4401: "You were signed out: the terminal has ended.",
  4403: "Refused: you may not open a terminal in this session.",
  4404: "This session is not open on the relay.",
  4409: "This session is not ready for a terminal.",
};

const clamp = (n, lo, hi) => Math.max(lo, Math.min(hi, Math.floor(n) || lo));

function binaryStringBytes(s) {
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i += 1) out[i] = s.charCodeAt(i) & 0xff;
  return out;
}

export class TerminalView {
  // onChange is called whenever something the panel shows changed (state, role, size).
  constructor({ sessionId, onChange, join = null }) {
    this.sessionId = sessionId;
    this.onChange = onChange;
    this.join = join;
    // connecting -> waiting (socket up, agent asked) -> open -> ended | failed | closed;
    // refused instead of open when the agent or the customer says no
    this.state = "connecting";
    this.role = null;
    this.recorded = null;
    this.keystrokesRecorded = false;
    this.terminalId = null;
    this.exitStatus = null;
    this.recording = null;
    this.error = "";
    this.notice = "";
    this.opened = false; // the relay said ready: there is a screen worth showing
    // With `ask`, ready comes before the customer is asked: the first output (the
    // shell's prompt) is what says the shell runs.
    this.shellSpoke = false;
    this.rendered = 0;
    this.acked = 0;
    this.pendingWrites = 0;
    this.host = document.createElement("div");
    this.host.className = "terminal-host";
    this.host.dataset.state = this.state;
    this.ws = null;
    this.resizeTimer = null;
    this.encoder = new TextEncoder();
    installCspShims();
    this.term = new Terminal({
      cursorBlink: true,
      scrollback: 5000,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', Menlo, Consolas, monospace",
      fontSize: 14,
      // The console never opens links or reports the title: the output is hostile.
      allowProposedApi: false,
      disableStdin: true,
    });
    this.fit = new FitAddon();
    this.term.loadAddon(this.fit);
    this.term.onData((s) => this.send(this.encoder.encode(s)));
    this.term.onBinary((s) => this.send(binaryStringBytes(s)));
    this.term.onResize(({ cols, rows }) => this.resized(cols, rows));
    // Ctrl+Shift+C copies the selection (Ctrl+C stays the interrupt); pasting uses the
    // browser's own paste (Ctrl+Shift+V, Ctrl+V, the context menu), which xterm turns
    // into input (bracketed when the shell asks for it).
    this.term.attachCustomKeyEventHandler((ev) => {
      if (ev.type === "keydown" && ev.ctrlKey && ev.shiftKey && (ev.key === "C" || ev.key === "c")) {
        this.copy();
        return false;
      }
      return true;
    });
    this.observer = new ResizeObserver(() => this.refit());
  }

  // Called once the host element is in the document (xterm measures its cells there).
  start() {
    if (this.ws) return;
    this.term.open(this.host);
    this.observer.observe(this.host);
    this.safeFit();
    const params = { cols: clamp(this.term.cols, 1, MAX_COLS), rows: clamp(this.term.rows, 1, MAX_ROWS) };
    if (this.join) params.terminal = this.join;
    const ws = new WebSocket(streamUrl(this.sessionId, "shell", params));
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    ws.addEventListener("open", () => this.set({ state: "waiting" }));
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data === "string") this.control(ev.data);
      else this.output(new Uint8Array(ev.data));
    });
    ws.addEventListener("close", (ev) => this.closed(ev));
  }

  set(fields) {
    Object.assign(this, fields);
    this.host.dataset.state = this.state;
    this.host.hidden = !this.opened && !["connecting", "waiting"].includes(this.state);
    this.term.options.disableStdin = !(this.state === "open" && this.role === "control");
    this.onChange();
  }

  control(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      return;
    }
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "ready") {
      this.set({
        state: "open", opened: true, role: msg.role === "control" ? "control" : "view",
        recorded: msg.recorded === true, keystrokesRecorded: msg.keystrokes_recorded === true,
        terminalId: typeof msg.terminal === "string" ? msg.terminal : null,
      });
      if (this.role === "view") this.follow(msg.cols, msg.rows);
      else this.sendResize(this.term.cols, this.term.rows);
      this.term.focus();
    } else if (msg.type === "role") {
      this.set({ role: msg.role === "control" ? "control" : "view" });
      if (this.role === "control") this.refit();
    } else if (msg.type === "resize") {
      if (this.role === "view") this.follow(msg.cols, msg.rows);
    } else if (msg.type === "exit") {
      const status = Number.isInteger(msg.exit_status) ? msg.exit_status : null;
      this.set({ state: "ended", exitStatus: status, recording: msg.recording || null });
    } else if (msg.type === "refused") {
      // A request of ours the relay turned down (handing control to someone who is
      // not watching); the terminal goes on.
      this.set({ notice: typeof msg.detail === "string" ? msg.detail.slice(0, 300) : "Refused." });
    } else if (msg.type === "error") {
      const code = String(msg.error || "error");
      const detail = typeof msg.detail === "string" ? msg.detail.slice(0, 300) : "";
      const error = ERRORS[code] ? `${ERRORS[code]}${detail && code !== "recording_failed" ? ` (${detail})` : ""}`
        : `The terminal ended: ${code}${detail ? ` (${detail})` : ""}.`;
      this.set({ state: code.startsWith("refused") ? "refused" : "failed", error, errorCode: code });
    }
  }

  output(bytes) {
    if (!this.shellSpoke) this.set({ shellSpoke: true });
    this.pendingWrites += 1;
    this.term.write(bytes, () => {
      this.pendingWrites -= 1;
      this.rendered += bytes.length;
      if (this.rendered - this.acked >= ACK_EVERY || this.pendingWrites === 0) this.ack();
    });
  }

  ack() {
    if (this.ws?.readyState !== WebSocket.OPEN || this.rendered === this.acked) return;
    this.acked = this.rendered;
    this.ws.send(JSON.stringify({ type: "ack", bytes: this.rendered }));
  }

  send(bytes) {
    if (this.state !== "open" || this.role !== "control") return;
    if (this.ws?.readyState !== WebSocket.OPEN || !bytes.length) return;
    if (bytes.length > MAX_PASTE) {
      this.set({ notice: `Not sent: ${Math.ceil(bytes.length / 1024)} KiB at once is more than `
        + `the terminal takes (${MAX_PASTE / 1024} KiB); paste it in parts.` });
      return;
    }
    for (let at = 0; at < bytes.length; at += INPUT_FRAME) {
      this.ws.send(bytes.subarray(at, at + INPUT_FRAME));
    }
  }

  paste(text) {
    if (this.state === "open" && this.role === "control" && text) this.term.paste(text);
  }

  async copy() {
    const text = this.term.getSelection();
    if (!text) return false;
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      return false;
    }
  }

  follow(cols, rows) {
    if (Number.isInteger(cols) && Number.isInteger(rows)) {
      this.term.resize(clamp(cols, 1, MAX_COLS), clamp(rows, 1, MAX_ROWS));
    }
  }

  safeFit() {
    // The fit addon proposes nothing while the host has no size (hidden, detached).
    const dims = this.fit.proposeDimensions();
    if (!dims || !Number.isFinite(dims.cols) || !Number.isFinite(dims.rows)) return;
    const cols = clamp(dims.cols, 2, MAX_COLS);
    const rows = clamp(dims.rows, 1, MAX_ROWS);
    if (cols !== this.term.cols || rows !== this.term.rows) this.term.resize(cols, rows);
  }

  refit() {
    // A viewer's screen has the controller's size; only the controller fits the window.
    if (this.role === "view" || !this.host.isConnected) return;
    this.safeFit();
  }

  resized(cols, rows) {
    this.onChange();
    if (this.role !== "control" || this.state !== "open") return;
    clearTimeout(this.resizeTimer);
    this.resizeTimer = setTimeout(() => this.sendResize(cols, rows), RESIZE_DEBOUNCE_MS);
  }

  sendResize(cols, rows) {
    if (this.ws?.readyState !== WebSocket.OPEN || this.role !== "control") return;
    this.ws.send(JSON.stringify({ type: "resize", cols: clamp(cols, 1, MAX_COLS), rows: clamp(rows, 1, MAX_ROWS) }));
  }

  grant(username) {
    if (this.ws?.readyState === WebSocket.OPEN && this.role === "control" && username) {
      this.ws.send(JSON.stringify({ type: "grant", to: username }));
    }
  }

  closed(ev) {
    clearTimeout(this.resizeTimer);
    if (["ended", "failed", "refused"].includes(this.state)) {
      this.set({});
      return;
    }
    if (this.state === "closing") {
      this.set({ state: "closed" });
      return;
    }
    const error = CLOSE_CODES[ev.code]
      || `The connection to the relay closed (code ${ev.code}${ev.reason ? `: ${ev.reason.slice(0, 120)}` : ""}).`;
    this.set({ state: "failed", error, errorCode: `close_${ev.code}` });
  }

  // The technician closes the terminal: closing the controller's socket closes the
  // channel (and the shell) on the agent.
  close() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN && ["connecting", "waiting", "open"].includes(this.state)) {
      this.set({ state: "closing" });
      this.ws.close(1000, "closed by the technician");
    }
  }

  dispose() {
    this.close();
    clearTimeout(this.resizeTimer);
    this.observer.disconnect();
    this.term.dispose();
    this.host.remove();
  }

  get size() {
    return { cols: this.term.cols, rows: this.term.rows };
  }
}
