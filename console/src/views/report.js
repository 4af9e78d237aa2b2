// Rendering a diagnostics report: findings first (worst first), then the raw
// sections. Every value came from the customer's machine: it is shown as text.

import { html, nothing } from "lit-html";

const RANK = { critical: 0, warning: 1, info: 2 };

// Every finding came from the customer's machine: only objects are findings, and a
// field of the wrong type shows as nothing rather than breaking the page.
export function sortFindings(findings) {
  return (Array.isArray(findings) ? findings : []).filter((f) => f && typeof f === "object").sort(
    (a, b) => (RANK[a.severity] ?? 9) - (RANK[b.severity] ?? 9) || String(a.rule_id ?? "").localeCompare(String(b.rule_id ?? "")),
  );
}

// extra(finding), when given, adds to each finding (the diagnostics panel's
// "Suggested fixes").
export function findingsView(findings, extra = null) {
  const sorted = sortFindings(findings);
  if (sorted.length === 0) {
    return html`<p class="notice" id="no-findings">No known issue found.</p>`;
  }
  return html`<ol class="findings" aria-label="Findings">${sorted.map(
    (f) => html`<li class="finding ${f.severity}" data-rule=${f.rule_id}>
      <div class="finding-head"><span class="badge ${f.severity}">${f.severity}</span>
        <strong>${f.title}</strong> <code>${f.rule_id}</code></div>
      <p>${f.summary}</p>
      <details><summary>Why this matters</summary><p>${f.explanation}</p>
        ${Array.isArray(f.evidence) && f.evidence.length ? html`<pre class="evidence">${JSON.stringify(f.evidence, null, 2)}</pre>` : nothing}
      </details>
      ${Array.isArray(f.fixes) && f.fixes.length ? html`<p class="muted">Fixes: ${f.fixes.map((x) => html`<code>${String(x)}</code> `)}</p>` : nothing}
      ${extra ? extra(f) : nothing}
    </li>`,
  )}</ol>`;
}

export function sectionsView(sections) {
  return html`<div class="sections" aria-label="Raw sections">${(sections || []).map(
    (s) => html`<details class="section ${s.status}" data-section=${s.name}>
      <summary><span class="status ${s.status}">${s.status}</span> <strong>${s.title || s.name}</strong>
        <span class="muted">${s.summary || s.error || ""}</span>
        <small class="muted">${Math.round(s.duration_ms || 0)} ms</small></summary>
      ${s.error ? html`<p class="error">${s.error}</p>` : nothing}
      <pre>${JSON.stringify(s.data, null, 2)}</pre>
    </details>`,
  )}</div>`;
}

export function downloadJson(name, data) {
  const blob = new Blob([JSON.stringify(data, null, 2)], { type: "application/json" });
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
