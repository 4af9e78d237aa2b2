// Recordings, shared by the terminal panel, the co-browse panel and the auditor's session
// timeline: the list of a session's recordings, where each is fetched, the SHA-256 check
// of what was fetched, and a "shelf" (the list, its reload, the open replay) each page
// keeps one of. Light on purpose: the players (./terminal_player.js with
// asciinema-player, ./cobrowse_player.js with rrweb) are loaded on "Play".

import { get } from "../api.js";

// A recording is parsed whole in the page; past this the console offers the file
// instead of freezing the tab (a flood such as `yes | head -c 1G` records ~1 GiB).
export const PLAY_LIMIT_BYTES = 64 * 1024 * 1024;
export const SPEEDS = [0.5, 1, 2, 4, 8];

// The session's recordings of one capability (a terminal's, a co-browse's).
export async function listRecordings(sessionId, capability = "shell") {
  const body = await get(`/sessions/${encodeURIComponent(sessionId)}/recordings`);
  const all = Array.isArray(body?.recordings) ? body.recordings : [];
  return all.filter((r) => (r.capability || "shell") === capability);
}

export function recordingUrl(id) {
  return `/api/v1/recordings/${encodeURIComponent(id)}`;
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

export async function sha256Hex(buffer) {
  const digest = await crypto.subtle.digest("SHA-256", buffer);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Fetch evidence once and check it in the page: the SHA-256 of the bytes received is
// computed here (crypto.subtle) and compared with `expected` (the digest the audit
// trail recorded, when the caller has it; else the list's). The relay checks too, and
// refuses (409, naming both digests) a file the trail does not vouch for: that
// refusal is a check result as well, not only an error.
// Resolves to { text, computed, check: "verified" | "mismatch" | "refused", detail }.
export async function fetchChecked(url, expected, accept) {
  const response = await fetch(url, { credentials: "same-origin", headers: { accept } });
  if (!response.ok) {
    let body = null;
    try {
      body = await response.json();
    } catch {
      /* not JSON */
    }
    const detail = body?.detail || "";
    const err = new Error(`the relay refused it (HTTP ${response.status}${detail ? `: ${detail}` : ""})`);
    err.check = ["digest_mismatch", "row_altered", "not_in_trail"].includes(body?.error) ? "mismatch" : "refused";
    err.code = body?.error || "";
    err.detail = detail;
    throw err;
  }
  const buffer = await response.arrayBuffer();
  const computed = await sha256Hex(buffer);
  const text = new TextDecoder().decode(buffer);
  if (expected && computed !== expected) {
    return { text, computed, check: "mismatch",
      detail: `what arrived hashes to ${computed}, the audit trail recorded ${expected}` };
  }
  return { text, computed, check: expected ? "verified" : "unchecked", detail: "" };
}

// One page's recordings of one capability and its open replay. `loadPlayer` resolves
// to the player class (imported on first use); `onChange` redraws the page.
export class RecordingShelf {
  constructor({ capability, loadPlayer, onChange = () => {} }) {
    this.capability = capability;
    this.loadPlayer = loadPlayer;
    this.onChange = onChange;
    this.sessionId = null;
    this.recordings = null;
    this.error = "";
    this.notice = "";
    this.replay = null;
  }

  // The relay stores a recording when the channel ends, a moment after the socket
  // closes: with `expectNew`, look again a few times (bounded) until a new one is listed.
  async reload(sessionId, expectNew = false) {
    this.sessionId = sessionId;
    const before = this.recordings?.length ?? 0;
    for (let attempt = 0; attempt < (expectNew ? 8 : 1); attempt += 1) {
      if (attempt) await new Promise((r) => setTimeout(r, 500));
      if (this.sessionId !== sessionId) return;
      try {
        this.recordings = await listRecordings(sessionId, this.capability);
        this.error = "";
      } catch (err) {
        this.error = err.message;
        break;
      }
      if (!expectNew || this.recordings.length > before) break;
    }
    this.onChange();
  }

  // Replay `rec` (closing the one open). `options` go to the player (the digest to
  // check against, where to start).
  async play(rec, options = {}) {
    this.close(false);
    let Player;
    try {
      Player = await this.loadPlayer();
    } catch (err) {
      this.notice = `The player could not be loaded: ${err.message}`;
      this.onChange();
      return null;
    }
    const replay = new Player(rec, () => this.onChange(), options);
    this.replay = replay;
    this.onChange();
    await Promise.resolve(); // its host is in the page before it renders into it
    replay.load();
    return replay;
  }

  close(redraw = true) {
    this.replay?.dispose();
    this.replay = null;
    if (redraw) this.onChange();
  }
}
