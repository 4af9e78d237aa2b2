// Admin: users and roles, groups and grants, enrollment tokens, API tokens.
// Controls appear only for permissions the signed-in user holds; the relay
// checks every request again regardless.

import { html, nothing } from "lit-html";
import { del, get, patch, post, put } from "../api.js";
import { when } from "../format.js";

const ROLES = ["admin", "technician", "approver", "auditor"];
const s = {
  visit: -1, users: [], groups: [], enroll: [], apiTokens: [], scopes: [],
  errors: {}, made: {}, message: "",
};
let appRef = null;

async function section(name, fn) {
  try {
    await fn();
    delete s.errors[name];
  } catch (err) {
    s.errors[name] = err.message;
  }
}

async function load(app) {
  s.visit = app.visit;
  const jobs = [section("groups", async () => (s.groups = (await get("/groups")).groups))];
  if (app.can("users:read")) jobs.push(section("users", async () => (s.users = (await get("/users")).users)));
  if (app.can("enroll:read")) jobs.push(section("enroll", async () => (s.enroll = (await get("/enroll-tokens")).tokens)));
  if (app.can("apitokens:write")) {
    jobs.push(section("api", async () => {
      const r = await get("/api-tokens");
      s.apiTokens = r.tokens;
      s.scopes = r.scopes;
    }));
  }
  await Promise.all(jobs);
  appRef?.refresh();
}

async function change(name, fn, ok) {
  s.message = "";
  try {
    const result = await fn();
    if (ok) s.message = ok;
    await load(appRef);
    return result;
  } catch (err) {
    s.errors[name] = `Refused: ${err.message}`;
    appRef?.refresh();
    return null;
  }
}

function form(handler) {
  return (ev) => {
    ev.preventDefault();
    const data = Object.fromEntries(new FormData(ev.target).entries());
    handler(data, ev.target);
  };
}

function errorOf(name) {
  return s.errors[name] ? html`<p class="error" role="alert">${s.errors[name]}</p>` : nothing;
}

function copyButton(text) {
  const copy = async (ev) => {
    try {
      await navigator.clipboard.writeText(text);
      ev.target.textContent = "Copied";
    } catch {
      ev.target.textContent = "Select and copy";
    }
  };
  return html`<button type="button" class="small" @click=${copy}>Copy</button>`;
}

function usersSection(app) {
  const canWrite = app.can("users:write");
  const create = form(async (d, f) => {
    const r = await change("users", () => post("/users", { username: d.username, role: d.role }));
    if (r) {
      s.made.user = r;
      f.reset();
      appRef.refresh();
    }
  });
  const setRole = (u) => (ev) =>
    change("users", () => patch(`/users/${u.id}`, { role: ev.target.value }), "Role changed.");
  const toggle = (u, flag) => () =>
    change("users", () => patch(`/users/${u.id}`, { [flag]: !u[flag] }), "Saved.");
  return html`<section aria-labelledby="users-title" class="card">
    <h2 id="users-title">Users</h2>
    ${errorOf("users")}
    <table><thead><tr><th scope="col">User</th><th scope="col">Role</th>
      <th scope="col">Second factor</th><th scope="col">State</th></tr></thead>
    <tbody>${s.users.map((u) => html`<tr>
      <td>${u.username}</td>
      <td>${canWrite && u.username !== app.me.user.username
        ? html`<select aria-label="Role of ${u.username}" @change=${setRole(u)}>
            ${ROLES.map((r) => html`<option ?selected=${r === u.role}>${r}</option>`)}</select>`
        : u.role}</td>
      <td>${u.totp_enabled ? "enabled" : u.totp_required ? "required, not set up" : "off"}
        ${canWrite ? html`<button type="button" class="small" @click=${toggle(u, "totp_required")}>
          ${u.totp_required ? "Don't require" : "Require"}</button>` : nothing}</td>
      <td>${u.disabled ? "disabled" : "active"}
        ${canWrite && u.username !== app.me.user.username
          ? html`<button type="button" class="small" @click=${toggle(u, "disabled")}>
            ${u.disabled ? "Enable" : "Disable"}</button>` : nothing}</td>
    </tr>`)}</tbody></table>
    ${canWrite ? html`<form class="inline" @submit=${create} aria-label="Create a user">
      <label>Username <input name="username" required pattern="[a-z0-9][a-z0-9._\\-]{0,63}"></label>
      <label>Role <select name="role">${ROLES.map((r) => html`<option>${r}</option>`)}</select></label>
      <button type="submit">Create user</button></form>` : nothing}
    ${s.made.user ? html`<p class="notice" role="status">Created
      <strong>${s.made.user.user.username}</strong>. One-time password (shown once):
      <code class="secret">${s.made.user.one_time_password}</code>
      ${copyButton(s.made.user.one_time_password)}</p>` : nothing}
  </section>`;
}

function groupsSection(app) {
  const canWrite = app.can("groups:write");
  const create = form(async (d, f) => {
    if (await change("groups", () => post("/groups", { name: d.name, description: d.description }), "Group created.")) f.reset();
  });
  const grant = form((d) =>
    change("groups", () => put(`/groups/${d.group}/grants/${encodeURIComponent(d.user)}`), "Granted."));
  const ungrant = (g, u) => () =>
    change("groups", () => del(`/groups/${g.id}/grants/${encodeURIComponent(u)}`), "Grant removed.");
  return html`<section aria-labelledby="groups-title" class="card">
    <h2 id="groups-title">Groups and grants</h2>
    ${errorOf("groups")}
    ${s.groups.length === 0 ? html`<p class="empty">No groups you can see.</p>` : html`
    <table><thead><tr><th scope="col">Group</th><th scope="col">Description</th>
      <th scope="col">May act on it</th></tr></thead>
    <tbody>${s.groups.map((g) => html`<tr><td>${g.name}</td><td>${g.description}</td>
      <td>${g.granted.length ? g.granted.map((u) => html`<span class="chip">${u}
        ${canWrite ? html`<button type="button" class="small" aria-label="Remove ${u} from ${g.name}"
          @click=${ungrant(g, u)}>×</button>` : nothing}</span>`) : html`<span class="muted">admins and auditors only</span>`}</td>
    </tr>`)}</tbody></table>`}
    ${canWrite ? html`<form class="inline" @submit=${create} aria-label="Create a group">
        <label>Name <input name="name" required maxlength="128"></label>
        <label>Description <input name="description" maxlength="512"></label>
        <button type="submit">Create group</button></form>
      <form class="inline" @submit=${grant} aria-label="Grant a group">
        <label>User <select name="user">${s.users.map((u) => html`<option>${u.username}</option>`)}</select></label>
        <label>Group <select name="group">${s.groups.map((g) => html`<option value=${g.id}>${g.name}</option>`)}</select></label>
        <button type="submit">Grant</button></form>` : nothing}
  </section>`;
}

function enrollSection(app) {
  const canWrite = app.can("enroll:write");
  const create = form(async (d) => {
    const r = await change("enroll", () =>
      post("/enroll-tokens", { group: d.group, uses: Number(d.uses), ttl: d.ttl }));
    if (r) {
      s.made.enroll = r;
      appRef.refresh();
    }
  });
  const revoke = (t) => () => change("enroll", () => del(`/enroll-tokens/${encodeURIComponent(t.id)}`), "Token revoked.");
  return html`<section aria-labelledby="enroll-title" class="card">
    <h2 id="enroll-title">Enrollment tokens</h2>
    ${errorOf("enroll")}
    ${canWrite ? html`<form class="inline" @submit=${create} aria-label="Create an enrollment token">
      <label>Group <select name="group" required>${s.groups.map((g) => html`<option value=${g.name}>${g.name}</option>`)}</select></label>
      <label>Uses <input name="uses" type="number" min="1" max="100000" value="1" required></label>
      <label>Valid for <select name="ttl"><option value="1h">1 hour</option>
        <option value="24h">1 day</option><option value="7d">7 days</option>
        <option value="30m">30 minutes</option></select></label>
      <!-- a token needs a group: not before the groups are loaded -->
      <button type="submit" ?disabled=${s.groups.length === 0}>Create token</button></form>` : nothing}
    ${s.made.enroll ? html`<div class="notice" role="status">
      <p>Run this on the customer's machine (shown once):</p>
      <pre class="command" id="enroll-command">${s.made.enroll.command}</pre>
      ${copyButton(s.made.enroll.command)}</div>` : nothing}
    ${s.enroll.length === 0 ? html`<p class="empty">No enrollment tokens yet.</p>` : html`
    <table><thead><tr><th scope="col">Token</th><th scope="col">Group</th><th scope="col">Uses</th>
      <th scope="col">Expires</th><th scope="col">State</th><th scope="col">Created by</th>
      <th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
    <tbody>${s.enroll.map((t) => html`<tr><td><code>${t.id}</code></td><td>${t.group}</td>
      <td>${t.uses} / ${t.max_uses}</td><td>${when(t.expires_at)}</td><td>${t.state}</td>
      <td>${t.created_by}</td>
      <td>${canWrite && t.state === "active" ? html`<button type="button" class="small danger"
        @click=${revoke(t)}>Revoke</button>` : nothing}</td></tr>`)}</tbody></table>`}
  </section>`;
}

function apiSection(app) {
  if (!app.can("apitokens:write")) return nothing;
  const create = form(async (d, f) => {
    const scopes = [...f.querySelectorAll("input[name=scope]:checked")].map((i) => i.value);
    const cidrs = String(d.cidrs || "").split(/[\s,]+/).filter(Boolean);
    const r = await change("api", () =>
      post("/api-tokens", { name: d.name, scopes, ttl: d.ttl, allowed_cidrs: cidrs }));
    if (r) {
      s.made.api = r;
      f.reset();
      appRef.refresh();
    }
  });
  const revoke = (t) => () => change("api", () => del(`/api-tokens/${encodeURIComponent(t.id)}`), "Token revoked.");
  const mine = new Set(app.me.permissions);
  return html`<section aria-labelledby="api-title" class="card">
    <h2 id="api-title">API tokens</h2>
    <p class="muted">For automation. Scoped, expiring, optionally bound to addresses; every use is
      audited. A token can never manage users, groups or other tokens.</p>
    ${errorOf("api")}
    <form @submit=${create} aria-label="Create an API token" class="stack">
      <label>Name <input name="name" required maxlength="128"></label>
      <fieldset><legend>Scopes</legend>${s.scopes.filter((sc) => mine.has(sc)).map((sc) =>
        html`<label class="check"><input type="checkbox" name="scope" value=${sc}> ${sc}</label>`)}</fieldset>
      <label>Valid for <select name="ttl"><option value="30d">30 days</option>
        <option value="7d">7 days</option><option value="1d">1 day</option>
        <option value="90d">90 days</option></select></label>
      <label>Only from (addresses or networks, optional)
        <input name="cidrs" placeholder="203.0.113.0/24, 2001:db8::/32"></label>
      <button type="submit">Create API token</button></form>
    ${s.made.api ? html`<p class="notice" role="status">Token (shown once):
      <code class="secret">${s.made.api.token}</code> ${copyButton(s.made.api.token)}</p>` : nothing}
    ${s.apiTokens.length === 0 ? html`<p class="empty">No API tokens.</p>` : html`
    <table><thead><tr><th scope="col">Name</th><th scope="col">Scopes</th><th scope="col">Bound to</th>
      <th scope="col">Expires</th><th scope="col">Last used</th><th scope="col"><span class="sr-only">Actions</span></th></tr></thead>
    <tbody>${s.apiTokens.map((t) => html`<tr><td>${t.name}</td><td>${t.scopes.join(", ")}</td>
      <td>${t.allowed_cidrs.join(", ") || "anywhere"}</td><td>${when(t.expires_at)}</td>
      <td>${when(t.last_used_at)}</td><td>${t.revoked_at ? "revoked" : html`<button type="button"
        class="small danger" @click=${revoke(t)}>Revoke</button>`}</td></tr>`)}</tbody></table>`}
  </section>`;
}

export function adminView(app) {
  appRef = app;
  if (s.visit !== app.visit) load(app);
  return html`<section aria-labelledby="admin-title" class="admin">
    <h1 id="admin-title">Admin</h1>
    ${app.can("users:write") ? nothing : html`<p class="muted">Read-only: your role
      (${app.me.user.role}) cannot change users or groups.</p>`}
    ${s.message ? html`<p class="notice" role="status">${s.message}</p>` : nothing}
    <div class="grid">
      ${app.can("users:read") ? usersSection(app) : nothing}
      ${groupsSection(app)}
      ${app.can("enroll:read") ? enrollSection(app) : nothing}
      ${apiSection(app)}
    </div>
  </section>`;
}
