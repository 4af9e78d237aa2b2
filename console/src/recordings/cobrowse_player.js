// A co-browse recording (the agent's JSON lines) replayed with rrweb's Replayer, with
// play/pause, speed and seek. Fetched once per "Replay" and checked in the page
// (./index.js fetchChecked), like a terminal's.

import { Replayer } from "rrweb";
import { installCspShims } from "../capabilities/shell/csp_shims.js";
import { Joiner, guardFrame } from "../capabilities/cobrowse_live.js";
import { fetchChecked, recordingUrl } from "./index.js";

function pageSize(events) {
  const meta = [...events].reverse().find((e) => e?.type === 4 && e.data);
  return meta ? { w: Number(meta.data.width) || 1024, h: Number(meta.data.height) || 768 } : null;
}

// Scale the replayer's wrapper (page CSS pixels) to the host's width.
function fit(host, stage, size) {
  if (!size) return;
  const width = host.clientWidth || size.w;
  const scale = Math.min(1, width / size.w);
  stage.style.width = `${size.w}px`;
  stage.style.height = `${size.h}px`;
  stage.style.transform = `scale(${scale})`;
  stage.style.transformOrigin = "0 0";
  host.style.height = `${Math.ceil(size.h * scale)}px`;
}

const isEvent = (e) => e && typeof e.type === "number" && Number.isFinite(e.timestamp);

// The rrweb events of the recording's lines (other lines are the room's own: skipped).
// An event too large for one line comes as `rrweb_part` lines (docs/cobrowse.md),
// joined by the live view's Joiner: the same rules as the relay's, live or replayed.
export function rrwebEvents(text) {
  const events = [];
  const joiner = new Joiner();
  const keep = (e) => { if (isEvent(e)) events.push(e); };
  for (const line of text.split("\n")) {
    if (!line) continue;
    let m;
    try { m = JSON.parse(line); } catch { continue; }
    if (m?.type === "rrweb" && Array.isArray(m.events)) {
      joiner.interrupt();
      for (const e of m.events) keep(e);
    } else if (m?.type === "rrweb_part") {
      keep(joiner.part(m));
    }
  }
  return events.sort((a, b) => a.timestamp - b.timestamp);
}

export class CobrowseReplay {
  // options: { expected: the SHA-256 to check against (default: the list's),
  //            hostId: the replay host's id (default "cobrowse-replay") }
  constructor(recording, onChange, options = {}) {
    this.recording = recording;
    this.onChange = onChange;
    this.expected = options.expected || recording.sha256 || "";
    this.state = "loading"; // loading -> ready | failed
    this.error = "";
    this.check = null;
    this.computed = "";
    this.speed = 1;
    this.playing = false;
    this.total = 0;
    this.host = document.createElement("div");
    this.host.className = "cobrowse-host";
    this.host.id = options.hostId || "cobrowse-replay";
    this.stage = document.createElement("div");
    this.stage.className = "cobrowse-stage";
    this.host.append(this.stage);
    this.replayer = null;
  }

  async load() {
    try {
      const got = await fetchChecked(recordingUrl(this.recording.id), this.expected,
        "application/x-ndjson");
      this.check = got.check;
      this.computed = got.computed;
      if (got.check === "mismatch") throw new Error(got.detail);
      const events = rrwebEvents(got.text);
      if (events.length < 2) throw new Error("the recording holds no page to replay");
      this.state = "ready";
      this.onChange?.();
      await Promise.resolve();
      installCspShims();
      this.replayer = new Replayer(events, { root: this.stage, mouseTail: false, showWarning: false,
        speed: this.speed, triggerFocus: false });
      guardFrame(this.replayer.iframe);
      this.total = this.replayer.getMetaData().totalTime;
      fit(this.host, this.stage, pageSize(events));
      this.replayer.on("finish", () => { this.playing = false; this.onChange?.(); });
      this.play();
    } catch (err) {
      this.check = err.check || this.check || "refused";
      this.state = "failed";
      this.error = err.message;
      this.onChange?.();
    }
  }

  now() {
    return this.replayer ? this.replayer.getCurrentTime() : 0;
  }

  play() {
    if (!this.replayer) return;
    // Before its first play rrweb's clock reads minus the first event's timestamp (its
    // baseline is 0): from there nothing after the first full snapshot was ever due.
    const at = this.now();
    this.replayer.play(at >= this.total || at < 0 ? 0 : at);
    this.playing = true;
    this.onChange?.();
  }

  pause() {
    this.replayer?.pause();
    this.playing = false;
    this.onChange?.();
  }

  setSpeed(speed) {
    this.speed = speed;
    this.replayer?.setConfig({ speed });
    this.onChange?.();
  }

  seek(ms) {
    if (!this.replayer) return;
    const at = Math.max(0, Math.min(this.total, ms));
    if (this.playing) this.replayer.play(at);
    else this.replayer.pause(at);
    this.onChange?.();
  }

  dispose() {
    try { this.replayer?.pause(); this.replayer?.destroy(); } catch { /* gone */ }
    this.replayer = null;
    this.host.remove();
  }
}

export { CobrowseReplay as Replay };
