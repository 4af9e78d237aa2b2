// The co-browse panel: the customer's browser, seen live (./cobrowse_live.js, rrweb's
// Replayer, loaded on first use) and guided only when the customer grants control in
// the agent's own window. The consent and control status is always shown while a
// co-browse is open; "Ask for control", "Propose URL" and the screencast switch are the
// technician's; a colleague watches with "Observe the co-browse" (the relay's ?watch=1: sees, never
// sends). Below: the session's co-browse recordings, replayed with speed and seek.

import { html, nothing } from "lit-html";
import { register } from "./registry.js";
import { RecordingShelf } from "../recordings/index.js";
import { cobrowseReplayView, shelfTable } from "../recordings/views.js";

const loadLive = () => import("./cobrowse_live.js");
// The recordings' list and rrweb replay are shared with the session timeline.
const loadReplay = async () => (await import("../recordings/cobrowse_player.js")).CobrowseReplay;

const STATE_TEXT = {
  connecting: "Connecting… (the customer is asked in the agent's window)",
  open: "Connected",
  ended: "Ended",
  failed: "Ended with an error",
  refused: "Refused",
};
const CONSENT_TEXT = { yes: "given", no: "refused", timeout: "not answered (refused)" };
const CONTROL_TEXT = {
  none: "not granted", granted: "granted: your clicks and keys reach the page",
  resumed: "granted: your clicks and keys reach the page",
  paused: "paused (the customer is using their mouse or keyboard)",
  revoked: "revoked", refused: "refused by the customer",
};

const fresh = () => ({
  sessionId: null, live: null, notice: "",
  shelf: new RecordingShelf({ capability: "cobrowse", loadPlayer: loadReplay, onChange: () => redraw() }),
});
let s = fresh();
let redraw = () => {};

async function open(ctx, watch, start) {
  s.live?.dispose();
  s.live = null;
  s.notice = "";
  let LiveView;
  try {
    ({ LiveView } = await loadLive());
  } catch (err) {
    s.notice = `The co-browse view could not be loaded: ${err.message}`;
    redraw();
    return;
  }
  if (s.sessionId !== ctx.session.id) return;
  const live = new LiveView({
    sessionId: ctx.session.id, watch, start,
    onChange: () => {
      if (["ended", "failed"].includes(live.state) && !live.reloaded) {
        live.reloaded = true;
        s.shelf.reload(ctx.session.id, true);
      }
      redraw();
    },
  });
  s.live = live;
  redraw();
  live.start();
}

function startView(ctx) {
  const l = s.live;
  if (l && ["connecting", "open"].includes(l.state)) return nothing;
  const submit = (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const url = String(form.get("url") || "").trim();
    const reason = String(form.get("reason") || "").trim();
    open(ctx, false, { url: url || null, reason, screencast: false });
  };
  return html`<form class="inline" id="cobrowse-start" @submit=${submit} aria-label="Start a co-browse">
      <label>URL to open (optional) <input name="url" type="url" maxlength="2048"
        pattern="https?://.+" placeholder="https://…"></label>
      <label>Why <input name="reason" maxlength="200"></label>
      <button type="submit" ?disabled=${!ctx.ready || !ctx.mayUse}>Start co-browse</button>
      <button type="button" id="cobrowse-watch" @click=${() => open(ctx, true, null)}
        ?disabled=${!ctx.ready || !ctx.mayWatch}>Observe the co-browse</button>
    </form>`;
}

function statusView(l) {
  if (!l) return nothing;
  const consent = l.consent?.view ? CONSENT_TEXT[l.consent.view] || l.consent.view : "waiting";
  const control = l.asked ? "asked, waiting for the customer" : CONTROL_TEXT[l.control] || l.control;
  return html`<div class="term-bar cobrowse-bar" role="group" aria-label="Co-browse status">
    <span id="cobrowse-state" class="conn ${l.state}" role="status" aria-live="polite">${STATE_TEXT[l.state] || l.state}</span>
    <span id="cobrowse-consent" class="badge">Consent to view: ${consent}</span>
    <span id="cobrowse-control" class="badge ${l.inControl ? "recorded" : ""}"
      data-control=${l.control}>Control: ${control}</span>
    <span class="role ${l.role === "control" ? "control" : "view"}" id="cobrowse-role">${
      l.role === "watch" ? "Watching (you cannot send anything)" : "Technician"}</span>
    <span class="badge recorded" title="What the customer's page shows is recorded on the relay">● Recorded</span>
    ${l.url ? html`<span class="muted">Page <code id="cobrowse-url">${l.url.slice(0, 200)}</code>${l.private ? html` <strong id="cobrowse-private">private: not shown</strong>` : nothing}</span>` : nothing}
  </div>
  ${l.hidden.length ? html`<p class="muted" id="cobrowse-hidden">Hidden from you on the customer's side: ${l.hidden.join(", ")}</p>` : nothing}`;
}

function actionsView(l) {
  if (!l || l.state !== "open" || l.role !== "control") return nothing;
  const propose = (ev) => {
    ev.preventDefault();
    const url = String(new FormData(ev.target).get("url") || "").trim();
    if (url) l.proposeUrl(url);
  };
  return html`<div class="actions">
    ${l.inControl || l.control === "paused"
      ? html`<button type="button" id="cobrowse-release" @click=${() => l.releaseControl()}>Release control</button>`
      : html`<button type="button" id="cobrowse-ask" @click=${() => l.askControl()} ?disabled=${l.asked}>Ask for control</button>`}
    <form class="inline" id="cobrowse-propose" @submit=${propose} aria-label="Propose a URL">
      <label>Propose URL <input name="url" type="url" maxlength="2048" pattern="https?://.+" required></label>
      <button type="submit">Propose</button></form>
    <label><input type="checkbox" id="cobrowse-screencast" .checked=${l.screencast}
      @change=${(ev) => l.setScreencast(ev.target.checked)}> Screencast (images, for canvas or cross-origin content)</label>
    <button type="button" id="cobrowse-end" @click=${() => l.end()}>End co-browse</button>
  </div>`;
}

function liveView(l) {
  if (!l) return nothing;
  return html`
    ${l.error ? html`<p class="error" role="alert" id="cobrowse-error">${l.error}</p>` : nothing}
    ${l.notice ? html`<p class="notice" role="status" id="cobrowse-notice">${l.notice}</p>` : nothing}
    ${l.host}
    ${l.frame ? html`<figure class="cobrowse-frame"><img id="cobrowse-frame" alt="Screencast of the customer's page"
      src=${l.frame.src} width=${l.frame.w} height=${l.frame.h}><figcaption class="muted">Screencast</figcaption></figure>` : nothing}
    ${l.recording ? html`<p class="muted">Recorded as <code>${l.recording.id}</code> (SHA-256 <code>${String(l.recording.sha256).slice(0, 12)}</code>)</p>` : nothing}`;
}

function recordingsView(ctx) {
  return html`${shelfTable(s.shelf, () => s.shelf.reload(ctx.session.id))}${cobrowseReplayView(s.shelf)}`;
}

register({
  name: "cobrowse",
  title: "Co-browse",
  reset() {
    s.live?.dispose();
    s.shelf.close(false);
    s = fresh();
  },
  view(ctx) {
    redraw = ctx.refresh;
    if (s.sessionId !== ctx.session.id) {
      s.sessionId = ctx.session.id;
      s.shelf.reload(ctx.session.id);
    }
    return html`<section class="panel card" data-capability="cobrowse" aria-labelledby="panel-cobrowse">
      <h2 id="panel-cobrowse">Co-browse</h2>
      <p class="muted">The customer's browser, opened by the agent with their consent and mirrored
        here as the page (not video). What is private stays on their side. Your clicks and keys
        reach the page only while the customer grants control, in the agent's own window.</p>
      ${startView(ctx)}
      ${statusView(s.live)}
      ${actionsView(s.live)}
      ${s.notice ? html`<p class="notice" role="status">${s.notice}</p>` : nothing}
      ${liveView(s.live)}
      ${recordingsView(ctx)}
    </section>`;
  },
});
