// A terminal recording replayed with asciinema-player. The recording is fetched once per
// "Play" (each fetch is the audit event recording.played) and checked in the page
// (./index.js fetchChecked); the text is kept while the player is open, so changing
// the speed (which rebuilds the player at the current position) is not another
// playback in the trail.

import * as AsciinemaPlayer from "asciinema-player";
import { fetchChecked, recordingUrl, SPEEDS } from "./index.js";

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

  mount(startAt, autoPlay) {
    this.player?.dispose();
    this.host.textContent = "";
    this.player = AsciinemaPlayer.create({ data: this.text }, this.host, {
      autoPlay, startAt, speed: this.speed, fit: "width", idleTimeLimit: 2,
      controls: true, terminalFontSize: "small",
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
