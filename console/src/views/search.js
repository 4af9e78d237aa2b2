// Find sessions (#/search): by agent, technician, ticket, time, capability, outcome, and
// by words typed or printed in a terminal recording (the relay's index, built when a
// recording is stored). A text hit links to the moment in the timeline's replay.

import { html, nothing } from "lit-html";
import { get, query } from "../api.js";
import { toUnix, when } from "../format.js";
import { sessionLink } from "./event_fields.js";

const s = { visit: -1, filters: {}, result: null, error: "", busy: false };
let appRef = null;
const enc = encodeURIComponent;

async function run() {
  s.busy = true;
  appRef?.refresh();
  const f = s.filters;
  try {
    s.result = await get(`/session-search${query({
      text: f.text, agent: f.agent, technician: f.technician, ticket: f.ticket,
      capability: f.capability, outcome: f.outcome, since: toUnix(f.since), until: toUnix(f.until),
      limit: 50,
    })}`);
    s.error = "";
  } catch (err) {
    s.error = err.message;
    s.result = null;
  }
  s.busy = false;
  appRef?.refresh();
}

function second(at) {
  const t = Math.max(0, Math.floor(at));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, "0")}`;
}

function resultsView() {
  if (s.error) return html`<p class="error" role="alert">${s.error}</p>`;
  if (!s.result) return nothing;
  if (!s.result.sessions.length) return html`<p class="empty" id="search-empty">No session matches.</p>`;
  return html`<table class="sessions" id="search-results" aria-label="Sessions found"><thead><tr>
      <th scope="col">Session</th><th scope="col">Agent</th><th scope="col">Technician</th>
      <th scope="col">Reason</th><th scope="col">Opened</th><th scope="col">Outcome</th><th scope="col">In the terminal</th></tr></thead>
    <tbody>${s.result.sessions.map((x) => html`<tr data-session=${x.id}>
      <td>${sessionLink(x.id, x.id.slice(0, 12))}</td><td>${x.agent_id || "—"}</td><td>${x.technician}</td>
      <td>${x.reason}${x.ticket ? html` <span class="muted">(${x.ticket})</span>` : nothing}</td>
      <td>${when(x.created_at)}</td><td>${x.outcome || html`<span class="muted">—</span>`}</td>
      <td>${x.hits.length ? x.hits.slice(0, 5).map((h) => html`<a class="hit" data-hit=${h.recording}
          href="#/timeline/${enc(x.id)}/${enc(h.recording)}/${h.at}">“${h.word}” at ${second(h.at)}</a> `) : nothing}</td>
    </tr>`)}</tbody></table>
    ${s.result.truncated ? html`<p class="muted">More sessions match: narrow the search.</p>` : nothing}`;
}

export function searchView(app) {
  appRef = app;
  if (s.visit !== app.visit) {
    s.visit = app.visit;
  }
  const submit = (ev) => {
    ev.preventDefault();
    s.filters = Object.fromEntries(new FormData(ev.target).entries());
    run();
  };
  const f = s.filters;
  return html`<section aria-labelledby="search-title">
    <h1 id="search-title">Find sessions</h1>
    <form class="filters" @submit=${submit} aria-label="Find sessions" role="search">
      <label>Typed or printed in a terminal <input name="text" maxlength="200" placeholder="shred, passwd*"
        .value=${f.text || ""}></label>
      <label>Agent <input name="agent" maxlength="64" placeholder="ag_…" .value=${f.agent || ""}></label>
      <label>Technician <input name="technician" maxlength="64" .value=${f.technician || ""}></label>
      <label>Ticket <input name="ticket" maxlength="128" .value=${f.ticket || ""}></label>
      <label>Capability <select name="capability">
        ${["", "shell", "cobrowse", "fix", "diagnostics", "info"].map((c) => html`<option value=${c}
          ?selected=${f.capability === c}>${c || "any"}</option>`)}</select></label>
      <label>Outcome <select name="outcome">
        ${[["", "any"], ["resolved", "resolved"], ["not_resolved", "not resolved"], ["escalated", "escalated"]]
          .map(([v, t]) => html`<option value=${v} ?selected=${f.outcome === v}>${t}</option>`)}</select></label>
      <label>From <input name="since" type="datetime-local" .value=${f.since || ""}></label>
      <label>Until <input name="until" type="datetime-local" .value=${f.until || ""}></label>
      <button type="submit" ?disabled=${s.busy}>${s.busy ? "Searching…" : "Search"}</button>
    </form>
    ${resultsView()}
  </section>`;
}
