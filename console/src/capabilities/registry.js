// The panel registry: one panel per capability. The session page asks it for the
// panels of the capabilities the session was granted (the session row lists them),
// in the order they were registered, and shows nothing for a capability the console
// has no panel for. Adding a capability's panel is one module that calls register()
// and one import in ./index.js.

const panels = new Map();

// A panel: {name, title, view(ctx), reset?()}. ctx is {app, session, ready,
// mayUse, mayWatch, refresh}: `ready` when the session's SSH is up, `mayUse` when the
// signed-in user may run capabilities in it (agents:write and being its technician),
// `mayWatch` when they may watch what runs (agents:write); the relay checks again.
export function register(panel) {
  if (!panel?.name || typeof panel.view !== "function") throw new Error("a panel needs a name and a view");
  if (panels.has(panel.name)) throw new Error(`panel ${panel.name} registered twice`);
  panels.set(panel.name, panel);
}

export function panelsFor(granted) {
  const names = new Set(granted || []);
  return [...panels.values()].filter((p) => names.has(p.name));
}

// Called when the session page moves to another session: each panel drops what it
// held for the previous one (a run, a terminal, a player).
export function resetPanels() {
  for (const p of panels.values()) p.reset?.();
}
