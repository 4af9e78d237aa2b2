// The session timeline (#/timeline/ID, for auditors, read-only): who, which agent, when,
// why and the outcome; every audit event of the session in order, as readable rows,
// paged (a session of 10,000 events shows its first page at once, more on demand);
// and its evidence inline: terminal recordings (asciinema-player), co-browse recordings
// (rrweb), fix outputs and diagnostics reports. Each piece is fetched once, its SHA-256
// computed in the page (crypto.subtle) and compared with the digest the audit trail
// recorded; the relay checks too and refuses a file the trail does not vouch for. A
// mismatch is shown loudly. Nothing here changes anything: there is no write control.
//
// #/timeline/ID/RECORDING/SECOND opens the terminal recording at that second (a search hit).

import { html, nothing } from "lit-html";
import { get, query } from "../api.js";
import { when } from "../format.js";
import { fetchChecked, fmtBytes, PLAY_LIMIT_BYTES, RecordingShelf } from "../recordings/index.js";
import { checkBadge, cobrowseReplayView, terminalReplayView } from "../recordings/views.js";
import { actorView, detailFields, rawEvent, targetView } from "./event_fields.js";
import { findingsView } from "./report.js";

// The first page is what fills a screen or two; the rest comes on demand.
const PAGE = 100;
// Rows drawn in the first frame (a screenful); the rest of the page in the next one.
const FIRST_SCREEN = 30;
const loadTerminal = async () => (await import("../recordings/terminal_player.js")).TerminalReplay;
const loadCobrowse = async () => (await import("../recordings/cobrowse_player.js")).CobrowseReplay;

const fresh = (id) => ({
  id, visit: -1, session: null, events: [], next: null, evidence: [], error: "",
  loadingMore: false, hit: null, shown: {}, drawn: FIRST_SCREEN,
  terminal: new RecordingShelf({ capability: "shell", loadPlayer: loadTerminal, onChange: () => redraw() }),
  cobrowse: new RecordingShelf({ capability: "cobrowse", loadPlayer: loadCobrowse, onChange: () => redraw() }),
});
let s = fresh(null);
let redraw = () => {};

const OUTCOME_TEXT = { resolved: "Resolved", not_resolved: "Not resolved", escalated: "Escalated" };
const KIND_TEXT = { terminal: "Terminal recording", cobrowse: "Co-browse recording",
  fix_output: "Fix output", diagnostics: "Diagnostics report" };

async function loadFirst(id) {
  try {
    const r = await get(`/sessions/${encodeURIComponent(id)}/timeline${query({ limit: PAGE })}`);
    if (s.id !== id) return;
    s.session = r.session;
    s.events = r.events;
    s.next = r.next_after;
    s.evidence = r.evidence || [];
    s.evidenceCut = Boolean(r.evidence_truncated);
    s.error = "";
    requestAnimationFrame(() => requestAnimationFrame(() => {
      if (s.id !== id) return;
      s.drawn = Infinity;
      redraw();
    }));
    if (s.hit) {
      const item = s.evidence.find((e) => e.id === s.hit.recording && e.kind === "terminal");
      if (item) show(item, s.hit.at);
    }
  } catch (err) {
    s.error = err.message;
  }
  redraw();
}

async function loadMore() {
  if (!s.next || s.loadingMore) return;
  s.loadingMore = true;
  redraw();
  try {
    const r = await get(`/sessions/${encodeURIComponent(s.id)}/timeline${query({ after: s.next, limit: 1000 })}`);
    s.events = s.events.concat(r.events);
    s.next = r.next_after;
  } catch (err) {
    s.error = err.message;
  }
  s.loadingMore = false;
  redraw();
}

// Open one piece of evidence inline (a recording's player, a text's contents).
async function show(item, startAt = 0) {
  const rec = { id: item.id, sha256: item.sha256, bytes: item.bytes, duration_s: item.duration_s };
  if (item.kind === "terminal") {
    await s.terminal.play(rec, { expected: item.trail_sha256, startAt });
    document.getElementById("timeline-terminal")?.scrollIntoView({ block: "nearest" });
    return;
  }
  if (item.kind === "cobrowse") {
    await s.cobrowse.play(rec, { expected: item.trail_sha256 });
    return;
  }
  const accept = item.kind === "fix_output" ? "text/plain" : "application/x-ndjson";
  s.shown[item.id] = { state: "loading" };
  redraw();
  try {
    const got = await fetchChecked(item.url, item.trail_sha256, accept);
    s.shown[item.id] = { state: got.check === "mismatch" ? "failed" : "ready", check: got.check,
      computed: got.computed, text: got.text, error: got.detail };
  } catch (err) {
    s.shown[item.id] = { state: "failed", check: err.check || "refused", error: err.message };
  }
  redraw();
}

function findingsOf(text) {
  for (const line of text.split("\n").reverse()) {
    try {
      const m = JSON.parse(line);
      if (m?.type === "end" && Array.isArray(m.findings)) return m.findings;
    } catch { /* not a line of a run */ }
  }
  return null;
}

function shownView(item) {
  const v = s.shown[item.id];
  if (!v) return nothing;
  if (v.state === "loading") return html`<p class="muted">Loading…</p>`;
  const badge = checkBadge(v, item.trail_sha256, item.kind === "fix_output" ? "fix output" : "diagnostics report");
  if (v.state === "failed") {
    return html`${badge}${v.check !== "mismatch" ? html`<p class="error" role="alert">${v.error}</p>` : nothing}`;
  }
  if (item.kind === "diagnostics") {
    const findings = findingsOf(v.text);
    // The diagnostics panel's own rendering (worst first; "No known issue found." when
    // empty), so a report reads the same live and in review.
    return html`${badge}${findings ? findingsView(findings)
      : html`<pre class="evidence-text">${v.text.slice(0, 200000)}</pre>`}`;
  }
  return html`${badge}<pre class="evidence-text">${v.text.slice(0, 200000)}</pre>`;
}

function trailDigest(item) {
  if (!item.trail_sha256) {
    return html`<span class="digest mismatch" role="alert">✖ not in the audit trail: cannot be vouched for</span>`;
  }
  return html`<code class="digest" title=${item.trail_sha256}>${item.trail_sha256.slice(0, 16)}…</code>
    <span class="muted">(event #${item.trail_seq}, ${item.trail_action})</span>
    ${item.row_matches_trail ? nothing
      : html`<span class="digest mismatch" role="alert">✖ the relay's table says ${item.sha256.slice(0, 16)}…</span>`}`;
}

// Evidence the trail recorded that the relay no longer has, without the trail saying
// why (a retention deletion is audited and shown as such): each is shown loudly.
const LOUD = new Set(["no_record", "no_blob", "unaudited_deletion"]);
const LOUD_TEXT = {
  no_record: "MISSING: in the trail, no record on the relay",
  no_blob: "MISSING: its content is not in the relay's store, and the trail records no deletion",
  unaudited_deletion: "MISSING: marked deleted on the relay, but the trail records no deletion",
};

function stateView(e) {
  const where = e.trail_seq ? html` <span class="muted">(stored: event #${e.trail_seq})</span>` : nothing;
  if (LOUD.has(e.state)) {
    return html`<span class="digest mismatch" role="alert" data-flag=${e.state}>✖ ${LOUD_TEXT[e.state]}</span>${where}`;
  }
  if (e.state === "deleted") {
    return html`<span class="muted deleted">deleted by the retention policy${e.deleted_at ? ` on ${when(e.deleted_at)}` : ""}
      ${e.deleted_seq ? `(event #${e.deleted_seq}; its digest stays in the trail)` : "(its digest stays in the trail)"}</span>
      ${e.has_row ? nothing : html`<span class="digest mismatch" role="alert" data-flag="no_record">✖ and its record is missing from the relay</span>`}`;
  }
  if (e.state === "not_kept") {
    return html`<span class="muted" data-flag="not_kept">not kept: the relay could not store it (event #${e.trail_seq} says so)</span>`;
  }
  if (e.deleted_at) return html`<span class="muted deleted">deleted on ${when(e.deleted_at)}</span>`;
  if (e.bytes > PLAY_LIMIT_BYTES) return html`<span class="muted">too large to show here</span>`;
  return html`<button type="button" @click=${() => show(e)}>${e.kind === "terminal" || e.kind === "cobrowse" ? "Replay" : "Show"}</button>`;
}

function evidenceView() {
  if (!s.evidence.length) return html`<p class="muted" id="no-evidence">No recordings, fix outputs or reports in this session.</p>`;
  const flagged = s.evidence.filter((e) => LOUD.has(e.state)).length;
  return html`${flagged ? html`<p class="error" role="alert" id="evidence-missing">${flagged} piece${flagged === 1 ? "" : "s"} of
      evidence the audit trail recorded ${flagged === 1 ? "is" : "are"} missing on the relay, and the trail records no deletion.</p>` : nothing}
    ${s.evidenceCut ? html`<p class="muted">Only the first pieces of evidence are listed.</p>` : nothing}
    <table class="evidence" aria-label="Evidence"><thead><tr><th scope="col">When</th>
      <th scope="col">What</th><th scope="col">Size</th><th scope="col">SHA-256 in the trail</th><th scope="col"></th></tr></thead>
    <tbody>${s.evidence.map((e) => html`<tr data-evidence=${e.id} data-kind=${e.kind} data-state=${e.state}
        class=${LOUD.has(e.state) ? "missing" : ""}>
      <td>${when(e.at)}</td>
      <td>${KIND_TEXT[e.kind]} <code>${e.id}</code>${e.fix ? html` — ${e.fix} <code class="digest" title=${e.digest}>${String(e.digest || "").slice(0, 19)}</code>` : nothing}
        ${e.findings !== null && e.findings !== undefined ? html` — ${e.findings} finding${e.findings === 1 ? "" : "s"} (worst ${e.worst})` : nothing}
        ${Number.isFinite(e.duration_s) ? html` — ${e.duration_s.toFixed(1)} s` : nothing}</td>
      <td>${fmtBytes(e.bytes)}</td><td>${trailDigest(e)}</td>
      <td>${stateView(e)}</td>
    </tr>${s.shown[e.id] ? html`<tr class="shown"><td colspan="5" data-shown=${e.id}>${shownView(e)}</td></tr>` : nothing}`)}</tbody></table>
    <div id="timeline-terminal">${terminalReplayView(s.terminal, { id: "timeline-replay", expected: s.terminal.replay?.expected })}</div>
    <div id="timeline-cobrowse">${cobrowseReplayView(s.cobrowse, { id: "timeline-cobrowse-replay", expected: s.cobrowse.replay?.expected })}</div>`;
}

function headerView(x) {
  const outcome = x.outcome
    ? html`<span class="outcome ${x.outcome}">${OUTCOME_TEXT[x.outcome] || x.outcome}</span>${x.outcome_note ? html` — ${x.outcome_note}` : nothing}
      ${x.outcome_by ? html`<span class="muted">(by ${x.outcome_by}${x.outcome_at ? `, ${when(x.outcome_at)}` : ""})</span>` : nothing}`
    : html`<span class="muted">not recorded</span>`;
  return html`<dl class="facts" id="timeline-facts">
    <dt>Technician</dt><dd id="tl-technician">${x.technician}</dd>
    <dt>Agent</dt><dd>${x.agent_id ? html`<a href="#/agent/${encodeURIComponent(x.agent_id)}">${x.remote_hostname || x.agent_id}</a>` : x.remote_hostname || "—"}
      <span class="muted">(${x.mode})</span></dd>
    <dt>When</dt><dd>${when(x.opened_at || x.created_at)} — ${x.closed_at ? when(x.closed_at) : html`<span class="state ${x.state}">${x.state}</span>`}
      ${x.close_reason ? html`<span class="muted">(${x.close_reason})</span>` : nothing}</dd>
    <dt>Why</dt><dd id="tl-reason">${x.reason || html`<span class="muted">no reason given</span>`}</dd>
    <dt>Ticket</dt><dd id="tl-ticket">${x.ticket || html`<span class="muted">none</span>`}</dd>
    <dt>Outcome</dt><dd id="tl-outcome">${outcome}</dd>
  </dl>`;
}

function eventsView() {
  return html`<table class="audit timeline" aria-label="Events"><thead><tr><th scope="col">#</th><th scope="col">Time</th>
      <th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th><th scope="col">Details</th></tr></thead>
    <tbody>${s.events.slice(0, s.drawn).map((e) => html`<tr id="timeline-event-${e.seq}" data-seq=${e.seq}
        class=${/refused|failed|mismatch/.test(e.action) ? "refusal" : ""}>
      <td>${e.seq}</td><td>${when(e.time)}</td><td>${actorView(e.actor)}</td><td><code>${e.action}</code></td>
      <td>${targetView(e.target, e.details)}</td><td>${detailFields(e.details)}${rawEvent(e)}</td></tr>`)}</tbody></table>
    ${s.drawn < s.events.length ? html`<p class="muted">Drawing…</p>` : nothing}
    ${s.next && s.drawn >= s.events.length ? html`<p class="actions"><button type="button" id="timeline-more" @click=${loadMore}
      ?disabled=${s.loadingMore}>${s.loadingMore ? "Loading…" : "Show more events"}</button></p>` : nothing}`;
}

function hitOf() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const at = Number(parts[3]);
  return parts[2] && Number.isFinite(at) ? { recording: decodeURIComponent(parts[2]), at } : null;
}

export function leaveTimeline() {
  s.terminal.close(false);
  s.cobrowse.close(false);
}

export function timelineView(app, id) {
  redraw = () => app.refresh();
  if (s.id !== id || s.visit !== app.visit) {
    leaveTimeline();
    s = fresh(id);
    s.visit = app.visit;
    s.hit = hitOf();
    loadFirst(id);
  }
  let body;
  if (s.error && !s.session) body = html`<p class="error" role="alert">Could not load the timeline: ${s.error}</p>`;
  else if (!s.session) body = html`<p class="muted">Loading…</p>`;
  else {
    body = html`${headerView(s.session)}
      <section class="card" aria-labelledby="tl-evidence"><h2 id="tl-evidence">Evidence</h2>
        <p class="muted">Each piece is checked when shown: the relay and this page both compare its
          SHA-256 with the digest the audit trail recorded when it was stored.</p>
        ${evidenceView()}</section>
      <section aria-labelledby="tl-events"><h2 id="tl-events">Events</h2>
        ${s.error ? html`<p class="error" role="alert">${s.error}</p>` : nothing}
        ${eventsView()}</section>`;
  }
  return html`<section aria-labelledby="timeline-title" class="timeline-page">
    <div class="bar"><h1 id="timeline-title">Session <code>${id}</code></h1>
      <div class="actions"><a href="#/search">Find sessions</a></div></div>
    ${body}</section>`;
}
