// The URL of a capability's WebSocket on this relay (same origin: the relay checks
// the Origin and the session cookie on every browser socket).

export function streamUrl(sessionId, capability, params) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const q = params ? `?${new URLSearchParams(params)}` : "";
  return `${scheme}://${location.host}/api/v1/sessions/${encodeURIComponent(sessionId)}/stream/${encodeURIComponent(capability)}${q}`;
}
