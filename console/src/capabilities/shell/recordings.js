// A session's finished terminal recordings: the list and where each is fetched. Light
// on purpose: the player itself (./replay.js, asciinema-player) is loaded on "Play".

import { get } from "../../api.js";

// A recording is parsed whole in the page; past this the console offers the file
// instead of freezing the tab (a flood such as `yes | head -c 1G` records ~1 GiB).
export const PLAY_LIMIT_BYTES = 64 * 1024 * 1024;
export const SPEEDS = [0.5, 1, 2, 4, 8];

export async function listRecordings(sessionId) {
  const body = await get(`/sessions/${encodeURIComponent(sessionId)}/recordings`);
  return Array.isArray(body?.recordings) ? body.recordings : [];
}

export function recordingUrl(id) {
  return `/api/v1/recordings/${encodeURIComponent(id)}`;
}
