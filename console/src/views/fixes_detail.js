// One fix (#/fixes/ID): its versions; one version's manifest, scripts, approvals and
// signatures; the diff between two versions; approve (never one's own version: the
// relay refuses it too, and audits the attempt), revoke, submit a new version (the
// shown one's TOML with the version bumped), and a bulk run over a group
// (./fixes_bulk.js). Controls show only for the permissions the user holds; the relay
// checks every request again.

import { html, nothing } from "lit-html";
import { get, post, query } from "../api.js";
import { when } from "../format.js";
import { bulkView, resetBulk } from "./fixes_bulk.js";
import { statusBadge, submitToml, words } from "./fixes_common.js";
import { manifestToml } from "./fixes_toml.js";

const fresh = () => ({
  id: null, visit: -1, fix: null, error: "", version: null, ver: null, verError: "",
  message: "", actionError: "", diff: null, draft: null, submitError: "", submitted: null,
});
let d = fresh();
let appRef = null;

async function load(id, keepVersion = false) {
  try {
    const fix = await get(`/fixes/${encodeURIComponent(id)}`);
    if (d.id !== id) return;
    d.fix = fix;
    d.error = "";
    const versions = (fix.versions || []).map((v) => v.version);
    if (!keepVersion || !versions.includes(d.version)) {
      await show(id, versions.length ? Math.max(...versions) : null);
      return;
    }
    await show(id, d.version);
    return;
  } catch (err) {
    if (d.id === id) d.error = words(err);
  }
  appRef?.refresh();
}

async function show(id, version) {
  d.version = version;
  d.ver = null;
  d.verError = "";
  d.draft = null;
  resetBulk();
  appRef?.refresh();
  if (version == null) return;
  try {
    const ver = await get(`/fixes/${encodeURIComponent(id)}/${encodeURIComponent(version)}`);
    if (d.id !== id || d.version !== version) return;
    d.ver = ver;
  } catch (err) {
    d.verError = words(err);
  }
  appRef?.refresh();
}

async function act(fn, ok) {
  d.message = "";
  d.actionError = "";
  appRef?.refresh();
  try {
    await fn();
    d.message = ok;
    await load(d.id, true);
  } catch (err) {
    d.actionError = words(err);
    appRef?.refresh();
  }
}

function versionsTable() {
  const versions = [...(d.fix?.versions || [])].sort((a, b) => b.version - a.version);
  if (!versions.length) return html`<p class="muted">No version.</p>`;
  return html`<table class="versions" aria-label="Versions"><thead><tr><th scope="col">Version</th>
      <th scope="col">Status</th><th scope="col">Author</th><th scope="col">Submitted</th>
      <th scope="col">Approvals</th><th scope="col">Digest</th></tr></thead>
    <tbody>${versions.map((v) => html`<tr data-version=${v.version} class=${v.version === d.version ? "selected" : ""}>
      <td><button type="button" class="small" aria-pressed=${v.version === d.version ? "true" : "false"}
        @click=${() => show(d.id, v.version)}>Version ${v.version}</button></td>
      <td>${statusBadge(v.status)}</td><td>${v.author}</td><td>${when(v.submitted_at)}</td>
      <td>${(v.approvals || []).map((a) => html`<div>${a.approver} <small class="muted">(${a.kind})</small></div>`)}</td>
      <td><code title=${v.digest}>${String(v.digest || "").slice(0, 19)}</code></td></tr>`)}</tbody></table>`;
}

function paramsTable(m) {
  const raw = m.parameters || {};
  const list = Array.isArray(raw) ? raw : Object.entries(raw).map(([name, p]) => ({ ...p, name }));
  if (!list.length) return html`<p class="muted">No parameters.</p>`;
  return html`<table class="params" aria-label="Parameters"><thead><tr><th scope="col">Name</th>
      <th scope="col">Type</th><th scope="col">Required</th><th scope="col">Default</th>
      <th scope="col">Allowed</th><th scope="col">Description</th></tr></thead>
    <tbody>${list.map((p) => html`<tr><td><code>${p.name}</code></td><td>${p.type}</td>
      <td>${p.required ? "yes" : "no"}</td><td>${p.default != null ? String(p.default) : "—"}</td>
      <td>${[p.enum?.length ? `one of ${p.enum.join(", ")}` : "",
        p.pattern ? `form ${p.pattern}` : "",
        p.type === "string" ? `${p.min_length ?? 0}–${p.max_length ?? 256} chars` : "",
        p.type === "integer" && (p.min != null || p.max != null) ? `${p.min ?? "…"} to ${p.max ?? "…"}` : ""]
        .filter(Boolean).join("; ")}</td><td>${p.description || ""}</td></tr>`)}</tbody></table>`;
}

// The digest the approver reviewed goes with the approval, and the relay refuses it
// when the stored version is no longer that one (digest_mismatch). TRANSITIONAL: a relay
// from before that check takes no body on /approve ("400 bad_field: unknown fields");
// it is asked again without (it checks nothing more then, as before). Drop the second
// try once every relay takes the digest.
async function approveReviewed(id, version, digest) {
  const at = `/fixes/${encodeURIComponent(id)}/${encodeURIComponent(version)}/approve`;
  try {
    return await post(at, { digest });
  } catch (err) {
    if (err.status === 400 && err.code === "bad_field" && /unknown field/i.test(err.message)) return post(at, {});
    throw err;
  }
}

function approveControls(app, ver) {
  if (!app.can("fixes:approve")) return nothing;
  const me = app.me?.user?.username;
  const own = ver.author === me;
  const revoked = Boolean(ver.revoked) || ver.status === "revoked";
  const approve = () => act(() => approveReviewed(d.id, d.version, ver.digest),
    `Approved version ${d.version}: the relay signed it.`);
  const revoke = (ev) => {
    ev.preventDefault();
    const reason = String(new FormData(ev.target).get("reason") || "").trim();
    act(() => post(`/fixes/${encodeURIComponent(d.id)}/${d.version}/revoke`, { reason }),
      `Revoked version ${d.version}: agents are told, and refuse it from now on.`);
  };
  const addSignature = (ev) => {
    ev.preventDefault();
    const signature = String(new FormData(ev.target).get("signature") || "").trim();
    act(() => post(`/fixes/${encodeURIComponent(d.id)}/${d.version}/signatures`, { signature }),
      `Added the offline signature to version ${d.version}.`);
  };
  return html`<div class="approval actions">
    ${ver.status === "submitted" && !revoked ? html`<button type="button" id="approve-button"
        ?disabled=${own} aria-describedby=${own ? "approve-reason" : nothing} @click=${approve}>Approve version ${d.version}</button>
      ${own ? html`<span class="muted" id="approve-reason">You submitted this version: a different person
        must approve it (four eyes).</span>` : nothing}` : nothing}
    ${!revoked ? html`<details class="offline-signature"><summary>Add an offline approver's signature</summary>
      <form class="stack" aria-label="Add an offline signature" @submit=${addSignature}>
        <label for="fix-signature">Signature (armored SSH signature, namespace backline-fix, made with
          <code>backline-relay fix sign --key FILE ${d.id}@${d.version}</code> or <code>ssh-keygen -Y sign</code>)
          <textarea id="fix-signature" name="signature" rows="6" cols="72" spellcheck="false" maxlength="8192"
            required></textarea></label>
        <button type="submit">Add signature</button></form></details>` : nothing}
    ${!revoked ? html`<form class="inline" aria-label="Revoke this version" @submit=${revoke}>
      <label>Reason for revoking <input name="reason" maxlength="500" required placeholder="why it must not run"></label>
      <button type="submit" class="danger">Revoke version ${d.version}</button></form>` : nothing}
  </div>`;
}

function versionView(app) {
  if (d.verError) return html`<p class="error" role="alert">${d.verError}</p>`;
  const ver = d.ver;
  if (!ver) return d.version == null ? nothing : html`<p class="muted">Loading version ${d.version}…</p>`;
  const m = ver.manifest || {};
  return html`<div class="card fix-version" id="fix-version" data-version=${m.version}>
    <h2>${m.title} <code>${m.id}@${m.version}</code> ${statusBadge(ver.status)}</h2>
    ${ver.revoked ? html`<p class="error" id="revoked-note">Revoked by ${ver.revoked.by} on
      ${when(ver.revoked.at)}: ${ver.revoked.reason}</p>` : nothing}
    <dl class="facts">
      <dt>Digest</dt><dd><code class="details" id="fix-digest">${ver.digest}</code></dd>
      <dt>Author</dt><dd id="fix-author">${ver.author}</dd>
      <dt>Submitted</dt><dd>${when(ver.submitted_at)}</dd>
      <dt>Risk</dt><dd><span class="badge risk-${m.risk}">${m.risk}</span></dd>
      <dt>Customer consent</dt><dd>${m.consent ? "asked before it runs" : "not asked"}</dd>
      <dt>Platforms</dt><dd>${(m.platforms || []).join(", ")}</dd>
      <dt>Interpreter</dt><dd>${m.interpreter}</dd>
      <dt>Timeout</dt><dd>${m.timeout_s} s</dd>
      <dt>Addresses</dt><dd>${m.rules?.length ? m.rules.map((r) => html`<code>${r}</code> `) : "—"}</dd>
      <dt>Approvals</dt><dd id="fix-approvals">${(ver.approvals || []).length
        ? (ver.approvals || []).map((a) => html`<div>${a.approver} (${a.kind}) ${when(a.at)} <code>${a.key}</code></div>`)
        : "none yet"}</dd>
      <dt>Signatures</dt><dd>${(ver.signatures || []).length}</dd>
    </dl>
    ${m.description ? html`<p class="description">${m.description}</p>` : nothing}
    <h3>Parameters</h3>${paramsTable(m)}
    <h3>Script</h3><pre class="script" id="fix-script">${m.script}</pre>
    ${m.verify ? html`<h3>Verify script</h3><pre class="script" id="fix-verify-script">${m.verify}</pre>` : nothing}
    ${(ver.signatures || []).length ? html`<details><summary>Signatures (SSH, namespace backline-fix)</summary>
      ${ver.signatures.map((sig) => html`<pre class="script">${sig}</pre>`)}</details>` : nothing}
    ${approveControls(app, ver)}
    ${bulkView(app, d.id, ver)}
  </div>`;
}

function diffView() {
  const versions = [...(d.fix?.versions || [])].map((v) => v.version).sort((a, b) => a - b);
  if (versions.length < 2) return nothing;
  const run = async (ev) => {
    ev.preventDefault();
    const f = new FormData(ev.target);
    const from = Number(f.get("from"));
    const to = Number(f.get("to"));
    d.diff = { from, to, text: null, error: "" };
    appRef?.refresh();
    try {
      const r = await get(`/fixes/${encodeURIComponent(d.id)}/diff${query({ from, to })}`);
      d.diff.text = String(r.diff ?? "");
    } catch (err) {
      d.diff.error = words(err);
    }
    appRef?.refresh();
  };
  const line = (l) => {
    const cls = l.startsWith("+++") || l.startsWith("---") ? "head" : l.startsWith("+") ? "add"
      : l.startsWith("-") ? "del" : l.startsWith("@@") ? "hunk" : "";
    return html`<span class=${cls}>${l}\n</span>`;
  };
  return html`<h2>Compare versions</h2>
    <form class="inline" aria-label="Compare versions" @submit=${run}>
      <label>From <select name="from">${versions.map((v, i) => html`<option value=${v} ?selected=${i === versions.length - 2}>${v}</option>`)}</select></label>
      <label>To <select name="to">${versions.map((v, i) => html`<option value=${v} ?selected=${i === versions.length - 1}>${v}</option>`)}</select></label>
      <button type="submit">Show the diff</button>
    </form>
    ${d.diff?.error ? html`<p class="error" role="alert">${d.diff.error}</p>` : nothing}
    ${d.diff?.text === "" ? html`<p class="muted">No difference.</p>` : nothing}
    ${d.diff?.text ? html`<pre class="diff" id="fix-diff" aria-label="Diff from ${d.diff.from} to ${d.diff.to}">${d.diff.text.split("\n").map(line)}</pre>` : nothing}`;
}

function newVersionView(app) {
  if (!app.can("fixes:author") || !d.ver?.manifest) return nothing;
  const versions = (d.fix?.versions || []).map((v) => v.version);
  const next = Math.max(0, ...versions) + 1;
  if (d.draft === null) d.draft = manifestToml(d.ver.manifest, next);
  const submit = async (ev) => {
    ev.preventDefault();
    const text = String(new FormData(ev.target).get("manifest") || "");
    d.draft = text;
    d.submitted = await submitToml(text, (e) => { d.submitError = e; });
    if (d.submitted) {
      d.draft = null;
      await load(d.id);
    }
    appRef?.refresh();
  };
  return html`<details class="card submit" ?open=${Boolean(d.submitError)}>
    <summary><strong>Submit a new version</strong> <span class="muted">(starts from version ${d.version}; it needs its own approval)</span></summary>
    <form class="stack" aria-label="Submit a new version" @submit=${submit}>
      <label for="fix-new-toml">Manifest (TOML)
        <textarea id="fix-new-toml" name="manifest" rows="18" cols="90" spellcheck="false"
          maxlength="300000" .value=${d.draft}></textarea></label>
      <button type="submit">Submit for approval</button>
    </form>
    ${d.submitError ? html`<p class="error" role="alert" id="new-version-error">${d.submitError}</p>` : nothing}
  </details>
  ${d.submitted ? html`<p class="notice" role="status">Submitted <code>${d.submitted.id}@${d.submitted.version}</code>
    (${d.submitted.status}).</p>` : nothing}`;
}

export function fixDetailView(app, id) {
  appRef = app;
  if (d.id !== id || d.visit !== app.visit) {
    const same = d.id === id;
    if (!same) d = fresh();
    d.id = id;
    d.visit = app.visit;
    load(id, same);
  }
  if (d.error) {
    return html`<section class="empty"><h1>Fix</h1><p class="error" role="alert">${d.error}</p>
      <a href="#/fixes">Back to the fixes</a></section>`;
  }
  if (!d.fix) return html`<p class="muted">Loading the fix…</p>`;
  return html`<section aria-labelledby="fix-title" class="fix-page">
    <p><a href="#/fixes">← Fixes</a></p>
    <h1 id="fix-title">Fix <code>${d.id}</code></h1>
    ${versionsTable()}
    ${d.message ? html`<p class="notice" role="status" id="fix-message">${d.message}</p>` : nothing}
    ${d.actionError ? html`<p class="error" role="alert" id="fix-action-error">${d.actionError}</p>` : nothing}
    ${versionView(app)}
    ${diffView()}
    ${newVersionView(app)}
  </section>`;
}
