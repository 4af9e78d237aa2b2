// One fix run in a session, over the relay's fix socket
// (/api/v1/sessions/{id}/stream/fix, the contract in docs/fixes.md): the console sends
// one text frame {"fix": "id@V", "params": {...}, "finding": rule|null}, may later send
// {"type": "cancel"}; the relay sends {"type": "run"} first, then each of the agent's
// JSON lines as {"type": "line", "line": "..."} (checked, refused, consent, start,
// output, cut, end, verify), then {"type": "exit"}, and after a run from a finding
// {"type": "recheck", "cleared": bool}.
//
// Output chunks are base64 of raw bytes: they are decoded as UTF-8 (one streaming
// decoder per stream, so a character cut between two chunks survives; invalid bytes
// become U+FFFD) and appended to a <pre> as text nodes, never parsed as HTML. The page
// keeps at most SHOW_CHARS of it (the relay keeps the whole output up to its cap, and
// serves it at /api/v1/fix-runs/{id}/output).

import { streamUrl } from "./socket.js";

export const SHOW_CHARS = 2 * 1024 * 1024;

export const REFUSALS = {
  bad_request: "the agent could not read the request",
  unsigned: "this version carries no approval signature",
  unpinned_key: "it is signed by a key the agent does not trust",
  bad_signature: "no signature matches this exact script and its settings",
  not_enough_signatures: "the agent's policy asks for more offline approver signatures than this version has",
  digest_mismatch: "what the agent received is not what was approved",
  revoked: "this version has been revoked",
  platform: "this fix is not for the customer's platform",
  params: "a parameter does not fit the approved schema",
  consent: "the customer said no",
  policy: "the agent's local policy does not allow this fix",
};

const CLOSE_CODES = {
  4401: "You were signed out: the run was not started.",
  4403: "Refused: you may not run fixes in this session (it needs agents:write and fixes:run, and being its technician).",
  4404: "This session is not open on the relay.",
  4409: "This session is not ready to run a fix.",
  4400: "The relay could not read the request.",
};

function bytesOf(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i += 1) out[i] = bin.charCodeAt(i);
  return out;
}

export function decodeText(b64) {
  try {
    return new TextDecoder("utf-8").decode(bytesOf(b64));
  } catch {
    return "";
  }
}

export function refusalText(reason, detail) {
  const why = REFUSALS[reason] || String(reason || "refused");
  return `Refused by the customer's agent: ${why}${detail ? ` (${String(detail).slice(0, 300)})` : ""}.`;
}

export class FixRun {
  constructor({ sessionId, fix, params, finding = null, onChange = () => {} }) {
    this.sessionId = sessionId;
    this.fix = fix;
    this.params = params;
    this.finding = finding;
    this.onChange = onChange;
    // connecting -> checking (sent) -> running (start) -> ended; or refused, failed
    this.state = "connecting";
    this.runId = null;
    this.checked = null;
    this.consent = null;
    this.pid = null;
    this.cut = null;
    this.end = null;
    this.verify = null;
    this.exit = null;
    this.recheck = null;
    this.error = "";
    this.cancelRequested = false;
    this.shown = 0;
    this.shownCut = false;
    this.received = 0;
    this.t0 = performance.now();
    this.firstOutputMs = null;
    this.endMs = null;
    this.decoders = { 1: new TextDecoder("utf-8"), 2: new TextDecoder("utf-8") };
    this.host = document.createElement("pre");
    this.host.className = "fix-output";
    this.host.id = "fix-output";
    this.host.setAttribute("aria-label", "Output of the fix");
    this.host.setAttribute("tabindex", "0");
    this.ws = null;
  }

  get live() {
    return ["connecting", "checking", "running"].includes(this.state);
  }

  start() {
    const ws = new WebSocket(streamUrl(this.sessionId, "fix"));
    this.ws = ws;
    ws.addEventListener("open", () => {
      ws.send(JSON.stringify({ fix: this.fix, params: this.params, finding: this.finding }));
      this.state = "checking";
      this.onChange();
    });
    ws.addEventListener("message", (ev) => {
      if (typeof ev.data !== "string") return;
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch {
        return;
      }
      this.handle(msg);
      this.onChange();
    });
    ws.addEventListener("close", (ev) => {
      if (this.ws !== ws) return;
      this.flush();
      if (this.state === "connecting" || this.state === "checking" || this.state === "running") {
        this.state = "failed";
        this.error = CLOSE_CODES[ev.code]
          || `The connection to the relay closed before the fix ended (code ${ev.code}).`;
      }
      if (this.finding && this.end && !this.recheck) this.recheck = { missing: true };
      this.ws = null;
      this.onChange();
    });
  }

  handle(msg) {
    switch (msg.type) {
      case "run":
        this.runId = typeof msg.run_id === "string" ? msg.run_id : null;
        break;
      case "line": {
        let line;
        try {
          line = JSON.parse(msg.line);
        } catch {
          return;
        }
        if (line && typeof line === "object") this.agentLine(line);
        break;
      }
      case "exit":
        this.exit = msg;
        this.flush();
        if (this.live) {
          if (typeof msg.refused === "string" && msg.refused) {
            this.state = "refused";
            this.error = this.error || refusalText(msg.refused, "");
          } else if (msg.exit_status === 77 && !this.end) {
            this.state = "refused";
            this.error = this.error || "Refused by the customer's agent.";
          } else if (!this.end) {
            this.state = "failed";
            this.error = this.error || `The agent ended the run without an end report (exit status ${msg.exit_status}).`;
          }
        }
        break;
      case "recheck":
        // cleared: true, false, or null when the relay could not tell
        this.recheck = { cleared: typeof msg.cleared === "boolean" ? msg.cleared : null, finding: msg.finding };
        break;
      case "error":
        this.flush();
        if (this.live) this.state = msg.error && String(msg.error).startsWith("refused") ? "refused" : "failed";
        this.error = errorText(msg);
        break;
      default:
        break;
    }
  }

  agentLine(line) {
    switch (line.type) {
      case "checked":
        this.checked = { digest: String(line.digest || ""), signers: Array.isArray(line.signers) ? line.signers.map(String) : [] };
        break;
      case "refused":
        this.state = "refused";
        this.error = refusalText(line.reason, line.detail);
        break;
      case "consent":
        this.consent = String(line.answer || "");
        break;
      case "start":
        this.state = "running";
        this.pid = Number.isInteger(line.pid) ? line.pid : null;
        break;
      case "output":
        this.output(line.fd === 2 ? 2 : 1, typeof line.b64 === "string" ? line.b64 : "");
        break;
      case "cut":
        this.flush();
        this.cut = { kept_bytes: Number(line.kept_bytes) || 0 };
        this.marker(`[output cut here: the agent kept the first ${this.cut.kept_bytes} bytes; the rest was counted, not kept]`, "cut-marker");
        break;
      case "end":
        this.flush();
        this.end = line;
        this.state = "ended";
        this.endMs = Math.round(performance.now() - this.t0);
        break;
      case "verify":
        this.verify = {
          passed: line.passed === true,
          exit_status: line.exit_status,
          text: typeof line.output_b64 === "string" ? decodeText(line.output_b64) : "",
        };
        break;
      default:
        break;
    }
  }

  output(fd, b64) {
    let bytes;
    try {
      bytes = bytesOf(b64);
    } catch {
      return;
    }
    this.received += bytes.length;
    if (this.firstOutputMs === null) this.firstOutputMs = Math.round(performance.now() - this.t0);
    this.append(this.decoders[fd].decode(bytes, { stream: true }), fd);
  }

  flush() {
    for (const fd of [1, 2]) this.append(this.decoders[fd].decode(), fd);
  }

  append(text, fd) {
    if (!text) return;
    if (this.shown >= SHOW_CHARS) {
      if (!this.shownCut) {
        this.shownCut = true;
        this.marker(`[the page shows the first ${SHOW_CHARS} characters; the relay keeps the whole output]`, "page-cut");
      }
      return;
    }
    const piece = text.length > SHOW_CHARS - this.shown ? text.slice(0, SHOW_CHARS - this.shown) : text;
    this.shown += piece.length;
    const last = this.host.lastChild;
    if (last && last.nodeType === 1 && last.dataset.fd === String(fd) && last.tagName === "SPAN") {
      last.append(document.createTextNode(piece));
    } else {
      const span = document.createElement("span");
      span.dataset.fd = String(fd);
      if (fd === 2) span.className = "stderr";
      span.textContent = piece;
      this.host.append(span);
    }
    this.host.scrollTop = this.host.scrollHeight;
  }

  marker(text, cls) {
    const el = document.createElement("span");
    el.className = cls;
    el.textContent = `\n${text}\n`;
    this.host.append(el);
  }

  cancel() {
    if (!this.ws || !this.live) return;
    this.cancelRequested = true;
    try {
      this.ws.send(JSON.stringify({ type: "cancel" }));
    } catch {
      /* the socket is closing: closing the channel cancels too */
    }
    this.onChange();
  }

  dispose() {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(1000, "left the page");
  }
}

function errorText(msg) {
  const code = String(msg.error || "");
  const detail = msg.detail ? String(msg.detail).slice(0, 400) : "";
  if (code === "refused_by_agent" || code === "refused") return `Refused by the customer's agent${detail ? `: ${detail}` : "."}`;
  if (code === "refused_by_customer") return "Refused: the customer said no.";
  if (code === "agent_gone") return "The customer's agent went away during the run.";
  if (code === "not_in_session") return "Refused: this session was not granted fixes.";
  if (code === "too_large") return "The relay cut the stream: the agent sent more than it takes.";
  return detail ? `${detail}${code ? ` (${code})` : ""}` : `The relay ended the run: ${code || "unknown error"}.`;
}

// In words: how the run ended, from the agent's end report.
export function endText(end) {
  if (!end) return "";
  const took = Number.isFinite(end.duration_ms) ? ` after ${end.duration_ms} ms` : "";
  if (end.cancelled) return `Cancelled${took}: the fix's whole process group was ended.`;
  if (end.timed_out) return `Timed out${took}: the fix's whole process group was ended.`;
  if (end.signal != null && end.signal !== "") return `Ended by signal ${end.signal}${took}.`;
  return `Ended with exit status ${end.exit_status}${took}.`;
}
