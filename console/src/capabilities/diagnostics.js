// The diagnostics panel: run the agent's diagnostics over the stream socket and show
// each section the moment it arrives, then the findings (worst first), the raw
// sections and a download of the report.

import { html, nothing } from "lit-html";
import { downloadJson, findingsView, sectionsView } from "../views/report.js";
import { register } from "./registry.js";
import { streamUrl } from "./socket.js";
import { suggestions } from "./fix_suggest.js";

let run = null;

function start(ctx) {
  const r = {
    state: "running", begin: null, sections: [], findings: null, error: "",
    startedAt: performance.now(), firstMs: null, totalMs: null, exit: null,
  };
  run = r;
  ctx.refresh();
  const ws = new WebSocket(streamUrl(ctx.session.id, "diagnostics"));
  ws.addEventListener("message", (ev) => {
    let msg;
    try {
      msg = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (msg.type === "line") {
      let line;
      try {
        line = JSON.parse(msg.line);
      } catch {
        return;
      }
      if (line.type === "begin") r.begin = line;
      else if (line.type === "section") {
        if (r.firstMs === null) r.firstMs = Math.round(performance.now() - r.startedAt);
        r.sections.push(line.section);
      } else if (line.type === "end") {
        r.findings = line.findings;
        r.end = line;
      }
    } else if (msg.type === "exit") {
      r.exit = msg;
      r.state = r.findings ? "done" : "error";
      if (!r.findings) r.error = "The agent ended the run without a report.";
      r.totalMs = Math.round(performance.now() - r.startedAt);
    } else if (msg.type === "error") {
      r.state = "error";
      r.error = msg.detail || msg.error;
    }
    ctx.refresh();
  });
  ws.addEventListener("close", (ev) => {
    if (r.state === "running") {
      r.state = "error";
      r.error = ev.code === 4403 ? "Refused: you may not run diagnostics in this session."
        : `The connection closed before the report was complete (code ${ev.code}).`;
      ctx.refresh();
    }
  });
}

export function reportOf(r) {
  const order = r.begin?.sections || [];
  const sections = [...r.sections].sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
  return {
    schema: r.begin?.schema, schema_version: r.begin?.schema_version,
    agent: r.begin?.agent, started_at: r.begin?.started_at,
    finished_at: r.end?.finished_at, duration_ms: r.end?.duration_ms,
    thresholds: r.begin?.thresholds, findings: r.findings || [], sections,
    sha256: r.exit?.sha256,
  };
}

function fileName(r) {
  const host = (r.begin?.agent?.hostname || "agent").replace(/[^A-Za-z0-9._-]/g, "_");
  return `backline-report-${host}-${new Date().toISOString().slice(0, 19).replace(/:/g, "")}.json`;
}

function runView(r, session, ctx) {
  if (!r) return nothing;
  const total = r.begin?.sections?.length || 0;
  const done = r.sections.length;
  return html`<div class="run" aria-live="polite">
    <p class="progress" id="diag-progress">${r.state === "running"
      ? html`<progress max=${total || 1} value=${done}></progress> ${done} of ${total || "?"} sections…`
      : r.state === "done" ? html`Finished: ${done} sections in ${r.totalMs} ms
          (first section after ${r.firstMs} ms).`
      : nothing}</p>
    ${r.error ? html`<p class="error" role="alert">${r.error}</p>` : nothing}
    ${r.findings ? html`<h3>Findings</h3>${findingsView(r.findings, suggestions(ctx, r.findings))}
      <p><button type="button" @click=${() => downloadJson(fileName(r), reportOf(r))}>Download report</button>
        ${session.agent_id ? html`<a href="#/reports/${encodeURIComponent(session.agent_id)}">Compare reports of this agent</a>` : nothing}
        ${r.exit?.report ? html`<span class="muted" id="report-saved">Kept on the relay as <code>${r.exit.report}</code>.</span>` : nothing}</p>` : nothing}
    <h3>Sections</h3>${sectionsView(reportOf(r).sections)}
  </div>`;
}

register({
  name: "diagnostics",
  title: "Diagnostics",
  reset() {
    run = null;
  },
  view(ctx) {
    return html`<section class="panel card" data-capability="diagnostics" aria-labelledby="panel-diagnostics">
      <h2 id="panel-diagnostics">Diagnostics</h2>
      <p class="actions"><button type="button" @click=${() => start(ctx)}
        ?disabled=${!ctx.ready || run?.state === "running" || !ctx.mayUse}>Run diagnostics</button></p>
      ${runView(run, ctx.session, ctx)}
    </section>`;
  },
});
