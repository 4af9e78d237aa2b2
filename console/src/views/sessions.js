// Support sessions: the list, attended-session codes, and one session's page with
// the panels of the capabilities it was granted (console/src/capabilities/).

import { html, nothing } from "lit-html";
import { onLive } from "../live.js";
import { get, post, query } from "../api.js";
import { ago, when } from "../format.js";
import { panelsFor, resetPanels } from "../capabilities/index.js";
import { grantsFrom, OPT_IN } from "../capabilities/grants.js";
import { askOutcome, outcomeDialog, outcomeFacts } from "./session_outcome.js";

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
    const form = new FormData(ev.target);
    const d = Object.fromEntries(form.entries());
    try {
      list.code = await post("/session-codes", {
        reason: d.reason, ticket: d.ticket, capabilities: grantsFrom(form),
      });
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
      ${OPT_IN.map(([name, label]) => html`<label class="check"><input type="checkbox"
        name="cap-${name}"> ${label}</label>`)}
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

const one = { id: null, row: null, error: "", message: "", hostname: "" };

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

export function sessionView(app, id) {
  appRef = app;
  if (one.id !== id) {
    resetPanels();
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
  const ctx = {
    app, session: s, ready: open, refresh: () => app.refresh(),
    mayUse: app.can("agents:write") && s.technician === app.me?.user?.username,
    // Watching what the session's technician does needs only to see the session.
    mayWatch: app.can("agents:write"),
  };
  const panels = panelsFor(s.capabilities);
  const closable = ["dialing", "waiting", "consent", "ready"].includes(s.state);
  // Closing asks for the outcome first (./session_outcome.js); so does "Set outcome".
  const close = () => {
    askOutcome(s.id, true);
    app.refresh();
  };
  const mine = s.technician === app.me?.user?.username || app.me?.user?.role === "admin";
  const outcomeSettable = app.can("agents:write") && mine && ["closed", "expired"].includes(s.state);
  const outcomeDone = (message) => {
    if (message) one.message = message;
    loadSession(s.id);
  };
  return html`<section aria-labelledby="session-title" class="session-page">
    <p><a href="#/sessions">← Sessions</a>${s.agent_id ? html` · <a href="#/agent/${encodeURIComponent(s.agent_id)}">Agent</a>` : nothing}
      · <a href="#/timeline/${encodeURIComponent(s.id)}" id="session-timeline">Timeline</a></p>
    <h1 id="session-title">Session <code>${s.id.slice(0, 12)}</code>
      <span class="state ${s.state}" id="session-state">${s.state}</span></h1>
    <dl class="facts">
      <dt>Agent</dt><dd>${one.hostname ? html`${one.hostname} <code>${s.agent_id}</code>`
        : s.remote_hostname || s.agent_id || "waiting for the customer"}</dd>
      <dt>Technician</dt><dd>${s.technician}</dd>
      <dt>Mode</dt><dd>${s.mode}</dd>
      <dt>Reason</dt><dd>${s.reason || "—"}</dd><dt>Ticket</dt><dd>${s.ticket || "—"}</dd>
      <dt>Opened</dt><dd>${when(s.opened_at)}</dd>
      <dt>Granted</dt><dd id="session-capabilities">${(s.capabilities || []).join(", ") || "—"}</dd>
      <dt>Set-up</dt><dd>${s.setup_ms != null ? `${s.setup_ms} ms` : "—"}</dd>
      ${s.closed_at ? html`<dt>Closed</dt><dd>${when(s.closed_at)} (${s.close_reason})</dd>` : nothing}
      ${outcomeFacts(s)}
    </dl>
    <p class="actions">
      ${closable ? html`<button type="button" class="danger" @click=${close}>Close session</button>` : nothing}
      ${["dialing", "waiting", "consent"].includes(s.state) ? html`<button type="button" @click=${() => loadSession(s.id)}>Refresh</button>` : nothing}
      ${outcomeSettable ? html`<button type="button" id="set-outcome" @click=${() => { askOutcome(s.id, false); app.refresh(); }}>
        ${s.outcome ? "Change outcome" : "Set outcome"}</button>` : nothing}
    </p>
    ${outcomeDialog(s, outcomeDone)}
    ${one.message ? html`<p class="notice" role="status">${one.message}</p>` : nothing}
    ${panels.length ? panels.map((p) => p.view(ctx)) : html`<p class="muted">No capability of this
      session has a panel in this console.</p>`}
  </section>`;
}

// Leaving the session page closes what its panels hold open (a terminal, a replay):
// nothing keeps running on a page nobody sees.
export function leaveSession() {
  if (one.id === null) return;
  resetPanels();
  one.id = null;
  one.row = null;
}

export async function openSession(agentId, reason, ticket, capabilities) {
  const row = await post(`/agents/${encodeURIComponent(agentId)}/sessions`, { reason, ticket, capabilities });
  location.hash = `#/session/${encodeURIComponent(row.id)}`;
  return row;
}
