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
import { leaveSession, sessionView, sessionsView } from "./views/sessions.js";
import { reportsView } from "./views/reports.js";
import { fixesView } from "./views/fixes.js";
import { leaveTimeline, timelineView } from "./views/timeline.js";
import { searchView } from "./views/search.js";
import { managementView } from "./views/management.js";

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
    rememberSignedIn(true);
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
    leaveSession();
    app.notice = reason || (wasIn ? "You were signed out. Please sign in again." : "");
    draw();
  },
};

// Whether this browser was signed in and did not sign out: then a refused request
// means the session ended (expired, revoked, the password reset) and the sign-in page
// says so, also after a reload, until someone signs in again. A first visit, or one
// after "Sign out", was never or is no longer signed in: it says nothing of the kind. Only a flag is kept (the
// session cookie itself is HttpOnly and invisible to the page).
const SIGNED_IN_KEY = "backline.signed-in";

function rememberSignedIn(yes) {
  try {
    if (yes) localStorage.setItem(SIGNED_IN_KEY, "1");
    else localStorage.removeItem(SIGNED_IN_KEY);
  } catch {
    /* storage disabled: only an in-page session can be noticed ending */
  }
}

function wasSignedIn() {
  try {
    return localStorage.getItem(SIGNED_IN_KEY) === "1";
  } catch {
    return false;
  }
}

function needsAccountSetup() {
  return app.me && (app.me.user.must_change_password || app.me.totp_enrolment_required);
}

// Any refused request (401) lands here, the first /auth/me of a visit included: only
// a session that existed, in this page or before a reload, is said to have ended.
onSignedOut(() => app.signedOut(app.me || wasSignedIn()
  ? "You were signed out (your session ended). Please sign in again." : ""));
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
      ${link("fixes", "Fixes", app.can("fixes:read"))}
      ${link("search", "Find sessions", app.can("agents:read"))}
      ${link("admin", "Admin", app.can("groups:read"))}
      ${link("audit", "Audit", app.can("audit:read"))}
      ${link("management", "Management reports", app.can("audit:read"))}
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
  rememberSignedIn(false);
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
        fixes: () => fixesView(app, arg),
        timeline: () => timelineView(app, arg),
        search: () => searchView(app),
        management: () => managementView(app),
      }[name]?.() ?? html`<section class="empty"><h1>Not found</h1>
        <p>There is no page here. <a href="#/agents">Go to the agents</a>.</p></section>`;
  }
  viewTemplate = view;
  render(html`${header()}<main id="main">${viewTemplate}</main>`, root);
}

window.addEventListener("hashchange", () => {
  app.visit += 1;
  if (route().name !== "session") leaveSession();
  if (route().name !== "timeline") leaveTimeline();
  draw();
});

async function boot() {
  try {
    await app.signedIn(await get("/auth/me"));
  } catch (err) {
    app.me = null;
    if (err.status === 0) app.notice = err.message; // the relay is unreachable, say so
    draw();
  }
}

boot();
