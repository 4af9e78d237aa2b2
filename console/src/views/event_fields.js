// An audit event's details as readable fields (who, what, on which agent, session or
// recording: linked), not a JSON string; the raw event one click away. Shared by the
// audit view and the session timeline. Everything is text to lit-html (escaped).

import { html, nothing } from "lit-html";
import { when } from "../format.js";

const enc = encodeURIComponent;
const ID = /^[A-Za-z0-9_.-]{1,64}$/;

// Where an id of each kind is shown in the console.
export function sessionLink(id, label = id) {
  return ID.test(id) ? html`<a href="#/timeline/${enc(id)}" data-link="session"><code>${label}</code></a>` : html`<code>${id}</code>`;
}

function agentLink(id) {
  return ID.test(id) ? html`<a href="#/agent/${enc(id)}" data-link="agent"><code>${id}</code></a>` : html`<code>${id}</code>`;
}

function fixLink(ref) {
  const id = String(ref).split("@")[0];
  return /^[a-z][a-z0-9-]{1,47}$/.test(id) ? html`<a href="#/fixes/${enc(id)}" data-link="fix"><code>${ref}</code></a>` : html`<code>${ref}</code>`;
}

// The target, linked when it names something the console shows.
export function targetView(target, details = {}) {
  const [kind, ...rest] = String(target || "").split(":");
  const id = rest.join(":");
  if (!id) return target ? html`<code>${target}</code>` : html`<span class="muted">—</span>`;
  if (kind === "session") return html`session ${sessionLink(id)}`;
  if (kind === "agent") return html`agent ${agentLink(id)}`;
  if (kind === "recording" && typeof details.session === "string") {
    return html`recording <code>${id}</code> of ${sessionLink(details.session)}`;
  }
  if (kind === "fix") return html`fix ${fixLink(id)}`;
  return html`<code>${target}</code>`;
}

const LABELS = {
  session: "Session", agent: "Agent", agent_id: "Agent", recording: "Recording", report: "Report",
  run: "Fix run", fix: "Fix", digest: "Manifest digest", sha256: "SHA-256", capability: "Capability",
  reason: "Reason", detail: "Detail", address: "From address", technician: "Technician", user: "User",
  to: "To", by: "By", answer: "Answer", what: "What", ticket: "Ticket", mode: "Mode",
  exit_status: "Exit status", bytes: "Bytes", duration_s: "Seconds", duration_ms: "ms",
  findings: "Findings", worst: "Worst", cobrowse: "Co-browse", terminal: "Terminal", url: "URL",
  outcome: "Outcome", note: "Note", output_sha256: "Output SHA-256", blob: "Output blob",
};
const LINKED = {
  session: (v) => sessionLink(v), agent: agentLink, agent_id: agentLink, fix: fixLink,
};

function value(key, v) {
  if (v === null || v === undefined) return html`<span class="muted">none</span>`;
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "string" && LINKED[key]) return LINKED[key](v);
  if (/(^|_)(sha256|digest|blob|hash)$/.test(key) && typeof v === "string") {
    return html`<code class="digest" title=${v}>${v.length > 23 ? `${v.slice(0, 23)}…` : v}</code>`;
  }
  if (typeof v === "number" && /(_at|^at|expires_at|valid_before)$/.test(key) && v > 1e9) return when(v);
  if (Array.isArray(v)) return v.length ? v.map((x) => (typeof x === "object" ? JSON.stringify(x) : String(x))).join(", ") : html`<span class="muted">none</span>`;
  if (typeof v === "object") return html`<code>${JSON.stringify(v)}</code>`;
  return String(v);
}

// The details as a list of labelled fields.
export function detailFields(details) {
  const entries = Object.entries(details || {});
  if (!entries.length) return html`<span class="muted">no details</span>`;
  return html`<dl class="fields">${entries.map(([k, v]) => html`<div class="field" data-field=${k}>
    <dt>${LABELS[k] || k.replaceAll("_", " ")}</dt><dd>${value(k, v)}</dd></div>`)}</dl>`;
}

// The whole event as the trail holds it, behind one click; written when first opened
// (a page of a thousand events would otherwise carry a thousand JSON texts).
export function rawEvent(e) {
  const fill = (ev) => {
    const pre = ev.currentTarget.querySelector("pre.raw-event");
    if (ev.currentTarget.open && pre && !pre.textContent) pre.textContent = JSON.stringify(e, null, 2);
  };
  return html`<details class="raw" @toggle=${fill}><summary>Raw event</summary><pre class="raw-event"></pre></details>`;
}

export function actorView(actor) {
  const m = /^user:([a-z0-9._-]+)$/.exec(actor || "");
  return m ? html`<span data-actor=${m[1]}>${m[1]}</span>` : html`<code>${actor}</code>`;
}

export { nothing };
