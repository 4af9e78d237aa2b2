// Finished terminal recordings of a session and their replay with asciinema-player.
// The relay checks a recording against its SHA-256 before serving it and audits each
// fetch (recording.played): the console fetches a recording once per "Play" and keeps
// the text while the player is open, so changing the speed (which rebuilds the
// player at the current position) is not another playback in the trail.

import * as AsciinemaPlayer from "asciinema-player";
import { recordingUrl, SPEEDS } from "./recordings.js";

export class Replay {
  constructor(recording, onChange) {
    this.recording = recording;
    this.onChange = onChange;
    this.state = "loading"; // loading -> ready | failed
    this.error = "";
    this.speed = 1;
    this.text = null;
    this.player = null;
    this.host = document.createElement("div");
    this.host.className = "replay-host";
  }

  async load() {
    try {
      const response = await fetch(recordingUrl(this.recording.id), {
        credentials: "same-origin", headers: { accept: "application/x-asciicast" },
      });
      if (!response.ok) {
        let detail = "";
        try {
          detail = (await response.json())?.detail || "";
        } catch {
          /* not JSON */
        }
        throw new Error(`the relay refused the recording (HTTP ${response.status}${detail ? `: ${detail}` : ""})`);
      }
      this.text = await response.text();
      this.state = "ready";
      this.mount(0, true);
    } catch (err) {
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

  dispose() {
    this.player?.dispose();
    this.player = null;
    this.host.remove();
  }
}
