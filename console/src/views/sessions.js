// Support sessions: the list, attended-session codes, and one session's page with
// live diagnostics (each section shown the moment it arrives).

import { html, nothing } from "lit-html";
import { onLive } from "../live.js";
import { del, get, post, query } from "../api.js";
import { ago, when } from "../format.js";
import { downloadJson, findingsView, sectionsView } from "./report.js";

const list = { visit: -1, rows: null, error: "", code: null, codeError: "" };
let appRef = null;

async function loadList() {
  try {
    list.rows = (await get(`/sessions${query({ limit: 100 })}`)).sessions;
    list.error = "";
  } catch (err) {
    list.error = err.message;
  }
  appRef?.refresh();
}

export function sessionsView(app) {
  appRef = app;
  if (list.visit !== app.visit) {
    list.visit = app.visit;
    loadList();
  }
  const makeCode = async (ev) => {
    ev.preventDefault();
    const d = Object.fromEntries(new FormData(ev.target).entries());
    try {
      list.code = await post("/session-codes", { reason: d.reason, ticket: d.ticket });
      list.codeError = "";
      loadList();
    } catch (err) {
      list.codeError = err.message;
    }
    app.refresh();
  };
  let body;
  if (list.error) body = html`<p class="error" role="alert">${list.error}</p>`;
  else if (!list.rows) body = html`<p class="muted">Loading…</p>`;
  else if (!list.rows.length) body = html`<p class="empty">No sessions yet. Open one from an agent's page, or make an attended-session code.</p>`;
  else {
    body = html`<table class="sessions"><thead><tr><th scope="col">Session</th><th scope="col">Mode</th>
      <th scope="col">Agent</th><th scope="col">Technician</th><th scope="col">Reason</th>
      <th scope="col">State</th><th scope="col">Opened</th></tr></thead>
      <tbody>${list.rows.map((s) => html`<tr data-session=${s.id}>
        <td><a href="#/session/${encodeURIComponent(s.id)}"><code>${s.id.slice(0, 12)}</code></a></td>
        <td>${s.mode}</td><td>${s.remote_hostname || s.agent_id || "—"}</td><td>${s.technician}</td>
        <td>${s.reason}${s.ticket ? html` <span class="muted">(${s.ticket})</span>` : nothing}</td>
        <td><span class="state ${s.state}">${s.state}</span></td>
        <td>${ago(s.opened_at || s.created_at)}</td></tr>`)}</tbody></table>`;
  }
  return html`<section aria-labelledby="sessions-title">
    <h1 id="sessions-title">Support sessions</h1>
    ${app.can("agents:write") ? html`<form class="card inline" @submit=${makeCode}
        aria-label="Make an attended-session code">
      <strong>Attended session</strong>
      <label>Reason <input name="reason" maxlength="512" placeholder="printer will not print"></label>
      <label>Ticket <input name="ticket" maxlength="128" placeholder="HD-1234"></label>
      <button type="submit">Make a session code</button>
    </form>` : nothing}
    ${list.codeError ? html`<p class="error" role="alert">${list.codeError}</p>` : nothing}
    ${list.code ? html`<div class="notice" role="status" id="session-code">
      <p>Read this code to the customer: <strong class="code">${list.code.code}</strong>
        (valid until ${when(list.code.expires_at)}, single use). They run:</p>
      <pre class="command" id="join-command">${list.code.command}</pre>
      <p class="muted">The command pins this relay's TLS key (sha256//...), so it cannot be sent
        to an impostor. Nothing stays installed when the session ends.</p>
      <a href="#/session/${encodeURIComponent(list.code.session_id)}">Follow this session</a></div>` : nothing}
    ${body}
  </section>`;
}

// --- one session ---------------------------------------------------------------------

const one = { id: null, row: null, error: "", run: null, message: "", hostname: "" };

// The relay pushes every change of a session you may see: the page follows the
// customer joining, consenting and ending without a reload.
onLive((event) => {
  if (event.type === "session" && event.session && event.session.id === one.id) {
    one.row = event.session;
    appRef?.refresh();
  } else if (event.type === "resync" && one.id) {
    loadSession(one.id);
  }
});

async function loadSession(id) {
  one.id = id;
  try {
    one.row = await get(`/sessions/${encodeURIComponent(id)}`);
    one.error = "";
    if (one.row.mode === "managed" && one.row.agent_id && !one.hostname) {
      // The name the technician knows the machine by; the id stays visible too.
      one.hostname = await get(`/agents/${encodeURIComponent(one.row.agent_id)}`)
        .then((a) => a.hostname, () => "");
    }
  } catch (err) {
    one.error = err.message;
  }
  appRef?.refresh();
}

function runDiagnostics() {
  const run = {
    state: "running", begin: null, sections: [], findings: null, error: "",
    startedAt: performance.now(), firstMs: null, totalMs: null, exit: null,
  };
  one.run = run;
  appRef.refresh();
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/sessions/${encodeURIComponent(one.id)}/stream/diagnostics`;
  const ws = new WebSocket(url);
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
      if (line.type === "begin") run.begin = line;
      else if (line.type === "section") {
        if (run.firstMs === null) run.firstMs = Math.round(performance.now() - run.startedAt);
        run.sections.push(line.section);
      } else if (line.type === "end") {
        run.findings = line.findings;
        run.end = line;
      }
    } else if (msg.type === "exit") {
      run.exit = msg;
      run.state = run.findings ? "done" : "error";
      if (!run.findings) run.error = "The agent ended the run without a report.";
      run.totalMs = Math.round(performance.now() - run.startedAt);
    } else if (msg.type === "error") {
      run.state = "error";
      run.error = msg.detail || msg.error;
    }
    appRef.refresh();
  });
  ws.addEventListener("close", (ev) => {
    if (run.state === "running") {
      run.state = "error";
      run.error = ev.code === 4403 ? "Refused: you may not run diagnostics in this session."
        : `The connection closed before the report was complete (code ${ev.code}).`;
      appRef.refresh();
    }
  });
}

export function reportOf(run) {
  const order = run.begin?.sections || [];
  const sections = [...run.sections].sort((a, b) => order.indexOf(a.name) - order.indexOf(b.name));
  return {
    schema: run.begin?.schema, schema_version: run.begin?.schema_version,
    agent: run.begin?.agent, started_at: run.begin?.started_at,
    finished_at: run.end?.finished_at, duration_ms: run.end?.duration_ms,
    thresholds: run.begin?.thresholds, findings: run.findings || [], sections,
    sha256: run.exit?.sha256,
  };
}

function runView(run) {
  if (!run) return nothing;
  const total = run.begin?.sections?.length || 0;
  const done = run.sections.length;
  return html`<div class="run card" aria-live="polite">
    <h2>Diagnostics</h2>
    <p class="progress" id="diag-progress">${run.state === "running"
      ? html`<progress max=${total || 1} value=${done}></progress> ${done} of ${total || "?"} sections…`
      : run.state === "done" ? html`Finished: ${done} sections in ${run.totalMs} ms
          (first section after ${run.firstMs} ms).`
      : nothing}</p>
    ${run.error ? html`<p class="error" role="alert">${run.error}</p>` : nothing}
    ${run.findings ? html`<h3>Findings</h3>${findingsView(run.findings)}
      <p><button type="button" @click=${() => downloadJson(
        `backline-report-${(run.begin?.agent?.hostname || "agent").replace(/[^A-Za-z0-9._-]/g, "_")}-${new Date().toISOString().slice(0, 19).replace(/:/g, "")}.json`,
        reportOf(run))}>Download report</button>
        ${one.row?.agent_id ? html`<a href="#/reports/${encodeURIComponent(one.row.agent_id)}">Compare reports of this agent</a>` : nothing}
        ${run.exit?.report ? html`<span class="muted" id="report-saved">Kept on the relay as <code>${run.exit.report}</code>.</span>` : nothing}</p>` : nothing}
    <h3>Sections</h3>${sectionsView(reportOf(run).sections)}
  </div>`;
}

export function sessionView(app, id) {
  appRef = app;
  if (one.id !== id) {
    one.run = null;
    one.row = null;
    one.hostname = "";
    one.message = "";
    loadSession(id);
  }
  if (one.error) return html`<section class="empty"><h1>Session</h1><p class="error" role="alert">${one.error}</p></section>`;
  const s = one.row;
  if (!s) return html`<p class="muted">Loading session…</p>`;
  // "ready": SSH is up; dialing, waiting (attended code) and consent come before it.
  const open = s.state === "ready";
  const closable = ["dialing", "waiting", "consent", "ready"].includes(s.state);
  const close = async () => {
    try {
      await del(`/sessions/${encodeURIComponent(s.id)}`);
      one.message = "Session closed.";
    } catch (err) {
      one.message = `Refused: ${err.message}`;
    }
    loadSession(s.id);
  };
  return html`<section aria-labelledby="session-title" class="session-page">
    <p><a href="#/sessions">← Sessions</a>${s.agent_id ? html` · <a href="#/agent/${encodeURIComponent(s.agent_id)}">Agent</a>` : nothing}</p>
    <h1 id="session-title">Session <code>${s.id.slice(0, 12)}</code>
      <span class="state ${s.state}" id="session-state">${s.state}</span></h1>
    <dl class="facts">
      <dt>Agent</dt><dd>${one.hostname ? html`${one.hostname} <code>${s.agent_id}</code>`
        : s.remote_hostname || s.agent_id || "waiting for the customer"}</dd>
      <dt>Technician</dt><dd>${s.technician}</dd>
      <dt>Mode</dt><dd>${s.mode}</dd>
      <dt>Reason</dt><dd>${s.reason || "—"}</dd><dt>Ticket</dt><dd>${s.ticket || "—"}</dd>
      <dt>Opened</dt><dd>${when(s.opened_at)}</dd>
      <dt>Set-up</dt><dd>${s.setup_ms != null ? `${s.setup_ms} ms` : "—"}</dd>
      ${s.closed_at ? html`<dt>Closed</dt><dd>${when(s.closed_at)} (${s.close_reason})</dd>` : nothing}
    </dl>
    <p class="actions">
      <button type="button" @click=${runDiagnostics}
        ?disabled=${!open || one.run?.state === "running" || !app.can("agents:write")}>Run diagnostics</button>
      ${closable ? html`<button type="button" class="danger" @click=${close}>Close session</button>` : nothing}
      ${["dialing", "waiting", "consent"].includes(s.state) ? html`<button type="button" @click=${() => loadSession(s.id)}>Refresh</button>` : nothing}
    </p>
    ${one.message ? html`<p class="notice" role="status">${one.message}</p>` : nothing}
    ${runView(one.run)}
  </section>`;
}

export async function openSession(agentId, reason, ticket) {
  const row = await post(`/agents/${encodeURIComponent(agentId)}/sessions`, { reason, ticket });
  location.hash = `#/session/${encodeURIComponent(row.id)}`;
  return row;
}
