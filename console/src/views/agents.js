// The live agent list: loaded once, then kept current by the live socket.

import { html, nothing } from "lit-html";
import { get } from "../api.js";
import { onLive } from "../live.js";
import { ago, worstSeverity } from "../format.js";

const state = { agents: null, error: "", filter: { q: "", group: "", status: "" } };
let appRef = null;
let loading = false;

async function load() {
  if (loading) return;
  loading = true;
  try {
    state.agents = (await get("/agents")).agents;
    state.error = "";
  } catch (err) {
    state.error = err.message;
  } finally {
    loading = false;
    appRef?.refresh();
  }
}

onLive((event) => {
  if (!appRef?.me) return;
  if (event.type === "resync") return load();
  if (event.type !== "agent" || !state.agents) return;
  const agent = state.agents.find((a) => a.id === event.agent_id);
  if (!agent || event.changed.enrolled) return load();
  Object.assign(agent, event.changed);
  appRef.refresh();
});

export function agentRows() {
  return state.agents;
}

function matches(a) {
  const f = state.filter;
  if (f.group && a.group !== f.group) return false;
  if (f.status && (f.status === "online") !== a.online) return false;
  if (f.status === "attention" && !worstSeverity(a.health)) return false;
  if (f.q) {
    const q = f.q.toLowerCase();
    return [a.hostname, a.label, a.os, a.id, a.group].some((v) =>
      String(v || "").toLowerCase().includes(q),
    );
  }
  return true;
}

export function healthBadge(alerts) {
  const worst = worstSeverity(alerts);
  if (!worst) return html`<span class="badge ok">Healthy</span>`;
  const n = alerts.length;
  return html`<span class="badge ${worst}" title=${alerts.map((a) => a.message).join("\n")}
    >${worst === "critical" ? "Critical" : worst === "warning" ? "Warning" : "Info"}
    (${n})</span>`;
}

export function agentsView(app) {
  appRef = app;
  if (state.agents === null && !state.error) load();
  const setFilter = (key) => (ev) => {
    state.filter[key] = ev.target.value;
    app.refresh();
  };
  const groups = [...new Set((state.agents || []).map((a) => a.group))].sort();
  const rows = (state.agents || []).filter(matches);
  const online = (state.agents || []).filter((a) => a.online).length;
  let body;
  if (state.error) {
    body = html`<p class="error" role="alert">Could not load agents: ${state.error}
      <button type="button" @click=${load}>Try again</button></p>`;
  } else if (state.agents === null) {
    body = html`<p class="muted">Loading agents…</p>`;
  } else if (state.agents.length === 0) {
    body = html`<div class="empty"><h2>No agents yet</h2>
      <p>Create an enrollment token on the <a href="#/admin">Admin</a> page and run the command
      it shows on a customer's machine.</p></div>`;
  } else if (rows.length === 0) {
    body = html`<p class="empty">No agent matches these filters.</p>`;
  } else {
    body = html`<table class="agents">
      <thead><tr><th scope="col">Status</th><th scope="col">Host</th><th scope="col">OS</th>
        <th scope="col">Group</th><th scope="col">Last seen</th><th scope="col">Health</th></tr>
      </thead>
      <tbody>${rows.map(
        (a) => html`<tr data-agent=${a.id} class=${a.online ? "online" : "offline"}>
          <td><span class="dot ${a.online ? "on" : "off"}" aria-hidden="true"></span>
            <span class="state">${a.online ? "Online" : "Offline"}</span></td>
          <td><a class="host" href="#/agent/${encodeURIComponent(a.id)}">${a.hostname}</a>
            ${a.label ? html`<div class="label">${a.label}</div>` : nothing}</td>
          <td>${a.os} ${a.os_version}</td>
          <td>${a.group}</td>
          <td title=${a.last_seen ? new Date(a.last_seen * 1000).toISOString() : ""}>
            ${a.online ? "now" : ago(a.last_seen)}</td>
          <td>${healthBadge(a.health)}</td>
        </tr>`,
      )}</tbody></table>`;
  }
  return html`<section aria-labelledby="agents-title">
    <div class="bar">
      <h1 id="agents-title">Agents <small class="muted">${online} online of
        ${(state.agents || []).length}</small></h1>
      <form class="filters" role="search" @submit=${(e) => e.preventDefault()}>
        <label>Search <input type="search" name="q" .value=${state.filter.q}
          @input=${setFilter("q")} placeholder="host, label, OS…"></label>
        <label>Group <select name="group" @change=${setFilter("group")}>
          <option value="">All</option>
          ${groups.map((g) => html`<option ?selected=${state.filter.group === g}>${g}</option>`)}
        </select></label>
        <label>Status <select name="status" @change=${setFilter("status")}>
          <option value="">All</option><option value="online">Online</option>
          <option value="offline">Offline</option>
          <option value="attention">Needs attention</option>
        </select></label>
      </form>
    </div>
    ${body}
  </section>`;
}

export function forgetAgents() {
  state.agents = null;
}
