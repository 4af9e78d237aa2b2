// A session's finished terminal recordings: the list and where each is fetched. Light
// on purpose: the player itself (./replay.js, asciinema-player) is loaded on "Play".

import { get } from "../../api.js";

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
