// A terminal recording replayed with asciinema-player. The recording is fetched once per
// "Play" (each fetch is the audit event recording.played) and checked in the page
// (./index.js fetchChecked); the text is kept while the player is open, so changing
// the speed (which rebuilds the player at the current position) is not another
// playback in the trail.

import * as AsciinemaPlayer from "asciinema-player";
import { fetchChecked, recordingUrl, SPEEDS } from "./index.js";

// Pauses longer than this are shortened to it in the replay.
const IDLE_LIMIT_S = 2;

// The player's time of second `at` of an asciicast: asciinema-player shortens every
// pause longer than its idle limit to the limit (its timeLimiter: each event's delay
// past the limit is taken off every later event), so a moment of the recording (a
// search hit's second, from the index) is earlier on the player's clock. Its `startAt`
// is converted the same way inside the player; a poster's time is not.
export function playerSecond(text, at, limit = IDLE_LIMIT_S) {
  let previous = 0;
  let cut = 0;
  for (const line of text.split("\n").slice(1)) {
    let t;
    try {
      t = JSON.parse(line)[0];
    } catch {
      continue; // a blank or damaged line: the player skips it too
    }
    if (typeof t !== "number") continue;
    if (t >= at) break;
    if (t - previous > limit) cut += t - previous - limit;
    previous = t;
  }
  return Math.max(0, at - cut);
}

export class TerminalReplay {
  // options: { expected: the SHA-256 to check against (default: the list's),
  //            startAt: the second to open at (a search hit) }
  constructor(recording, onChange, options = {}) {
    this.recording = recording;
    this.onChange = onChange;
    this.expected = options.expected || recording.sha256 || "";
    this.startAt = Number(options.startAt) || 0;
    this.state = "loading"; // loading -> ready | failed
    this.error = "";
    this.check = null; // verified | mismatch | refused | unchecked
    this.computed = "";
    this.speed = 1;
    this.text = null;
    this.player = null;
    this.host = document.createElement("div");
    this.host.className = "replay-host";
  }

  async load() {
    try {
      const got = await fetchChecked(recordingUrl(this.recording.id), this.expected,
        "application/x-asciicast");
      this.check = got.check;
      this.computed = got.computed;
      if (got.check === "mismatch") throw new Error(got.detail);
      this.text = got.text;
      this.state = "ready";
      this.mount(this.startAt, !this.startAt);
    } catch (err) {
      this.check = err.check || this.check || "refused";
      this.state = "failed";
      this.error = err.message;
    }
    this.onChange();
  }

  // Opened paused at a second (a search hit), the player shows the screen at that second
  // (its poster) and plays on from there. Without the poster it showed the screen at 0:00
  // (or nothing, "--:--", without `preload`) until "play": its `startAt` only applies
  // when playback starts. The poster's time is on the player's clock (see playerSecond).
  mount(startAt, autoPlay) {
    this.player?.dispose();
    this.host.textContent = "";
    const poster = !autoPlay && startAt > 0 ? `npt:${playerSecond(this.text, startAt)}` : undefined;
    this.player = AsciinemaPlayer.create({ data: this.text }, this.host, {
      autoPlay, preload: true, startAt, poster, speed: this.speed, fit: "width",
      idleTimeLimit: IDLE_LIMIT_S, controls: true, terminalFontSize: "small",
    });
  }

  setSpeed(speed) {
    if (!SPEEDS.includes(speed) || speed === this.speed || !this.player) return;
    const at = this.player.getCurrentTime() || 0;
    this.speed = speed;
    this.mount(at, true);
    this.onChange();
  }

  // A number of seconds, or "100%" for the end.
  seek(where) {
    if (!this.player) return;
    const target = where === "100%" ? where : Math.max(0, Number(where));
    if (target !== "100%" && !Number.isFinite(target)) return;
    this.player.seek(target).catch(() => {});
  }

  now() {
    return this.player ? this.player.getCurrentTime() || 0 : 0;
  }

  dispose() {
    this.player?.dispose();
    this.player = null;
    this.host.remove();
  }
}

export { TerminalReplay as Replay };
