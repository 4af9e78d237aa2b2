// The info panel: ask the agent who it is and what its local policy allows, so the
// technician knows before trying a capability whether the customer's machine will
// refuse it. One REST call (one SSH channel); every value is shown as text.

import { html, nothing } from "lit-html";
import { post } from "../api.js";
import { register } from "./registry.js";

let state = { busy: false, result: null, error: "" };

async function ask(ctx) {
  state = { busy: true, result: null, error: "" };
  ctx.refresh();
  try {
    const r = await post(`/sessions/${encodeURIComponent(ctx.session.id)}/channels/info`);
    if (r.exit_status !== 0 || !r.output || typeof r.output !== "object") {
      state.error = `The agent answered with exit status ${r.exit_status}.`;
    } else {
      state.result = r.output;
    }
  } catch (err) {
    state.error = `Refused: ${err.message}`;
  } finally {
    state.busy = false;
    ctx.refresh();
  }
}

function policyView(policy) {
  const caps = policy?.capabilities;
  if (!caps || typeof caps !== "object") return nothing;
  return html`<table class="policy" aria-label="Agent policy"><thead><tr>
      <th scope="col">Capability</th><th scope="col">The agent's policy</th></tr></thead>
    <tbody>${Object.entries(caps).map(([name, decision]) => html`<tr data-capability=${name}>
      <td>${name}</td><td>${typeof decision === "string" ? decision : JSON.stringify(decision)}</td></tr>`)}</tbody>
  </table>${policy.source ? html`<p class="muted">Policy from <code>${String(policy.source)}</code></p>` : nothing}`;
}

register({
  name: "info",
  title: "Agent info",
  reset() {
    state = { busy: false, result: null, error: "" };
  },
  view(ctx) {
    const a = state.result?.agent;
    return html`<section class="panel card" data-capability="info" aria-labelledby="panel-info">
      <h2 id="panel-info">Agent info</h2>
      <p class="actions"><button type="button" @click=${() => ask(ctx)}
        ?disabled=${!ctx.ready || state.busy || !ctx.mayUse}>${state.busy ? "Asking…" : "Ask the agent"}</button></p>
      ${state.error ? html`<p class="error" role="alert">${state.error}</p>` : nothing}
      ${a ? html`<dl class="facts" id="agent-info">
        <dt>Host</dt><dd>${String(a.hostname ?? "—")}</dd>
        <dt>System</dt><dd>${String(a.os ?? "")} ${String(a.os_version ?? "")} ${String(a.arch ?? "")}</dd>
        <dt>Agent</dt><dd>${String(a.version ?? "—")} (Python ${String(a.python ?? "?")})</dd>
      </dl>${policyView(state.result.policy)}` : nothing}
    </section>`;
  },
});
