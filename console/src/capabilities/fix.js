// The fix panel: run one approved fix on the customer's machine. Pick a fix and an
// approved version (or come from a diagnostics finding's "Suggested fixes"), fill the
// parameter form generated from its manifest, and watch it run: the agent's checks,
// the live output, a marker where the output was cut, Cancel, how it ended, the verify
// script's verdict and, after a run from a finding, whether the finding cleared.
// Every value shown came from the relay or the customer's machine: shown as text.

import { html, nothing } from "lit-html";
import { keyed } from "lit-html/directives/keyed.js";
import { get, query } from "../api.js";
import { when } from "../format.js";
import { register } from "./registry.js";
import { paramFields, readParams } from "./fix_params.js";
import { endText, FixRun } from "./fix_run.js";
import { onPickSuggested, resetSuggestions } from "./fix_suggest.js";

const fresh = () => ({
  sessionId: null, catalogue: null, catalogueError: "", fixId: "", versions: null,
  version: null, detail: null, pickError: "", finding: null, errors: {}, run: null,
  history: null, historyError: "",
});
let s = fresh();
let redraw = () => {};

async function loadCatalogue() {
  try {
    s.catalogue = (await get("/fixes")).fixes || [];
    s.catalogueError = "";
  } catch (err) {
    s.catalogue = [];
    s.catalogueError = `The fixes could not be loaded: ${err.message}`;
  }
  redraw();
}

// The runs of this session as the relay recorded them (what ran: version, digest,
// parameters; how it ended), newest first.
async function loadHistory(sessionId) {
  try {
    const r = await get(`/fix-runs${query({ session: sessionId, limit: 20 })}`);
    if (s.sessionId !== sessionId) return;
    s.history = r.runs || [];
    s.historyError = "";
  } catch (err) {
    s.historyError = `The runs of this session could not be loaded: ${err.message}`;
  }
  redraw();
}

const approved = (v) => v.status === "approved";

async function pickFix(id, version = null) {
  if (s.run && !s.run.live) s.run = null; // the last run's output goes with its fix
  s.fixId = id;
  s.versions = null;
  s.version = null;
  s.detail = null;
  s.pickError = "";
  s.errors = {};
  redraw();
  if (!id) return;
  try {
    const r = await get(`/fixes/${encodeURIComponent(id)}`);
    if (s.fixId !== id) return;
    s.versions = (r.versions || []).filter(approved).sort((a, b) => b.version - a.version);
    if (!s.versions.length) {
      s.pickError = "No version of this fix is approved (and not revoked): it cannot run.";
      redraw();
      return;
    }
    const want = version != null && s.versions.some((v) => v.version === Number(version))
      ? Number(version) : s.versions[0].version;
    await pickVersion(id, want);
  } catch (err) {
    if (s.fixId === id) s.pickError = `This fix could not be loaded: ${err.message}`;
    redraw();
  }
}

async function pickVersion(id, version) {
  s.version = version;
  s.detail = null;
  s.errors = {};
  redraw();
  try {
    const d = await get(`/fixes/${encodeURIComponent(id)}/${encodeURIComponent(version)}`);
    if (s.fixId !== id || s.version !== version) return;
    s.detail = d;
    s.pickError = d.revoked ? "This version was revoked: the agent will refuse it." : "";
  } catch (err) {
    s.pickError = `This version could not be loaded: ${err.message}`;
  }
  redraw();
}

// From a finding's "Suggested fixes": this fix, that version, and the finding.
onPickSuggested((ctx, id, version, rule) => {
  s.finding = rule;
  if (s.catalogue === null) loadCatalogue();
  pickFix(id, version).then(() => {
    document.getElementById("panel-fix")?.scrollIntoView({ block: "start" });
    document.getElementById("fix-run-button")?.focus();
  });
  ctx.refresh();
});

function runFix(ctx, ev) {
  ev.preventDefault();
  const manifest = s.detail?.manifest;
  if (!manifest) return;
  const { params, errors } = readParams(manifest, ev.target);
  s.errors = errors;
  if (Object.keys(errors).length) {
    redraw();
    return;
  }
  s.run?.dispose();
  const run = new FixRun({
    sessionId: ctx.session.id, fix: `${manifest.id}@${manifest.version}`, params,
    finding: s.finding,
    onChange: () => {
      if (!run.live && !run.ws && !run.historyReloaded) { // over, and the socket closed
        run.historyReloaded = true;
        loadHistory(ctx.session.id);
      }
      redraw();
    },
  });
  s.run = run;
  run.start();
  redraw();
}

function pickerView(ctx) {
  if (s.catalogue === null) return html`<p class="muted">Loading the fixes…</p>`;
  if (s.catalogueError) return html`<p class="error" role="alert">${s.catalogueError}</p>`;
  if (!s.catalogue.length) return html`<p class="muted">No fix in the catalogue yet (see the <a href="#/fixes">Fixes</a> page).</p>`;
  const busy = s.run?.live;
  return html`<form class="inline" aria-label="Choose a fix" @submit=${(e) => e.preventDefault()}>
    <label>Fix <select id="fix-pick" ?disabled=${busy}
        @change=${(e) => { s.finding = null; pickFix(e.target.value); }}>
      <option value="" ?selected=${!s.fixId}>choose a fix…</option>
      ${s.catalogue.map((f) => html`<option value=${f.id} ?selected=${f.id === s.fixId}>${f.title} (${f.id})${
        f.latest?.status && f.latest.status !== "approved" ? ` — latest ${f.latest.status}` : ""}</option>`)}
    </select></label>
    ${s.versions?.length ? html`<label>Version <select id="fix-version" ?disabled=${busy}
        @change=${(e) => pickVersion(s.fixId, Number(e.target.value))}>
      ${s.versions.map((v) => html`<option value=${v.version} ?selected=${v.version === s.version}>${v.version} (approved)</option>`)}
    </select></label>` : nothing}
    <button type="button" class="small" ?disabled=${busy} @click=${loadCatalogue}>Reload the list</button>
  </form>`;
}

function manifestView(d) {
  const m = d.manifest;
  return html`<div class="fix-manifest" id="fix-manifest">
    <h3>${m.title} <code>${m.id}@${m.version}</code></h3>
    <p><span class="badge risk-${m.risk}">${m.risk} risk</span>
      ${m.consent ? html`<span class="badge info">the customer is asked first</span>` : nothing}
      <span class="muted">${(m.platforms || []).join(", ")} · ${m.interpreter} · timeout ${m.timeout_s} s</span></p>
    ${m.description ? html`<p class="description">${m.description}</p>` : nothing}
    <p class="muted">Digest <code class="details">${d.digest}</code></p>
    <details><summary>Script</summary><pre class="script">${m.script}</pre>
      ${m.verify ? html`<p class="muted">Verify script</p><pre class="script">${m.verify}</pre>` : nothing}</details>
  </div>`;
}

function formView(ctx) {
  const d = s.detail;
  if (!d?.manifest) return nothing;
  const busy = s.run?.live;
  const mayRun = ctx.ready && ctx.mayUse && ctx.app.can("fixes:run");
  return html`${manifestView(d)}
    ${s.finding ? html`<p class="notice" id="fix-finding">From the finding <code>${s.finding}</code>: its
      diagnostics section is checked again after the run.
      <button type="button" class="small" @click=${() => { s.finding = null; redraw(); }}>Detach</button></p>` : nothing}
    ${keyed(`${d.manifest.id}@${d.manifest.version}`, html`<form class="stack fix-run-form" aria-label="Run the fix"
        @submit=${(ev) => runFix(ctx, ev)} novalidate>
      ${paramFields(d.manifest, s.errors)}
      <p class="actions"><button type="submit" id="fix-run-button" ?disabled=${busy || !mayRun || Boolean(d.revoked)}>Run fix</button>
        ${!ctx.app.can("fixes:run") ? html`<span class="muted">Your role may not run fixes.</span>` : nothing}</p>
    </form>`)}`;
}

const STATE_TEXT = {
  connecting: "Connecting…",
  checking: "Sent: the agent is checking the signature, the digest, revocation, platform and parameters…",
  running: "Running",
  ended: "Ended",
  refused: "Refused",
  failed: "Failed",
};

function runView() {
  const r = s.run;
  if (!r) return nothing;
  const end = r.end;
  return html`<div class="fix-run run" aria-live="polite" data-state=${r.state}>
    <div class="term-bar">
      <span id="fix-state" class="conn ${r.state}" role="status">${r.state === "checking" && r.checked
        ? "Checked by the agent: waiting for the start (the customer may be asked)…" : STATE_TEXT[r.state] || r.state}${
        r.state === "running" && r.cancelRequested ? " (cancelling…)" : ""}</span>
      ${r.live ? html`<button type="button" class="danger" id="fix-cancel" ?disabled=${r.cancelRequested}
        @click=${() => r.cancel()}>Cancel</button>` : nothing}
      ${r.runId ? html`<span class="muted">Run <code id="fix-run-id">${r.runId}</code></span>` : nothing}
      ${r.checked ? html`<span class="muted" id="fix-checked">Checked by the agent: signed by
        ${r.checked.signers.map((k) => html`<code>${k}</code> `)}</span>` : nothing}
      ${r.consent ? html`<span class="badge info">customer: ${r.consent}</span>` : nothing}
      ${r.cut ? html`<span class="badge warning" id="fix-cut">Output cut at ${r.cut.kept_bytes} bytes</span>` : nothing}
    </div>
    ${r.error ? html`<p class="error" role="alert" id="fix-error">${r.error}</p>` : nothing}
    ${r.state !== "refused" ? r.host : nothing}
    ${end ? html`<p id="fix-end" class=${end.exit_status === 0 && !end.cancelled && !end.timed_out ? "notice" : "error"}>${endText(end)}
      <span class="muted">${end.output_bytes} bytes of output, ${end.kept_bytes} kept
        (SHA-256 <code>${String(end.output_sha256 || "").slice(0, 16)}</code>)</span>
      ${r.runId ? html` <a href="/api/v1/fix-runs/${encodeURIComponent(r.runId)}/output" target="_blank"
        rel="noopener">Kept output</a>` : nothing}</p>` : nothing}
    ${r.verify ? html`<div id="fix-verify"><p class=${r.verify.passed ? "verify ok" : "verify broken"}>${r.verify.passed
        ? "Verify passed: the fix's own check says it worked."
        : `Verify failed (exit status ${r.verify.exit_status}): the fix's own check says it did not work.`}</p>
      ${r.verify.text ? html`<pre class="evidence">${r.verify.text}</pre>` : nothing}</div>` : nothing}
    ${r.finding && end ? html`<p id="fix-recheck" class=${r.recheck?.cleared ? "verify ok" : r.recheck?.cleared === false ? "verify broken" : "muted"}>${
      !r.recheck ? html`<span class="muted">Checking the finding <code>${r.finding}</code> again…</span>`
        : r.recheck.missing ? "The relay did not say whether the finding cleared."
        : r.recheck.cleared === null ? "The relay could not tell whether the finding cleared (its diagnostics did not run again)."
        : r.recheck.cleared ? html`Cleared: the finding <code>${r.finding}</code> is gone.`
        : html`Not cleared: the finding <code>${r.finding}</code> is still there.`}</p>` : nothing}
  </div>`;
}

function historyView() {
  if (s.historyError) return html`<p class="error" role="alert">${s.historyError}</p>`;
  if (!s.history?.length) return nothing;
  return html`<details class="fix-history"><summary>Runs in this session (${s.history.length})</summary>
    <table class="fix-runs" aria-label="Runs in this session"><thead><tr><th scope="col">Started</th>
      <th scope="col">Fix</th><th scope="col">By</th><th scope="col">Status</th><th scope="col">Exit</th>
      <th scope="col">Verify</th><th scope="col">Finding</th><th scope="col">Output</th></tr></thead>
    <tbody>${s.history.map((r) => html`<tr data-run=${r.id}>
      <td>${when(r.started_at)}</td>
      <td><code title=${r.digest}>${r.fix_id}@${r.version}</code></td><td>${r.technician}</td>
      <td>${r.status}${r.refused_reason ? ` (${r.refused_reason})` : ""}${r.cancelled ? " (cancelled)" : ""}${r.timed_out ? " (timed out)" : ""}</td>
      <td>${r.exit_status ?? "—"}</td>
      <td>${r.verify_passed === true ? "passed" : r.verify_passed === false ? "failed" : "—"}</td>
      <td>${r.finding ? html`<code>${r.finding}</code> ${r.cleared === true ? "cleared" : r.cleared === false ? "not cleared" : ""}` : "—"}</td>
      <td>${r.kept_bytes != null ? html`<a href="/api/v1/fix-runs/${encodeURIComponent(r.id)}/output" target="_blank"
        rel="noopener">${r.kept_bytes} bytes</a>` : "—"}</td></tr>`)}</tbody></table></details>`;
}

register({
  name: "fix",
  title: "Fixes",
  reset() {
    s.run?.dispose();
    s = fresh();
    resetSuggestions();
  },
  view(ctx) {
    redraw = ctx.refresh;
    if (s.sessionId !== ctx.session.id) {
      s.sessionId = ctx.session.id;
      if (ctx.app.can("fixes:read")) {
        loadCatalogue();
        loadHistory(ctx.session.id);
      }
    }
    return html`<section class="panel card" data-capability="fix" aria-labelledby="panel-fix">
      <h2 id="panel-fix">Fixes</h2>
      ${!ctx.app.can("fixes:read") ? html`<p class="muted">Your role may not see fixes.</p>` : html`
        <p class="muted">Runs one approved fix on the customer's machine. The agent checks the
          approval signature, the script's digest, revocation, platform and parameters itself
          before anything runs.</p>
        ${pickerView(ctx)}
        ${s.pickError ? html`<p class="error" role="alert">${s.pickError}</p>` : nothing}
        ${formView(ctx)}
        ${runView()}
        ${historyView()}`}
    </section>`;
  },
});
