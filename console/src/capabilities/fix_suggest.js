// "Suggested fixes" under a diagnostics finding: the approved, unrevoked fixes whose
// manifest says they address the finding's rule (GET /api/v1/fixes/suggested?rules=),
// asked once per set of findings, each with a button that opens it in the session's
// Fix panel with the finding attached (so the relay re-runs the finding's section
// afterwards and says whether it cleared). A module of its own, not the panel's, so
// that the diagnostics panel can use it without registering (or reordering) the
// fix panel.

import { html, nothing } from "lit-html";
import { get, query } from "../api.js";

const MAX_RULES = 64;
const s = { key: null, fixes: null, error: "", refresh: () => {} };
let picker = null;

// The fix panel says what to do when a suggested fix is chosen.
export function onPickSuggested(fn) {
  picker = fn;
}

export function resetSuggestions() {
  s.key = null;
  s.fixes = null;
  s.error = "";
}

async function load(key) {
  try {
    const r = await get(`/fixes/suggested${query({ rules: key })}`);
    if (s.key !== key) return;
    s.fixes = Array.isArray(r?.fixes) ? r.fixes : [];
    s.error = "";
  } catch (err) {
    if (s.key !== key) return;
    s.fixes = [];
    s.error = err.status === 403 ? "" : `Suggested fixes could not be loaded: ${err.message}`;
  }
  s.refresh();
}

// The version a suggestion offers: the relay names the approved one.
export function versionOf(fix) {
  return fix.version ?? fix.approved?.version ?? fix.latest?.version;
}

// For the diagnostics panel: a function rendering the suggestions of one finding.
// Nothing at all when the session was not granted the fix capability or the user may
// not read fixes.
export function suggestions(ctx, findings) {
  if (!(ctx.session.capabilities || []).includes("fix") || !ctx.app.can("fixes:read")) return null;
  s.refresh = ctx.refresh;
  const rules = [...new Set((findings || []).map((f) => f.rule_id))].sort().slice(0, MAX_RULES);
  const key = rules.join(",");
  if (!key) return null;
  if (s.key !== key) {
    s.key = key;
    s.fixes = null;
    load(key);
  }
  return (f) => {
    if (s.fixes === null) return html`<p class="muted suggested">Looking for suggested fixes…</p>`;
    const mine = s.fixes.filter((x) => Array.isArray(x.rules) && x.rules.includes(f.rule_id));
    if (!mine.length) return s.error ? html`<p class="muted suggested">${s.error}</p>` : nothing;
    const mayRun = ctx.ready && ctx.mayUse && ctx.app.can("fixes:run");
    return html`<div class="suggested" aria-label="Suggested fixes for ${f.rule_id}">
      <strong>Suggested fixes</strong>
      <ul>${mine.map((x) => html`<li data-fix=${x.id}>
        <span class="badge risk-${x.risk}">${x.risk} risk</span> ${x.title}
        <code>${x.id}@${versionOf(x)}</code>
        <button type="button" class="small" ?disabled=${!mayRun}
          @click=${() => picker?.(ctx, x.id, versionOf(x), f.rule_id)}>Run fix…</button></li>`)}</ul>
    </div>`;
  };
}
