// A bulk run: one approved fix version on every online agent of a group, at most
// `concurrency` at a time (POST /api/v1/fixes/{id}/{version}/bulk), then its results
// table, polled (GET /api/v1/fix-bulks/{id}) until the relay says it is done: one row
// per agent with its status, exit status, verify verdict, run id or error. The relay
// opens each agent's session and channel itself; the page only asks and shows.

import { html, nothing } from "lit-html";
import { keyed } from "lit-html/directives/keyed.js";
import { get, post } from "../api.js";
import { paramFields, readParams } from "../capabilities/fix_params.js";
import { words } from "./fixes_common.js";

const POLL_MS = 1000;
const MAX_POLL_ERRORS = 5;

const fresh = () => ({
  groups: null, groupsError: "", errors: {}, error: "", bulkId: null, bulk: null,
  timer: null, pollErrors: 0, starting: false, token: 0,
});
let b = fresh();
let redraw = () => {};

export function resetBulk() {
  clearTimeout(b.timer);
  b = { ...fresh(), groups: b.groups };
}

async function loadGroups() {
  try {
    b.groups = ((await get("/groups")).groups || []).map((g) => g.name);
    b.groupsError = "";
  } catch (err) {
    b.groups = [];
    b.groupsError = words(err);
  }
  redraw();
}

const finished = (bulk) => bulk && (["done", "ended", "finished", "failed", "cancelled"].includes(bulk.status)
  || (Number.isFinite(bulk.total) && bulk.done >= bulk.total && bulk.status !== "running" && bulk.status !== "queued"));

async function poll(id, token) {
  if (b.token !== token) return;
  try {
    b.bulk = await get(`/fix-bulks/${encodeURIComponent(id)}`);
    b.pollErrors = 0;
    b.error = "";
  } catch (err) {
    b.pollErrors += 1;
    b.error = `The results could not be read: ${words(err)}`;
    if (err.status === 401 || err.status === 403 || err.status === 404 || b.pollErrors >= MAX_POLL_ERRORS) {
      redraw();
      return;
    }
  }
  redraw();
  if (b.token === token && !finished(b.bulk)) b.timer = setTimeout(() => poll(id, token), POLL_MS);
}

async function start(id, ver, ev) {
  ev.preventDefault();
  const form = ev.target;
  const { params, errors } = readParams(ver.manifest, form);
  b.errors = errors;
  const data = new FormData(form);
  const group = String(data.get("group") || "");
  const concurrency = Number(data.get("concurrency") || 4);
  if (!group) b.errors.__group = "Choose a group.";
  if (Object.keys(b.errors).length) {
    redraw();
    return;
  }
  clearTimeout(b.timer);
  b.token += 1;
  const token = b.token;
  b.starting = true;
  b.bulk = null;
  b.error = "";
  redraw();
  try {
    const r = await post(`/fixes/${encodeURIComponent(id)}/${encodeURIComponent(ver.manifest.version)}/bulk`,
      { group, params, concurrency });
    b.bulkId = r.bulk_id;
    poll(r.bulk_id, token);
  } catch (err) {
    b.error = words(err);
  } finally {
    b.starting = false;
    redraw();
  }
}

function resultsView() {
  const bulk = b.bulk;
  if (!bulk) return b.bulkId ? html`<p class="muted">Waiting for the first results…</p>` : nothing;
  const done = finished(bulk);
  return html`<div class="bulk-results" id="bulk-results" data-status=${bulk.status}>
    <p id="bulk-progress" role="status">${done ? "Finished" : "Running"}: ${bulk.done} of ${bulk.total} agents
      <span class="muted">(bulk <code>${b.bulkId}</code>, ${bulk.status})</span></p>
    ${bulk.total === 0 ? html`<p class="muted">No agent of this group was online.</p>` : nothing}
    <table class="bulk" aria-label="Bulk results"><thead><tr><th scope="col">Agent</th>
        <th scope="col">Status</th><th scope="col">Exit status</th><th scope="col">Verify</th>
        <th scope="col">Run</th><th scope="col">Error</th></tr></thead>
      <tbody>${(bulk.results || []).map((r) => html`<tr data-agent=${r.agent_id} data-status=${r.status}>
        <td>${r.hostname || "—"} <code class="muted">${r.agent_id}</code></td>
        <td>${r.status}</td>
        <td>${r.exit_status ?? "—"}</td>
        <td>${r.verify_passed === true ? html`<span class="verify ok">passed</span>`
          : r.verify_passed === false ? html`<span class="verify broken">failed</span>` : "—"}</td>
        <td>${r.run_id ? html`<a href="/api/v1/fix-runs/${encodeURIComponent(r.run_id)}/output" target="_blank"
          rel="noopener"><code>${r.run_id}</code></a>` : "—"}</td>
        <td>${r.error || ""}</td></tr>`)}</tbody></table>
  </div>`;
}

// The bulk form and results of one version (only an approved one runs).
export function bulkView(app, id, ver) {
  if (!app.can("fixes:run") || !app.can("agents:write") || ver.status !== "approved" || ver.revoked) return nothing;
  redraw = () => app.refresh();
  if (b.groups === null) {
    b.groups = [];
    loadGroups();
  }
  const running = b.starting || (b.bulk && !finished(b.bulk));
  return html`<h3>Bulk run</h3>
    ${keyed(`${id}@${ver.manifest.version}`, html`<form class="stack" aria-label="Bulk run" @submit=${(ev) => start(id, ver, ev)} novalidate>
      <div class="filters">
        <label>Group <select name="group">
          <option value="">choose a group…</option>
          ${b.groups.map((g) => html`<option value=${g}>${g}</option>`)}</select></label>
        <label>At once <input type="number" name="concurrency" min="1" max="64" value="4"></label>
      </div>
      ${b.errors.__group ? html`<p class="error field-error" role="alert">${b.errors.__group}</p>` : nothing}
      ${paramFields(ver.manifest, b.errors, "bulk-param")}
      <p class="actions"><button type="submit" ?disabled=${running}>Run on every online agent of the group</button></p>
    </form>`)}
    ${b.groupsError ? html`<p class="error" role="alert">${b.groupsError}</p>` : nothing}
    ${b.error ? html`<p class="error" role="alert" id="bulk-error">${b.error}</p>` : nothing}
    ${resultsView()}`;
}
