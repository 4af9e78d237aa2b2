// "Management reports" (issue 14, docs/reports.md): incidents, time to resolve, fixes and
// sessions per group and period, from the audit trail. Every number is a button that
// lists what it is made of (the incidents, their sessions and the trail's events); the
// trend and the findings are drawn as plain SVG (no chart library: two bar charts did
// not need one, and nothing here sets a style attribute: the CSP allows none). "Print"
// prints the page with print CSS (styles.css, @media print); "CSV" downloads it.

import { html, nothing, svg } from "lit-html";
import { get, query } from "../api.js";
import { toUnix, when } from "../format.js";

const DAY = 86400;
const s = {
  visit: -1, report: null, error: "", groups: [], form: { group: "", since: "", until: "", bucket: "week" },
  drill: null, drillError: "", event: null,
};
let appRef = null;

const LABELS = {
  incidents_opened: "Incidents opened",
  incidents_resolved: "Incidents resolved",
  mttr_mean_s: "Mean time to resolve",
  mttr_median_s: "Median time to resolve",
  resolved_first_session: "Resolved on the first session",
  resolved_without_technician: "Resolved without a technician (the customer's fix)",
  cleared_on_their_own: "Alerts that cleared on their own",
  fixes_run: "Fixes run",
  fixes_succeeded: "Fixes that succeeded",
  fix_success_rate: "Fix success rate",
  self_service_fixes_run: "Self-service fixes run (reported by agents)",
  self_service_fixes_succeeded: "Self-service fixes that succeeded",
  sessions: "Sessions",
};

function params() {
  const f = s.form;
  // "Now" rounded up: the trail's times have microseconds, and an event of this very
  // second (an outcome just changed) must be inside the period, not after its end.
  const until = toUnix(f.until) || String(Math.ceil(Date.now() / 1000));
  const since = toUnix(f.since) || String(Number(until) - 28 * DAY);
  return { group: f.group, since, until, bucket: f.bucket };
}

async function load() {
  try {
    s.report = await get(`/management-reports${query(params())}`);
    s.error = "";
  } catch (err) {
    s.error = err.message;
  }
  appRef?.refresh();
}

async function loadGroups() {
  try {
    s.groups = (await get("/groups")).groups || [];
  } catch {
    s.groups = [];
  }
  appRef?.refresh();
}

async function drill(metric, key = "", label = "") {
  s.event = null;
  try {
    s.drill = await get(`/management-reports/members${query({ ...params(), metric, key })}`);
    s.drill.label = label || LABELS[metric] || `${metric} ${key}`;
    s.drillError = "";
  } catch (err) {
    s.drillError = err.message;
  }
  appRef?.refresh();
  // A bar at the top of the page opens a list at its foot: bring it into view.
  requestAnimationFrame(() => document.getElementById("drill")?.scrollIntoView({ block: "nearest" }));
}

async function showEvent(seq) {
  try {
    const page = await get(`/audit${query({ before: seq + 1, limit: 1 })}`);
    s.event = page.events[0] || null;
  } catch (err) {
    s.drillError = err.message;
  }
  appRef?.refresh();
}

export function duration(seconds) {
  if (seconds == null) return "—";
  if (seconds < 120) return `${Math.round(seconds)} s`;
  if (seconds < 7200) return `${Math.round(seconds / 60)} min`;
  if (seconds < 2 * DAY) return `${(seconds / 3600).toFixed(1)} h`;
  return `${(seconds / DAY).toFixed(1)} d`;
}

function shown(name, m) {
  if (m.value == null) return "—";
  if (name.startsWith("mttr")) return duration(m.value);
  if (name === "fix_success_rate") return `${Math.round(m.value * 1000) / 10} %`;
  return String(m.value);
}

function number(name, m, key = "") {
  return html`<button type="button" class="link number" data-metric=${name}
    title="What makes up this number" @click=${() => drill(name, key)}>${shown(name, m)}</button>`;
}

// The trend and the findings are numbers too: each bar is a control that lists what
// it is made of (like every number here), by mouse or keyboard (Tab, then Enter or
// Space). A bar is an SVG <g role="button" tabindex="0"> over a transparent hit area
// the height of the chart, so that a bar of 0 can be reached and opened as well.
// Every attribute is an SVG presentation attribute or a class: no style attribute.
const bucketKey = (t) => String(Math.trunc(t.start)); // the API's key: int(start)
const bucketDay = (t) => new Date(t.start * 1000).toISOString().slice(0, 10);
const bucketName = (t) => `${s.report.bucket === "day" ? "day" : "week of"} ${bucketDay(t)}`;
const TREND = ["incidents_opened", "incidents_resolved", "mttr_mean_s", "fixes_run", "fixes_succeeded"];

function activate(open) {
  return (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      open();
    }
  };
}

function drillTrend(t, name) {
  return () => drill(`trend.${name}`, bucketKey(t), `${LABELS[name] || name}, ${bucketName(t)}`);
}

function drillFinding(f) {
  return () => drill("finding", f.finding, `Incidents with the finding ${f.finding}`);
}

// One bar of the trend: the hit area (x, the chart's height), the bar, its name.
function trendBar(t, name, x, w, geo) {
  const v = t[name].value;
  const said = `${LABELS[name] || name}, ${bucketName(t)}: ${v}`;
  const open = drillTrend(t, name);
  return svg`<g class="bar-link" role="button" tabindex="0" aria-label=${said}
      data-metric="trend.${name}" data-key=${bucketKey(t)} @click=${open} @keydown=${activate(open)}>
    <rect class="hit" x=${x} y=${geo.pad} width=${w} height=${geo.H - geo.pad * 2}></rect>
    <rect class="bar ${name === "incidents_opened" ? "opened" : "resolved"}" x=${x} y=${geo.y(v)}
      width=${w} height=${geo.H - geo.pad - geo.y(v)}></rect>
    <title>${said}</title></g>`;
}

// A bar chart of the trend: incidents opened and resolved per bucket.
function trendChart(trend) {
  if (!trend.length) return nothing;
  const W = 640;
  const H = 180;
  const pad = 24;
  const max = Math.max(1, ...trend.map((t) => Math.max(t.incidents_opened.value, t.incidents_resolved.value)));
  const bw = (W - pad * 2) / trend.length;
  const geo = { H, pad, y: (v) => H - pad - ((H - pad * 2) * v) / max };
  const w = Math.max(1, bw / 2 - 3);
  const label = (t) => bucketDay(t).slice(5);
  return html`<figure class="chart" id="trend-chart"><figcaption>Incidents opened and resolved per ${s.report.bucket}
      <small class="muted no-print">(each bar lists its incidents)</small></figcaption>
    <svg viewBox="0 0 ${W} ${H}" role="group" aria-label="Incidents opened and resolved per ${s.report.bucket}">
      ${trend.map((t, i) => svg`
        ${trendBar(t, "incidents_opened", pad + i * bw + 2, w, geo)}
        ${trendBar(t, "incidents_resolved", pad + i * bw + bw / 2, w, geo)}
        ${trend.length <= 16 ? svg`<text class="axis" x=${pad + i * bw + bw / 2} y=${H - 6}>${label(t)}</text>` : nothing}`)}
      <text class="axis" x="2" y=${pad}>${max}</text>
      <line class="base" x1=${pad} x2=${W - pad} y1=${H - pad} y2=${H - pad}></line>
    </svg>
    <p class="legend"><span class="key opened"></span> opened <span class="key resolved"></span> resolved</p>
  </figure>`;
}

// The trend's numbers, each a button: what the bars show, and what they cannot (the
// mean time to resolve, the fixes run and succeeded, per bucket).
function trendTable(trend) {
  if (!trend.length) return nothing;
  const per = s.report.bucket === "day" ? "Day" : "Week of";
  return html`<table id="trend" class="trend"><caption>Per ${s.report.bucket}: incidents, time to resolve, fixes</caption>
    <thead><tr><th scope="col">${per}</th>${TREND.map((n) => html`<th scope="col">${LABELS[n] || n}</th>`)}</tr></thead>
    <tbody>${trend.map((t) => html`<tr data-key=${bucketKey(t)}><th scope="row">${bucketDay(t)}</th>
      ${TREND.map((n) => html`<td><button type="button" class="link number" data-metric="trend.${n}" data-key=${bucketKey(t)}
        title="What makes up this number" @click=${drillTrend(t, n)}>${shown(n, t[n])}</button></td>`)}</tr>`)}</tbody>
  </table>`;
}

function findingsChart(findings) {
  if (!findings.length) return html`<p class="muted">No critical finding opened an incident in this period.</p>`;
  const W = 640;
  const row = 22;
  const H = row * findings.length + 4;
  const max = Math.max(1, ...findings.map((f) => f.value));
  return html`<figure class="chart" id="findings-chart"><figcaption>Incidents by finding
      <small class="muted no-print">(each bar lists its incidents)</small></figcaption>
    <svg viewBox="0 0 ${W} ${H}" role="group" aria-label="Incidents by finding">
      ${findings.map((f, i) => {
        const open = drillFinding(f);
        const said = `${f.finding}: ${f.value} incident${f.value === 1 ? "" : "s"}`;
        return svg`<g class="bar-link" role="button" tabindex="0" aria-label=${said}
            data-metric="finding" data-key=${f.finding} @click=${open} @keydown=${activate(open)}>
          <rect class="hit" x="0" y=${i * row} width=${W} height=${row}></rect>
          <text class="axis" x="0" y=${i * row + 15}>${f.finding}</text>
          <rect class="bar opened" x="220" y=${i * row + 3} width=${Math.max(1, ((W - 260) * f.value) / max)} height=${row - 6}></rect>
          <text class="axis" x=${226 + ((W - 260) * f.value) / max} y=${i * row + 15}>${f.value}</text>
          <title>${said}</title></g>`;
      })}
    </svg></figure>`;
}

// A report's session opens where its reader can use it: the timeline (the read-only
// evidence view) for whoever cannot act on sessions, an auditor; the session page
// (its live controls) for those who can.
function sessionLink(id) {
  const page = appRef && appRef.can("agents:write") ? "session" : "timeline";
  return html`<a href="#/${page}/${encodeURIComponent(id)}"><code>${id.slice(0, 12)}</code></a> `;
}

function drillView() {
  if (s.drillError) return html`<p class="error" role="alert">${s.drillError}</p>`;
  const d = s.drill;
  if (!d) return nothing;
  return html`<section class="drill" aria-labelledby="drill-title" id="drill">
    <h2 id="drill-title">${d.label}: ${shown(d.metric.replace(/^trend\./, ""), d)}</h2>
    ${d.incidents.length ? html`<table><caption>Incidents</caption>
      <thead><tr><th scope="col">Incident</th><th scope="col">Group</th><th scope="col">Opened</th>
        <th scope="col">Resolved</th><th scope="col">Sessions</th></tr></thead>
      <tbody>${d.incidents.map((i) => html`<tr>
        <td><code>${i.id}</code>${i.findings.length ? html` <small>${i.findings.join(", ")}</small>` : nothing}</td>
        <td>${i.group || "—"}</td><td>${when(i.opened_at)}</td><td>${i.resolved_at ? when(i.resolved_at) : "open"}</td>
        <td>${i.sessions.map(sessionLink)}</td>
      </tr>`)}</tbody></table>` : nothing}
    ${d.sessions.length ? html`<p>Sessions: ${d.sessions.slice(0, 200).map(sessionLink)}
      ${d.sessions.length > 200 ? html`<span class="muted">and ${d.sessions.length - 200} more (in the API's answer)</span>` : nothing}</p>` : nothing}
    <p>Audit events: ${d.events.slice(0, 200).map((seq) => html`<button type="button" class="link" @click=${() => showEvent(seq)}>#${seq}</button> `)}
      ${d.events.length > 200 ? html`<span class="muted">and ${d.events.length - 200} more</span>` : nothing}</p>
    ${s.event ? html`<pre class="raw" aria-label="Audit event ${s.event.seq}">${JSON.stringify(s.event, null, 2)}</pre>` : nothing}
  </section>`;
}

export function managementView(app) {
  appRef = app;
  if (s.visit !== app.visit) {
    s.visit = app.visit;
    s.drill = null;
    load();
    loadGroups();
  }
  const r = s.report;
  const set = (name) => (e) => {
    s.form[name] = e.target.value;
  };
  const csv = `/api/v1/management-reports/csv${query(params())}`;
  let body;
  if (s.error) body = html`<p class="error" role="alert">${s.error}</p>`;
  else if (!r) body = html`<p class="muted">Loading…</p>`;
  else {
    body = html`<p class="period">${r.group ? html`Group <strong>${r.group}</strong>, ` : "All groups, "}
        ${when(r.since)} to ${when(r.until)} <small class="muted">(${r.events_read} trail events read in ${r.compute_ms} ms)</small></p>
      <dl class="metrics" id="metrics">${Object.entries(r.metrics).map(([name, m]) => html`
        <div><dt>${LABELS[name] || name}</dt><dd>${number(name, m)}</dd></div>`)}</dl>
      ${trendChart(r.trend)}
      ${trendTable(r.trend)}
      ${findingsChart(r.top_findings)}
      <h2>Sessions per technician</h2>
      ${r.technicians.length ? html`<table id="technicians"><thead><tr><th scope="col">Technician</th><th scope="col">Sessions</th></tr></thead>
        <tbody>${r.technicians.map((t) => html`<tr><td>${t.technician}</td><td>${number("technician", t, t.technician)}</td></tr>`)}</tbody></table>`
        : html`<p class="muted">No session in this period.</p>`}
      ${drillView()}`;
  }
  return html`<section aria-labelledby="management-title" class="management">
    <h1 id="management-title">Management reports</h1>
    <form class="inline no-print" aria-label="Report period" @submit=${(e) => { e.preventDefault(); s.drill = null; load(); }}>
      <label>Group <select name="group" @change=${set("group")}>
        <option value="">All groups</option>
        ${s.groups.map((g) => html`<option value=${g.name} ?selected=${s.form.group === g.name}>${g.name}</option>`)}
      </select></label>
      <label>From <input type="date" name="since" .value=${s.form.since} @change=${set("since")}></label>
      <label>To <input type="date" name="until" .value=${s.form.until} @change=${set("until")}></label>
      <label>Trend per <select name="bucket" @change=${set("bucket")}>
        <option value="week" ?selected=${s.form.bucket === "week"}>week</option>
        <option value="day" ?selected=${s.form.bucket === "day"}>day</option></select></label>
      <button type="submit">Show</button>
      <a class="button" href=${csv} download>CSV</a>
      <button type="button" @click=${() => window.print()}>Print</button>
    </form>
    ${body}
    <p class="muted small">How each number is counted: docs/reports.md. Counted from the audit trail only.</p>
  </section>`;
}
