// Stored diagnostics reports of one agent, and two of them side by side.

import { html, nothing } from "lit-html";
import { get, query } from "../api.js";
import { when } from "../format.js";
import { downloadJson, findingsView, sortFindings } from "./report.js";

const s = { visit: -1, agent: null, list: null, error: "", left: null, right: null };
let appRef = null;

async function load(agentId) {
  s.agent = agentId;
  try {
    s.list = (await get(`/agents/${encodeURIComponent(agentId)}/reports${query({ limit: 50 })}`)).reports;
    s.error = "";
  } catch (err) {
    s.error = err.message;
  }
  appRef?.refresh();
}

async function pick(side, id) {
  s[side] = id ? await get(`/reports/${encodeURIComponent(id)}`) : null;
  appRef?.refresh();
}

function compare(a, b) {
  const names = [...new Set([...a.sections, ...b.sections].map((x) => x.name))];
  const byName = (r) => Object.fromEntries(r.sections.map((x) => [x.name, x]));
  const left = byName(a);
  const right = byName(b);
  const fa = new Set(a.findings.map((f) => f.rule_id));
  const fb = new Set(b.findings.map((f) => f.rule_id));
  const rules = sortFindings([...a.findings, ...b.findings.filter((f) => !fa.has(f.rule_id))]);
  return html`<table class="compare" aria-label="Comparison">
    <thead><tr><th scope="col"></th><th scope="col">${when(a.started_at)}</th>
      <th scope="col">${when(b.started_at)}</th></tr></thead>
    <tbody>
      ${rules.map((f) => html`<tr class=${fa.has(f.rule_id) !== fb.has(f.rule_id) ? "changed" : ""}>
        <th scope="row"><span class="badge ${f.severity}">${f.severity}</span> ${f.title}</th>
        <td>${fa.has(f.rule_id) ? "found" : "—"}</td><td>${fb.has(f.rule_id) ? "found" : "—"}</td></tr>`)}
      ${names.map((n) => {
        const l = left[n];
        const r = right[n];
        const ls = l ? l.summary || l.error || l.status : "—";
        const rs = r ? r.summary || r.error || r.status : "—";
        return html`<tr class=${ls !== rs ? "changed" : ""}><th scope="row">${(l || r).title || n}</th>
          <td>${ls}</td><td>${rs}</td></tr>`;
      })}
    </tbody></table>`;
}

export function reportsView(app, agentId) {
  appRef = app;
  if (s.visit !== app.visit || s.agent !== agentId) {
    s.visit = app.visit;
    s.left = s.right = null;
    load(agentId);
  }
  const options = (s.list || []).map((r) => html`<option value=${r.id}>${when(r.created_at)}
    — ${r.findings} finding${r.findings === 1 ? "" : "s"}</option>`);
  let body;
  if (s.error) body = html`<p class="error" role="alert">${s.error}</p>`;
  else if (!s.list) body = html`<p class="muted">Loading…</p>`;
  else if (!s.list.length) body = html`<p class="empty">No diagnostics report for this agent yet: open a session and run diagnostics.</p>`;
  else {
    body = html`<form class="inline" aria-label="Choose two reports" @submit=${(e) => e.preventDefault()}>
        <label>Left <select name="left" @change=${(e) => pick("left", e.target.value)}>
          <option value="">choose…</option>${options}</select></label>
        <label>Right <select name="right" @change=${(e) => pick("right", e.target.value)}>
          <option value="">choose…</option>${options}</select></label>
      </form>
      ${s.left && s.right ? compare(s.left.report, s.right.report) : nothing}
      ${s.left && !s.right ? html`<h2>Findings</h2>${findingsView(s.left.report.findings)}
        <button type="button" @click=${() => downloadJson(`backline-report-${s.left.id}.json`, s.left.report)}>
          Download</button>` : nothing}`;
  }
  return html`<section aria-labelledby="reports-title">
    <p><a href="#/agent/${encodeURIComponent(agentId || "")}">← Agent</a></p>
    <h1 id="reports-title">Diagnostics reports</h1>${body}</section>`;
}
