// A session's outcome (issue 14, docs/reports.md): when the technician closes a session
// a dialog asks how it ended (resolved / not resolved / escalated) and for a note; on a
// closed session it can be set, or changed, afterwards. Each change is audited by the
// relay (session.outcome); the management reports count the last one.

import { html, nothing } from "lit-html";
import { del, post } from "../api.js";
import { when } from "../format.js";

export const OUTCOMES = [
  ["resolved", "Resolved"],
  ["not_resolved", "Not resolved"],
  ["escalated", "Escalated"],
];
const LABEL = Object.fromEntries(OUTCOMES);

const d = { id: null, closing: false, error: "", busy: false };

export function askOutcome(sessionId, closing) {
  d.id = sessionId;
  d.closing = closing;
  d.error = "";
}

export function outcomeFacts(s) {
  if (!s.outcome) return nothing;
  return html`<dt>Outcome</dt><dd id="session-outcome"><span class="outcome ${s.outcome}">${LABEL[s.outcome] || s.outcome}</span>
    ${s.outcome_note ? html` — <span class="note">${s.outcome_note}</span>` : nothing}
    <small class="muted">(${s.outcome_by}, ${when(s.outcome_at)})</small></dd>`;
}

// The dialog, when asked for on this session. ``done(message)`` reloads the session.
export function outcomeDialog(s, done) {
  if (d.id !== s.id) return nothing;
  const cancel = () => {
    d.id = null;
    done("");
  };
  const submit = async (e, withOutcome) => {
    e.preventDefault();
    const form = e.target.closest("form");
    const outcome = form.elements.outcome.value;
    const note = form.elements.note.value;
    if (withOutcome && !outcome) {
      d.error = "Choose how the session ended.";
      done("");
      return;
    }
    d.busy = true;
    try {
      if (d.closing) await del(`/sessions/${encodeURIComponent(s.id)}`);
      if (withOutcome) await post(`/sessions/${encodeURIComponent(s.id)}/outcome`, { outcome, note });
      d.id = null;
      done(d.closing ? "Session closed." : "Outcome saved.");
    } catch (err) {
      d.error = `Refused: ${err.message}`;
      done("");
    } finally {
      d.busy = false;
    }
  };
  return html`<div class="dialog" role="dialog" aria-modal="true" aria-labelledby="outcome-title" id="outcome-dialog">
    <form @submit=${(e) => submit(e, true)}>
      <h2 id="outcome-title">${d.closing ? "Close the session: how did it end?" : "How did this session end?"}</h2>
      <fieldset><legend>Outcome</legend>
        ${OUTCOMES.map(([value, label]) => html`<label class="choice">
          <input type="radio" name="outcome" value=${value} ?checked=${s.outcome === value}> ${label}</label>`)}
      </fieldset>
      <label>Note <textarea name="note" maxlength="1024" rows="3"
        placeholder="What was done, what is left">${s.outcome_note || ""}</textarea></label>
      ${d.error ? html`<p class="error" role="alert">${d.error}</p>` : nothing}
      <p class="actions">
        <button type="submit" ?disabled=${d.busy}>${d.closing ? "Close and save" : "Save outcome"}</button>
        ${d.closing ? html`<button type="button" class="danger" ?disabled=${d.busy}
          @click=${(e) => submit(e, false)}>Close without an outcome</button>` : nothing}
        <button type="button" class="link" @click=${cancel}>Cancel</button>
      </p>
    </form>
  </div>`;
}
