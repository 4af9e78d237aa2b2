// One agent: everything it reported (all of it hostile input, shown as text).

import { html, nothing } from "lit-html";
import { del, get, patch, post } from "../api.js";
import { onLive } from "../live.js";
import { when } from "../format.js";
import { healthBadge } from "./agents.js";
import { openSession } from "./sessions.js";
import { grantsFrom, OPT_IN } from "../capabilities/grants.js";

const state = { id: null, agent: null, error: "", message: "", stale: false };
let appRef = null;

async function load(id) {
  state.id = id;
  state.agent = null;
  state.error = "";
  state.message = "";
  state.stale = false;
  try {
    const agent = await get(`/agents/${encodeURIComponent(id)}`);
    if (state.id !== id) return;
    state.agent = agent;
    if (state.stale) {
      // A change was pushed while the answer was on its way: it may predate it.
      state.stale = false;
      state.agent = await get(`/agents/${encodeURIComponent(id)}`);
    }
  } catch (err) {
    state.error = err.message;
  }
  appRef?.refresh();
}

onLive((event) => {
  if (event.type === "resync" && state.agent) {
    // The live socket (re)connected: what changed while it was down was not pushed.
    const id = state.agent.id;
    get(`/agents/${encodeURIComponent(id)}`).then((agent) => {
      if (state.agent && state.agent.id === id) {
        state.agent = agent;
        appRef?.refresh();
      }
    }, () => {});
    return;
  }
  if (event.type === "agent" && !state.agent && event.agent_id === state.id) {
    state.stale = true;
    return;
  }
  if (event.type === "agent" && state.agent && event.agent_id === state.agent.id) {
    Object.assign(state.agent, event.changed);
    appRef?.refresh();
  }
});

async function act(fn, ok) {
  state.message = "";
  try {
    await fn();
    state.message = ok;
    state.agent = await get(`/agents/${encodeURIComponent(state.id)}`);
  } catch (err) {
    state.message = `Refused: ${err.message}`;
  }
  appRef?.refresh();
}

export function agentView(app, id) {
  appRef = app;
  if (state.id !== id) load(id);
  if (state.error) {
    return html`<section class="empty"><h1>Agent</h1>
      <p class="error" role="alert">${state.error}</p><a href="#/agents">Back to agents</a>
    </section>`;
  }
  const a = state.agent;
  if (!a) return html`<p class="muted">Loading agent…</p>`;
  const canWrite = app.can("agents:write");
  const saveLabel = (ev) => {
    ev.preventDefault();
    const label = String(new FormData(ev.target).get("label") || "");
    act(() => patch(`/agents/${encodeURIComponent(a.id)}`, { label }), "Label saved.");
  };
  const startSession = async (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const d = Object.fromEntries(form.entries());
    state.opening = true;
    state.message = "";
    app.refresh();
    try {
      await openSession(a.id, d.reason, d.ticket, grantsFrom(form));
    } catch (err) {
      state.message = `Could not open a session: ${err.message}`;
    }
    state.opening = false;
    app.refresh();
  };
  const ping = () =>
    act(async () => {
      const r = await post(`/agents/${encodeURIComponent(a.id)}/ping`);
      state.pong = r.rtt_ms;
    }, "The agent answered.");
  const revoke = () => {
    if (confirm("Revoke this agent? It will be disconnected and can no longer connect.")) {
      act(() => del(`/agents/${encodeURIComponent(a.id)}`), "Agent revoked.");
    }
  };
  const fields = [
    ["Agent ID", a.id], ["Hostname", a.hostname], ["Label", a.label || "—"],
    ["Group", a.group], ["Operating system", a.os], ["OS version", a.os_version],
    ["Architecture", a.arch], ["Agent version", a.version],
    ["Status", a.online ? "Online" : "Offline"], ["Last seen", when(a.last_seen)],
    ["Last address", a.last_address || "—"], ["Enrolled", when(a.enrolled_at)],
    ["Revoked", a.revoked ? "yes" : "no"],
  ];
  return html`<section aria-labelledby="agent-title" class="agent-page">
    <p><a href="#/agents">← Agents</a></p>
    <h1 id="agent-title"><span class="dot ${a.online ? "on" : "off"}" aria-hidden="true"></span>
      ${a.hostname} ${healthBadge(a.health)}</h1>
    <div class="columns">
      <dl class="facts">${fields.map(([k, v]) => html`<dt>${k}</dt><dd>${v}</dd>`)}</dl>
      <div>
        <h2>Health</h2>
        ${a.health.length
          ? html`<ul class="alerts">${a.health.map(
              (h) => html`<li class=${h.severity}><strong>${h.severity}</strong>
                <code>${h.id}</code> ${h.message}</li>`,
            )}</ul>`
          : html`<p class="muted">No alerts reported.</p>`}
        ${canWrite
          ? html`<h2>Support session</h2>
            <form class="inline" @submit=${startSession} aria-label="Open a support session">
              <label>Reason <input name="reason" maxlength="512" placeholder="what the customer reported"></label>
              <label>Ticket <input name="ticket" maxlength="128" placeholder="HD-1234"></label>
              ${OPT_IN.map(([name, label]) => html`<label class="check"><input type="checkbox"
                name="cap-${name}"> ${label}</label>`)}
              <button type="submit" ?disabled=${!a.online || state.opening}>
                ${state.opening ? "Connecting…" : "Open session"}</button>
            </form>
            <p><a href="#/reports/${encodeURIComponent(a.id)}">Diagnostics reports of this agent</a></p>
            <h2>Actions</h2>
            <form class="inline" @submit=${saveLabel}>
              <label>Label <input name="label" .value=${a.label} maxlength="256"></label>
              <button type="submit">Save label</button>
            </form>
            <p><button type="button" @click=${ping} ?disabled=${!a.online}>Ping</button>
              ${state.pong !== undefined ? html`<span>${state.pong} ms</span>` : nothing}
              ${app.can("groups:write") && !a.revoked
                ? html`<button type="button" class="danger" @click=${revoke}>Revoke</button>`
                : nothing}</p>`
          : html`<p class="muted">Read-only: your role cannot act on agents.</p>`}
        ${state.message ? html`<p class="notice" role="status">${state.message}</p>` : nothing}
      </div>
    </div>
  </section>`;
}
