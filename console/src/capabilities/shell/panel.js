// The shell panel: a terminal on the customer's machine (xterm.js, ./terminal.js) with
// its connection state, role, recording marker, copy and paste; below it the
// session's finished recordings, replayed with asciinema-player (./replay.js).

import { html, nothing } from "lit-html";
import { when } from "../../format.js";
import { register } from "../registry.js";
import { listRecordings, PLAY_LIMIT_BYTES, recordingUrl, SPEEDS } from "./recordings.js";

// xterm.js and asciinema-player are most of the console's code: they are loaded when a
// terminal is first opened or a recording first played, not with every page.
const loadTerminal = () => import("./terminal.js");
const loadReplay = () => import("./replay.js");

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
  recordings: null, recordingsError: "", replay: null,
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
        reloadRecordings(ctx.session.id, true);
      }
      redraw();
    },
  });
  s.term = term;
  ctx.refresh();
  term.start(); // its host is in the page now
}

// The relay stores a recording when the channel ends, a moment after the socket
// closes: look again a few times (bounded) until a new one is listed.
async function reloadRecordings(sessionId, expectNew = false) {
  const before = s.recordings?.length ?? 0;
  for (let attempt = 0; attempt < (expectNew ? 8 : 1); attempt += 1) {
    if (attempt) await new Promise((r) => setTimeout(r, 500));
    if (s.sessionId !== sessionId) return;
    try {
      s.recordings = await listRecordings(sessionId);
      s.recordingsError = "";
    } catch (err) {
      s.recordingsError = err.message;
      break;
    }
    if (!expectNew || s.recordings.length > before) break;
  }
  redraw();
}

async function play(rec) {
  s.replay?.dispose();
  s.replay = null;
  let Replay;
  try {
    ({ Replay } = await loadReplay());
  } catch (err) {
    s.notice = `The player could not be loaded: ${err.message}`;
    redraw();
    return;
  }
  s.replay = new Replay(rec, () => redraw());
  redraw();
  s.replay.load();
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

function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function recordingsView(ctx) {
  let body;
  if (s.recordingsError) body = html`<p class="error" role="alert">${s.recordingsError}</p>`;
  else if (!s.recordings) body = html`<p class="muted">Loading…</p>`;
  else if (!s.recordings.length) body = html`<p class="muted" id="no-recordings">No finished terminal recordings in this session yet.</p>`;
  else {
    body = html`<table class="recordings" aria-label="Recordings"><thead><tr>
        <th scope="col">Started</th><th scope="col">Length</th><th scope="col">Size</th>
        <th scope="col">Technician</th><th scope="col">SHA-256</th><th scope="col"></th></tr></thead>
      <tbody>${s.recordings.map((r) => html`<tr data-recording=${r.id}>
        <td>${when(r.started_at)}</td>
        <td>${Number.isFinite(r.duration_s) ? `${r.duration_s.toFixed(1)} s` : "—"}</td>
        <td>${fmtBytes(r.bytes)}</td><td>${r.technician}</td>
        <td><code title=${r.sha256}>${String(r.sha256 || "").slice(0, 12)}</code></td>
        <td>${r.bytes > PLAY_LIMIT_BYTES
          ? html`<a href=${recordingUrl(r.id)} download>Download</a>
              <span class="muted">(too large to replay here)</span>`
          : html`<button type="button" @click=${() => play(r)}>Play</button>`}</td>
      </tr>`)}</tbody></table>`;
  }
  return html`<h3>Recordings</h3>
    <p class="actions"><button type="button" @click=${() => reloadRecordings(ctx.session.id)}>Refresh recordings</button></p>
    ${body}${replayView()}`;
}

function replayView() {
  const r = s.replay;
  if (!r) return nothing;
  const seek = (ev) => {
    ev.preventDefault();
    r.seek(Number(new FormData(ev.target).get("at")));
  };
  return html`<div class="replay" id="replay" data-state=${r.state} aria-label="Recording replay">
    <div class="actions">
      <label>Speed <select @change=${(ev) => r.setSpeed(Number(ev.target.value))}>
        ${SPEEDS.map((v) => html`<option value=${v} ?selected=${v === r.speed}>${v}×</option>`)}</select></label>
      <form class="inline" @submit=${seek}><label>Go to second <input name="at" type="number" min="0"
        step="0.5" value="0"></label><button type="submit">Go</button></form>
      <button type="button" @click=${() => r.seek("100%")}>Go to the end</button>
      <button type="button" @click=${() => { r.dispose(); s.replay = null; redraw(); }}>Close replay</button>
    </div>
    ${r.state === "loading" ? html`<p class="muted">Loading the recording…</p>` : nothing}
    ${r.state === "failed" ? html`<p class="error" role="alert">${r.error}</p>` : nothing}
    ${r.host}
  </div>`;
}

register({
  name: "shell",
  title: "Terminal",
  reset() {
    s.term?.dispose();
    s.replay?.dispose();
    s = fresh();
  },
  view(ctx) {
    redraw = ctx.refresh;
    if (s.sessionId !== ctx.session.id) {
      s.sessionId = ctx.session.id;
      reloadRecordings(ctx.session.id);
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
