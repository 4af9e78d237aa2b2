// The shell panel: a terminal on the customer's machine (xterm.js, ./terminal.js) with
// its connection state, role, recording marker, copy and paste; below it the
// session's finished recordings, replayed with asciinema-player (../../recordings/: the
// list and the players are shared with the co-browse panel and the session timeline).

import { html, nothing } from "lit-html";
import { register } from "../registry.js";
import { RecordingShelf } from "../../recordings/index.js";
import { shelfTable, terminalReplayView } from "../../recordings/views.js";

// xterm.js and asciinema-player are most of the console's code: they are loaded when a
// terminal is first opened or a recording first played, not with every page.
const loadTerminal = () => import("./terminal.js");
const loadReplay = async () => (await import("../../recordings/terminal_player.js")).TerminalReplay;

const STATE_TEXT = {
  connecting: "Connecting…",
  waiting: "Waiting for the agent (the customer may be asked)…",
  open: "Connected",
  closing: "Closing…",
  closed: "Closed",
  ended: "Ended",
  failed: "Ended",
  refused: "Refused",
};

// ChannelExit.REFUSED (common/capabilities.py): what the agent ends a channel with when
// its policy or the customer says no, also midway (the customer closed the indicator).
const REFUSED_EXIT = 77;

const fresh = () => ({
  sessionId: null, term: null, opening: false, notice: "",
  shelf: new RecordingShelf({ capability: "shell", loadPlayer: loadReplay, onChange: () => redraw() }),
});
let s = fresh();
let redraw = () => {};

async function openTerminal(ctx, join = null) {
  s.term?.dispose();
  s.term = null;
  s.notice = "";
  s.opening = true;
  ctx.refresh();
  let TerminalView;
  try {
    ({ TerminalView } = await loadTerminal());
  } catch (err) {
    s.notice = `The terminal could not be loaded: ${err.message}`;
    return;
  } finally {
    s.opening = false;
    redraw();
  }
  if (s.sessionId !== ctx.session.id) return; // the page moved on meanwhile
  const term = new TerminalView({
    sessionId: ctx.session.id, join,
    onChange: () => {
      if (["ended", "failed", "closed"].includes(term.state) && term.opened && !term.recordingsReloaded) {
        term.recordingsReloaded = true;
        s.shelf.reload(ctx.session.id, true);
      }
      redraw();
    },
  });
  s.term = term;
  ctx.refresh();
  term.start(); // its host is in the page now
}

async function paste() {
  try {
    s.term?.paste(await navigator.clipboard.readText());
  } catch {
    s.notice = "The browser did not allow reading the clipboard: paste with Ctrl+Shift+V instead.";
    redraw();
  }
  s.term?.term.focus();
}

async function copy() {
  const ok = await s.term?.copy();
  s.notice = ok ? "Copied the selection." : "Select text in the terminal first (then Copy or Ctrl+Shift+C).";
  redraw();
}

function statusView(t) {
  if (!t) return nothing;
  const live = ["open", "waiting", "connecting", "closing"].includes(t.state);
  return html`<div class="term-bar" role="group" aria-label="Terminal status">
    <span id="term-state" class="conn ${t.state}" role="status" aria-live="polite">${
      t.state === "open" && !t.shellSpoke ? "Connected, waiting for the shell (the customer may be asked)…"
        : STATE_TEXT[t.state] || t.state}${
      t.state === "ended" && t.exitStatus !== null ? ` (exit status ${t.exitStatus}${
        t.exitStatus === REFUSED_EXIT ? ": the customer's side ended it" : ""})` : ""}</span>
    ${t.role && live ? html`<span id="term-role" class="role ${t.role}">${t.role === "control"
      ? "You have control" : "View only (another technician has control)"}</span>` : nothing}
    ${t.recorded === true ? html`<span id="term-recorded" class="badge recorded"
        title="Everything shown in this terminal is recorded on the relay">● Recorded</span>`
      : t.recorded === false ? html`<span id="term-recorded" class="badge unrecorded">Not recorded</span>` : nothing}
    ${t.keystrokesRecorded ? html`<span id="term-keystrokes" class="badge keystrokes"
        title="The relay also records what is typed, passwords included">Keystrokes recorded</span>` : nothing}
    ${live || t.state === "ended" ? html`<span id="term-size" class="muted">${t.size.cols}×${t.size.rows}</span>` : nothing}
    ${t.terminalId && t.role === "control" && t.state === "open"
      ? html`<span class="muted">Terminal <code id="term-id">${t.terminalId}</code></span>` : nothing}
  </div>`;
}

function controlsView(ctx, t) {
  const live = t && ["connecting", "waiting", "open"].includes(t.state);
  const canType = t?.state === "open" && t.role === "control";
  return html`<p class="actions">
    ${live ? html`<button type="button" @click=${() => t.close()}>Close terminal</button>`
      : html`<button type="button" @click=${() => openTerminal(ctx)}
          ?disabled=${!ctx.ready || !ctx.mayUse || s.opening}>Open terminal</button>`}
    ${t ? html`<button type="button" @click=${copy} ?disabled=${!t}>Copy</button>
      <button type="button" @click=${paste} ?disabled=${!canType}>Paste</button>` : nothing}
  </p>`;
}

function joinView(ctx) {
  if (s.term && ["connecting", "waiting", "open"].includes(s.term.state)) return nothing;
  const submit = (ev) => {
    ev.preventDefault();
    const id = String(new FormData(ev.target).get("terminal") || "").trim();
    if (id) openTerminal(ctx, id);
  };
  return html`<details class="join"><summary>Watch a terminal a colleague opened</summary>
    <form class="inline" @submit=${submit} aria-label="Join a terminal">
      <label>Terminal <input name="terminal" maxlength="64" pattern="[A-Za-z0-9_-]+" required></label>
      <button type="submit" ?disabled=${!ctx.ready || !ctx.mayWatch}>Watch</button>
    </form></details>`;
}

function grantView(t) {
  if (!t || t.state !== "open" || t.role !== "control") return nothing;
  const submit = (ev) => {
    ev.preventDefault();
    const to = String(new FormData(ev.target).get("to") || "").trim();
    if (to) t.grant(to);
  };
  return html`<form class="inline grant" @submit=${submit} aria-label="Hand control">
    <label>Hand control to <input name="to" maxlength="64" placeholder="username" required></label>
    <button type="submit">Hand over</button></form>`;
}

function recordingsView(ctx) {
  return html`${shelfTable(s.shelf, () => s.shelf.reload(ctx.session.id))}${terminalReplayView(s.shelf)}`;
}

register({
  name: "shell",
  title: "Terminal",
  reset() {
    s.term?.dispose();
    s.shelf.close(false);
    s = fresh();
  },
  view(ctx) {
    redraw = ctx.refresh;
    if (s.sessionId !== ctx.session.id) {
      s.sessionId = ctx.session.id;
      s.shelf.reload(ctx.session.id);
    }
    const t = s.term;
    return html`<section class="panel card" data-capability="shell" aria-labelledby="panel-shell">
      <h2 id="panel-shell">Terminal</h2>
      <p class="muted">A shell on the customer's machine, if its policy allows it. Copy with
        Ctrl+Shift+C, paste with Ctrl+Shift+V (Ctrl+C interrupts).</p>
      ${controlsView(ctx, t)}
      ${statusView(t)}
      ${t?.error ? html`<p class="error" role="alert" id="term-error">${t.error}</p>` : nothing}
      ${s.notice ? html`<p class="notice" role="status">${s.notice}</p>` : nothing}
      ${t?.notice ? html`<p class="notice" role="status" id="term-notice">${t.notice}</p>` : nothing}
      ${t ? t.host : nothing}
      ${grantView(t)}
      ${joinView(ctx)}
      ${recordingsView(ctx)}
    </section>`;
  },
});
