// The audit trail: filters, keyset paging (fast at any depth), verify, export. Each
// event's details are readable fields, linked to the session, agent or fix they name
// (./event_fields.js); the raw event is one click away.

import { html, nothing } from "lit-html";
import { get, query } from "../api.js";
import { onLive } from "../live.js";
import { toUnix, when } from "../format.js";
import { actorView, detailFields, rawEvent, targetView } from "./event_fields.js";

const s = {
  visit: -1, events: null, error: "", filters: {}, before: null, history: [], next: null,
  verify: null, verifying: false, fresh: 0,
};
let appRef = null;
const LIMIT = 50;

function params(before) {
  const f = s.filters;
  return {
    actor: f.actor, action: f.action, target: f.target,
    since: toUnix(f.since), until: toUnix(f.until), before, limit: LIMIT,
  };
}

async function load(before) {
  try {
    const r = await get(`/audit${query(params(before))}`);
    s.events = r.events;
    s.next = r.next_before;
    s.before = before;
    s.error = "";
    s.fresh = 0;
  } catch (err) {
    s.error = err.message;
  }
  appRef?.refresh();
}

onLive((event) => {
  if (event.type === "audit" && s.events && appRef?.me) {
    s.fresh += 1; // new events arrived; offered as a reload, not shifted under the reader
    appRef.refresh();
  }
});

async function verify() {
  s.verifying = true;
  appRef?.refresh();
  try {
    s.verify = await get("/audit/verify");
  } catch (err) {
    s.verify = { ok: false, summary: `Could not verify: ${err.message}` };
  }
  s.verifying = false;
  appRef?.refresh();
}

export function auditView(app) {
  appRef = app;
  if (s.visit !== app.visit) {
    s.visit = app.visit;
    s.history = [];
    load(null);
  }
  const apply = (ev) => {
    ev.preventDefault();
    s.filters = Object.fromEntries(new FormData(ev.target).entries());
    s.history = [];
    load(null);
  };
  const older = () => {
    s.history.push(s.before);
    load(s.next);
  };
  const newer = () => load(s.history.pop() ?? null);
  const exportHref = `/api/v1/audit/export${query({ format: "jsonl", since: toUnix(s.filters.since) })}`;
  let table;
  if (s.error) table = html`<p class="error" role="alert">Could not load the trail: ${s.error}</p>`;
  else if (s.events === null) table = html`<p class="muted">Loading…</p>`;
  else if (s.events.length === 0) table = html`<p class="empty">No events match these filters.</p>`;
  else {
    table = html`<table class="audit"><thead><tr><th scope="col">#</th><th scope="col">Time</th>
      <th scope="col">Actor</th><th scope="col">Action</th><th scope="col">Target</th>
      <th scope="col">Details</th></tr></thead>
      <tbody>${s.events.map((e) => html`<tr class=${/refused|failed|rate_limited/.test(e.action) ? "refusal" : ""}>
        <td>${e.seq}</td><td>${when(e.time)}</td><td>${actorView(e.actor)}</td><td><code>${e.action}</code></td>
        <td>${targetView(e.target, e.details)}</td><td>${detailFields(e.details)}${rawEvent(e)}</td>
      </tr>`)}</tbody></table>`;
  }
  const v = s.verify;
  return html`<section aria-labelledby="audit-title">
    <div class="bar"><h1 id="audit-title">Audit trail</h1>
      <div class="actions">
        <button type="button" @click=${verify} ?disabled=${s.verifying}>
          ${s.verifying ? "Verifying…" : "Verify trail"}</button>
        <a class="button" href=${exportHref} download>Export JSON lines</a>
      </div></div>
    ${v ? html`<p class="verify ${v.ok ? "ok" : "broken"}" role="status" id="verify-result">
      ${v.summary}</p>` : nothing}
    <form class="filters" @submit=${apply} aria-label="Filter events">
      <label>Actor <input name="actor" placeholder="user:alice" .value=${s.filters.actor || ""}></label>
      <label>Action <input name="action" placeholder="auth.login" .value=${s.filters.action || ""}></label>
      <label>Target <input name="target" placeholder="agent:ag_…" .value=${s.filters.target || ""}></label>
      <label>From <input name="since" type="datetime-local" .value=${s.filters.since || ""}></label>
      <label>Until <input name="until" type="datetime-local" .value=${s.filters.until || ""}></label>
      <button type="submit">Apply</button>
    </form>
    ${s.fresh ? html`<p class="notice"><button type="button" class="link" @click=${() => { s.history = []; load(null); }}>
      ${s.fresh} new event${s.fresh === 1 ? "" : "s"} — show newest</button></p>` : nothing}
    ${table}
    <nav class="pager" aria-label="Pages">
      <button type="button" @click=${newer} ?disabled=${s.history.length === 0 && !s.before}>Newer</button>
      <button type="button" @click=${older} ?disabled=${!s.next}>Older</button>
    </nav>
  </section>`;
}
