// The console shell: who is signed in, the navigation, the live indicator, and
// hash routes to the views. Views render with lit-html, which escapes every
// interpolated value: agent- and user-supplied text is never parsed as HTML.

import { html, render, nothing } from "lit-html";
import { get, post, onSignedOut, setCsrf } from "./api.js";
import { onLiveState, startLive, stopLive, liveState } from "./live.js";
import { loginView } from "./views/login.js";
import { agentsView } from "./views/agents.js";
import { agentView } from "./views/agent.js";
import { adminView } from "./views/admin.js";
import { auditView } from "./views/audit.js";
import { accountView } from "./views/account.js";
import { sessionView, sessionsView } from "./views/sessions.js";
import { reportsView } from "./views/reports.js";

const root = document.getElementById("app");
root.textContent = ""; // drop the "Loading" placeholder; lit-html renders from here on

export const app = {
  me: null,
  // Bumped on every navigation, so views reload their data when entered.
  visit: 0,
  notice: "",
  can(permission) {
    return Boolean(this.me && this.me.permissions.includes(permission));
  },
  refresh() {
    draw();
  },
  async signedIn(me) {
    app.me = me;
    setCsrf(me.csrf_token);
    app.notice = "";
    if (needsAccountSetup()) {
      location.hash = "#/account";
    } else {
      startLive();
      if (!location.hash || location.hash === "#/login") location.hash = "#/agents";
    }
    draw();
  },
  signedOut(reason) {
    const wasIn = Boolean(app.me);
    app.me = null;
    setCsrf("");
    stopLive();
    app.notice = reason || (wasIn ? "You were signed out. Please sign in again." : "");
    draw();
  },
};

function needsAccountSetup() {
  return app.me && (app.me.user.must_change_password || app.me.totp_enrolment_required);
}

onSignedOut(() => app.signedOut("You were signed out (your session ended). Please sign in again."));
onLiveState(() => drawHeader());

function route() {
  const parts = (location.hash.replace(/^#\/?/, "") || "agents").split("/");
  return { name: parts[0], arg: parts[1] ? decodeURIComponent(parts[1]) : undefined };
}

const LIVE_TEXT = {
  live: "Live",
  connecting: "Connecting…",
  reconnecting: "Reconnecting…",
  offline: "Offline",
};

function header() {
  if (!app.me) return nothing;
  const r = route().name;
  const link = (name, label, show = true) =>
    show
      ? html`<a href="#/${name}" class=${r === name ? "active" : ""}
          aria-current=${r === name ? "page" : "false"}>${label}</a>`
      : nothing;
  const state = liveState();
  return html`<header class="top">
    <a class="brand" href="#/agents">Backline</a>
    <nav aria-label="Main">
      ${link("agents", "Agents", app.can("agents:read"))}
      ${link("sessions", "Sessions", app.can("agents:read"))}
      ${link("admin", "Admin", app.can("groups:read"))}
      ${link("audit", "Audit", app.can("audit:read"))}
      ${link("account", "Account")}
    </nav>
    <span id="live-status" class="live ${state}" role="status" aria-live="polite"
      title="Live updates from the relay">${LIVE_TEXT[state] || state}</span>
    <span class="who">${app.me.user.username} <small>(${app.me.user.role})</small></span>
    <button type="button" class="link" @click=${logout}>Sign out</button>
  </header>`;
}

async function logout() {
  try {
    await post("/auth/logout");
  } catch {
    /* already signed out */
  }
  app.signedOut("You signed out.");
}

let viewTemplate = nothing;

function drawHeader() {
  draw();
}

function draw() {
  let view;
  if (!app.me) {
    view = loginView(app);
  } else {
    const { name, arg } = route();
    if (needsAccountSetup() && name !== "account") {
      location.hash = "#/account";
      return;
    }
    view =
      {
        agents: () => agentsView(app),
        agent: () => agentView(app, arg),
        admin: () => adminView(app),
        audit: () => auditView(app),
        account: () => accountView(app),
        sessions: () => sessionsView(app),
        session: () => sessionView(app, arg),
        reports: () => reportsView(app, arg),
      }[name]?.() ?? html`<section class="empty"><h1>Not found</h1>
        <p>There is no page here. <a href="#/agents">Go to the agents</a>.</p></section>`;
  }
  viewTemplate = view;
  render(html`${header()}<main id="main">${viewTemplate}</main>`, root);
}

window.addEventListener("hashchange", () => {
  app.visit += 1;
  draw();
});

async function boot() {
  try {
    await app.signedIn(await get("/auth/me"));
  } catch {
    app.me = null;
    draw();
  }
}

boot();
