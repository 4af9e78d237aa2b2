// The console's live socket: agent presence and audit events pushed by the relay.
// It reconnects by itself with capped, jittered backoff and reports its state so
// the header can show when the live view is stale.

const handlers = new Set();
const stateHandlers = new Set();
let socket = null;
let attempt = 0;
let timer = null;
let wanted = false;
let state = "offline";

function setState(next) {
  state = next;
  for (const fn of stateHandlers) fn(next);
}

export function liveState() {
  return state;
}

export function onLive(fn) {
  handlers.add(fn);
  return () => handlers.delete(fn);
}

export function onLiveState(fn) {
  stateHandlers.add(fn);
}

function schedule() {
  if (!wanted || timer) return;
  const delay = Math.random() * Math.min(10000, 500 * 2 ** attempt);
  attempt += 1;
  timer = setTimeout(() => {
    timer = null;
    connect();
  }, delay);
}

function connect() {
  if (!wanted) return;
  setState(attempt === 0 ? "connecting" : "reconnecting");
  const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/v1/live`;
  const ws = new WebSocket(url);
  socket = ws;
  ws.addEventListener("message", (ev) => {
    let event;
    try {
      event = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (event.type === "hello") {
      attempt = 0;
      setState("live");
      for (const fn of handlers) fn({ type: "resync" });
      return;
    }
    if (event.type === "keepalive") return;
    for (const fn of handlers) fn(event);
  });
  ws.addEventListener("close", (ev) => {
    if (socket !== ws) return;
    socket = null;
    if (!wanted) return setState("offline");
    setState("reconnecting");
    if (ev.code === 4401) {
      for (const fn of handlers) fn({ type: "signed_out" });
    }
    schedule();
  });
}

export function startLive() {
  if (wanted) return;
  wanted = true;
  attempt = 0;
  connect();
}

export function stopLive() {
  wanted = false;
  clearTimeout(timer);
  timer = null;
  if (socket) socket.close(1000);
  socket = null;
  setState("offline");
}
