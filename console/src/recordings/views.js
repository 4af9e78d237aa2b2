// The views of a RecordingShelf (./index.js): the recordings table and the replay panel
// of each kind, shared by the terminal panel, the co-browse panel and the timeline.

import { html, nothing } from "lit-html";
import { when } from "../format.js";
import { fmtBytes, PLAY_LIMIT_BYTES, recordingUrl, SPEEDS } from "./index.js";

const KINDS = {
  shell: {
    label: "Recordings", row: "data-recording", emptyId: "no-recordings", button: "Play",
    empty: "No finished terminal recordings in this session yet.", size: true,
  },
  cobrowse: {
    label: "Co-browse recordings", row: "data-cobrowse-recording", emptyId: "no-cobrowse-recordings",
    button: "Replay", empty: "No finished co-browse recordings in this session yet.", size: false,
  },
};

// What the page's own check of a fetched recording found, shown next to the player
// (`what`: what it is, for the timeline's fix outputs and diagnostics reports).
export function checkBadge(replay, expected, what = "recording") {
  if (!replay || !replay.check || replay.check === "unchecked") return nothing;
  if (replay.check === "verified") {
    return html`<p class="digest verified" data-check="verified" role="status">✔ SHA-256 verified:
      <code title=${replay.computed}>${replay.computed}</code> is what the audit trail recorded.</p>`;
  }
  if (replay.check === "mismatch") {
    return html`<p class="digest mismatch" data-check="mismatch" role="alert">✖ DIGEST MISMATCH:
      this ${what} is not what the audit trail recorded${expected ? html` (<code>${expected}</code>)` : nothing}.
      ${replay.error}</p>`;
  }
  return nothing;
}

export function shelfTable(shelf, onRefresh) {
  const k = KINDS[shelf.capability];
  let body;
  if (shelf.error) body = html`<p class="error" role="alert">${shelf.error}</p>`;
  else if (!shelf.recordings) body = html`<p class="muted">Loading…</p>`;
  else if (!shelf.recordings.length) body = html`<p class="muted" id=${k.emptyId}>${k.empty}</p>`;
  else {
    const row = (r) => html`<td>${when(r.started_at)}</td>
        <td>${Number.isFinite(r.duration_s) ? `${r.duration_s.toFixed(1)} s` : "—"}</td>
        ${k.size ? html`<td>${fmtBytes(r.bytes)}</td>` : nothing}<td>${r.technician}</td>
        <td><code title=${r.sha256}>${String(r.sha256 || "").slice(0, 12)}</code></td>
        <td>${r.bytes > PLAY_LIMIT_BYTES
          ? html`<a href=${recordingUrl(r.id)} download>Download</a>
              <span class="muted">(too large to replay here)</span>`
          : html`<button type="button" @click=${() => shelf.play(r)}>${k.button}</button>`}</td>`;
    body = html`<table class="recordings" aria-label=${k.label}><thead><tr>
        <th scope="col">Started</th><th scope="col">Length</th>${k.size ? html`<th scope="col">Size</th>` : nothing}
        <th scope="col">Technician</th><th scope="col">SHA-256</th><th scope="col"></th></tr></thead>
      <tbody>${shelf.recordings.map((r) => (shelf.capability === "shell"
        ? html`<tr data-recording=${r.id}>${row(r)}</tr>`
        : html`<tr data-cobrowse-recording=${r.id}>${row(r)}</tr>`))}</tbody></table>`;
  }
  return html`<h3>${k.label}</h3>
    <p class="actions"><button type="button" @click=${onRefresh}>${shelf.capability === "shell" ? "Refresh recordings" : "Refresh"}</button></p>
    ${shelf.notice ? html`<p class="notice" role="status">${shelf.notice}</p>` : nothing}
    ${body}`;
}

export function terminalReplayView(shelf, { id = "replay", expected = "" } = {}) {
  const r = shelf.replay;
  if (!r) return nothing;
  const seek = (ev) => {
    ev.preventDefault();
    r.seek(Number(new FormData(ev.target).get("at")));
  };
  return html`<div class="replay" id=${id} data-state=${r.state} data-recording=${r.recording.id}
      aria-label="Recording replay">
    <div class="actions">
      <label>Speed <select @change=${(ev) => r.setSpeed(Number(ev.target.value))}>
        ${SPEEDS.map((v) => html`<option value=${v} ?selected=${v === r.speed}>${v}×</option>`)}</select></label>
      <form class="inline" @submit=${seek}><label>Go to second <input name="at" type="number" min="0"
        step="0.5" value=${r.startAt || 0}></label><button type="submit">Go</button></form>
      <button type="button" @click=${() => r.seek("100%")}>Go to the end</button>
      <button type="button" @click=${() => shelf.close()}>Close replay</button>
    </div>
    ${checkBadge(r, expected)}
    ${r.state === "loading" ? html`<p class="muted">Loading the recording…</p>` : nothing}
    ${r.state === "failed" && r.check !== "mismatch" ? html`<p class="error" role="alert">${r.error}</p>` : nothing}
    ${r.host}
  </div>`;
}

export function cobrowseReplayView(shelf, { id = "cobrowse-replay-panel", expected = "" } = {}) {
  const r = shelf.replay;
  if (!r) return nothing;
  const seek = (ev) => {
    ev.preventDefault();
    r.seek(Number(new FormData(ev.target).get("at")) * 1000);
  };
  return html`<div class="replay" id=${id} data-state=${r.state} data-recording=${r.recording.id}
      aria-label="Co-browse replay">
    <div class="actions">
      ${r.playing ? html`<button type="button" @click=${() => r.pause()}>Pause</button>`
        : html`<button type="button" @click=${() => r.play()} ?disabled=${r.state !== "ready"}>Play</button>`}
      <label>Speed <select id="cobrowse-speed" @change=${(ev) => r.setSpeed(Number(ev.target.value))}>
        ${SPEEDS.map((v) => html`<option value=${v} ?selected=${v === r.speed}>${v}×</option>`)}</select></label>
      <form class="inline" id="cobrowse-seek" @submit=${seek}><label>Go to second <input name="at" type="number" min="0"
        step="0.5" value="0"></label><button type="submit">Go</button></form>
      <span class="muted">${(r.total / 1000).toFixed(1)} s in all</span>
      <button type="button" @click=${() => shelf.close()}>Close replay</button>
    </div>
    ${checkBadge(r, expected)}
    ${r.state === "loading" ? html`<p class="muted">Loading the recording…</p>` : nothing}
    ${r.state === "failed" && r.check !== "mismatch" ? html`<p class="error" role="alert">${r.error}</p>` : nothing}
    ${r.host}
  </div>`;
}
