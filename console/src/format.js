// Formatting helpers. Everything returned here is plain text: lit-html escapes it.

export function when(ts) {
  if (!ts) return "never";
  const d = new Date(ts * 1000);
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
}

export function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

export function worstSeverity(alerts) {
  const order = { critical: 3, warning: 2, info: 1 };
  let worst = null;
  for (const a of alerts || []) {
    if (!worst || (order[a.severity] || 0) > (order[worst] || 0)) worst = a.severity;
  }
  return worst;
}

export function toUnix(localValue) {
  if (!localValue) return "";
  const t = new Date(localValue).getTime();
  return Number.isFinite(t) ? String(t / 1000) : "";
}
