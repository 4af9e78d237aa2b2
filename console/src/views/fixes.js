// The Fixes page: the catalogue of fixes (#/fixes) and one fix (#/fixes/ID, in
// ./fixes_detail.js: its versions, a version's manifest and scripts, the diff between
// two versions, approval, revocation, a bulk run over a group). Submitting a new fix
// or version is a TOML manifest pasted here; the relay parses and checks it, and a
// version is immutable once submitted.

import { html, nothing } from "lit-html";
import { get } from "../api.js";
import { statusBadge, submitToml, words } from "./fixes_common.js";
import { fixDetailView } from "./fixes_detail.js";
import { EXAMPLE } from "./fixes_toml.js";

const s = { visit: -1, fixes: null, error: "", submitError: "", submitted: null, draft: EXAMPLE };
let appRef = null;

async function load() {
  try {
    s.fixes = (await get("/fixes")).fixes || [];
    s.error = "";
  } catch (err) {
    s.error = words(err);
  }
  appRef?.refresh();
}

function catalogue() {
  if (s.error) return html`<p class="error" role="alert">${s.error} <button type="button" @click=${load}>Try again</button></p>`;
  if (!s.fixes) return html`<p class="muted">Loading…</p>`;
  if (!s.fixes.length) return html`<p class="empty">No fix in the catalogue yet.</p>`;
  return html`<table class="fixes" aria-label="Catalogue"><thead><tr><th scope="col">Fix</th>
      <th scope="col">Risk</th><th scope="col">Platforms</th><th scope="col">Addresses</th>
      <th scope="col">Latest version</th></tr></thead>
    <tbody>${s.fixes.map((f) => html`<tr data-fix=${f.id}>
      <td><a href="#/fixes/${encodeURIComponent(f.id)}">${f.title}</a> <code>${f.id}</code></td>
      <td><span class="badge risk-${f.risk}">${f.risk}</span></td>
      <td>${(f.platforms || []).join(", ")}</td>
      <td>${(f.rules || []).map((r) => html`<code>${r}</code> `)}</td>
      <td>${f.latest ? html`${f.latest.version} ${statusBadge(f.latest.status)}` : "—"}</td></tr>`)}</tbody></table>`;
}

function submitForm(app) {
  if (!app.can("fixes:author")) return nothing;
  const submit = async (ev) => {
    ev.preventDefault();
    const text = String(new FormData(ev.target).get("manifest") || "");
    s.draft = text;
    s.submitted = await submitToml(text, (e) => { s.submitError = e; });
    if (s.submitted) load();
    app.refresh();
  };
  return html`<details class="card submit" ?open=${Boolean(s.submitError)}>
    <summary><strong>Submit a fix</strong></summary>
    <form class="stack" aria-label="Submit a fix" @submit=${submit}>
      <label for="fix-toml">Manifest (TOML, the script inline)
        <textarea id="fix-toml" name="manifest" rows="18" cols="90" spellcheck="false"
          maxlength="300000" .value=${s.draft}></textarea></label>
      <button type="submit">Submit for approval</button>
    </form>
    ${s.submitError ? html`<p class="error" role="alert" id="submit-error">${s.submitError}</p>` : nothing}
  </details>
  ${s.submitted ? html`<p class="notice" role="status" id="submitted">Submitted
    <a href="#/fixes/${encodeURIComponent(s.submitted.id)}"><code>${s.submitted.id}@${s.submitted.version}</code></a>
    (${s.submitted.status}); another person must approve it before it can run.</p>` : nothing}`;
}

export function fixesView(app, id) {
  appRef = app;
  if (id) return fixDetailView(app, id);
  if (s.visit !== app.visit) {
    s.visit = app.visit;
    s.submitted = null;
    load();
  }
  return html`<section aria-labelledby="fixes-title">
    <h1 id="fixes-title">Fixes</h1>
    <p class="muted">Scripts that run on a customer's machine only once a second person approved
      that exact version; the agent checks the signature itself.</p>
    ${submitForm(app)}
    ${catalogue()}
  </section>`;
}
