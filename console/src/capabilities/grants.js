// What a session is granted when the technician does not say: a copy of
// DEFAULT_GRANTS in common/capabilities.py (tests/unit/test_console_grants.py fails
// when they part). The session forms send a list only when the technician adds an
// opt-in capability (the terminal), so the relay's defaults apply otherwise.

export const DEFAULT_GRANTS = ["info", "diagnostics", "fix", "cobrowse"];

// Opt-in capabilities the session forms offer, with the label they show.
export const OPT_IN = [["shell", "Terminal (recorded; the agent's policy must allow it)"]];

export function grantsFrom(form) {
  const extra = OPT_IN.map(([name]) => name).filter((name) => form.get(`cap-${name}`) === "on");
  return extra.length ? [...DEFAULT_GRANTS, ...extra] : undefined;
}
