// A fix's parameter form, generated from its manifest's schema (docs/fixes.md): a text
// field, a number or a checkbox per parameter, a select where the schema has an enum.
// The checks here (type, enum, length, range, no control characters; the pattern is
// only shown, see below) are a courtesy so the technician learns of a typo before
// anything is sent: the agent checks every value again against the schema it
// verified, and is the authority.

import { html, nothing } from "lit-html";

// The manifest's parameters as a list, whichever shape as_dict gives them
// ({NAME: schema} or [{name, ...}]), in a stable order.
export function paramList(manifest) {
  const raw = manifest?.parameters;
  if (!raw) return [];
  const list = Array.isArray(raw)
    ? raw.map((p) => ({ ...p }))
    : Object.entries(raw).map(([name, p]) => ({ ...p, name }));
  return list.filter((p) => typeof p?.name === "string"); // in the order the author wrote them
}

// The author's pattern is NOT run here: JavaScript's RegExp backtracks (a pattern like
// (a+)+$ would hang this tab) and reads some patterns otherwise than RE2, the engine
// the relay and the agent match them with. It is shown as a hint; the agent refuses a
// value that does not match (refusal "params"), and is the authority.

const CONTROL = /[\u0000-\u0008\u000a-\u001f\u007f]/u;

// One parameter's value from the form, checked; {value} or {error} (in words), or
// {skip} when an optional parameter was left empty (the agent applies its default).
export function checkParam(p, raw) {
  const type = p.type || "string";
  if (type === "boolean") return { value: Boolean(raw) };
  const text = raw == null ? "" : String(raw);
  if (text === "") {
    if (p.required && p.default == null) return { error: `${p.name} is required.` };
    return { skip: true };
  }
  if (type === "integer") {
    if (!/^-?\d{1,18}$/.test(text.trim())) return { error: `${p.name} must be a whole number.` };
    const n = Number(text.trim());
    if (p.min != null && n < p.min) return { error: `${p.name} must be at least ${p.min}.` };
    if (p.max != null && n > p.max) return { error: `${p.name} must be at most ${p.max}.` };
    if (Array.isArray(p.enum) && p.enum.length && !p.enum.includes(n)) {
      return { error: `${p.name} must be one of ${p.enum.join(", ")}.` };
    }
    return { value: n };
  }
  if (CONTROL.test(text)) return { error: `${p.name} may not contain control characters (no new lines).` };
  const length = [...text].length;
  const min = p.min_length ?? 0;
  const max = p.max_length ?? 256;
  if (length < min) return { error: `${p.name} needs at least ${min} characters.` };
  if (length > max) return { error: `${p.name} takes at most ${max} characters.` };
  if (Array.isArray(p.enum) && p.enum.length && !p.enum.includes(text)) {
    return { error: `${p.name} must be one of ${p.enum.join(", ")}.` };
  }
  return { value: text };
}

// The values of a parameter form (a <form> element made by paramFields): {params,
// errors} where errors maps a parameter's name to what is wrong with it.
export function readParams(manifest, form) {
  const data = new FormData(form);
  const params = {};
  const errors = {};
  for (const p of paramList(manifest)) {
    const raw = (p.type || "string") === "boolean" ? data.get(`param-${p.name}`) === "on"
      : data.get(`param-${p.name}`);
    const r = checkParam(p, raw);
    if (r.error) errors[p.name] = r.error;
    else if (!r.skip) params[p.name] = r.value;
  }
  return { params, errors };
}

function describe(p) {
  const bits = [];
  if (p.required) bits.push("required");
  if (Array.isArray(p.enum) && p.enum.length) bits.push(`one of ${p.enum.join(", ")}`);
  if ((p.type || "string") === "string") {
    if (p.pattern) bits.push(`form ${p.pattern} (checked by the agent)`);
    if (p.min_length || p.max_length != null) bits.push(`${p.min_length ?? 0}–${p.max_length ?? 256} characters`);
  }
  if (p.type === "integer" && (p.min != null || p.max != null)) bits.push(`${p.min ?? "…"} to ${p.max ?? "…"}`);
  if (p.default != null) bits.push(`default ${String(p.default)}`);
  return bits.join("; ");
}

function field(p, idPrefix) {
  const name = `param-${p.name}`;
  const id = `${idPrefix}-${p.name}`;
  const type = p.type || "string";
  const hint = describe(p);
  if (type === "boolean") {
    return html`<label class="check" for=${id}><input type="checkbox" id=${id} name=${name}
      ?checked=${p.default === true}> ${p.name}
      ${p.description ? html`<small class="muted">${p.description}</small>` : nothing}</label>`;
  }
  let input;
  if (Array.isArray(p.enum) && p.enum.length) {
    input = html`<select id=${id} name=${name}>
      ${p.required && p.default == null ? html`<option value="">choose…</option>` : nothing}
      ${!p.required ? html`<option value="">(the fix's default)</option>` : nothing}
      ${p.enum.map((v) => html`<option value=${String(v)} ?selected=${v === p.default}>${String(v)}</option>`)}
    </select>`;
  } else if (type === "integer") {
    input = html`<input type="number" id=${id} name=${name} step="1"
      min=${p.min ?? nothing} max=${p.max ?? nothing} .value=${p.default != null ? String(p.default) : ""}>`;
  } else {
    input = html`<input type="text" id=${id} name=${name} autocomplete="off" spellcheck="false"
      maxlength=${Math.min(p.max_length ?? 256, 4096)} .value=${p.default != null ? String(p.default) : ""}>`;
  }
  return html`<label for=${id}>${p.name}${p.required ? " *" : ""}
    ${input}
    <small class="muted">${p.description || ""}${p.description && hint ? " — " : ""}${hint}</small></label>`;
}

// The fields of the form; errors (from readParams) shown next to the fields they name.
export function paramFields(manifest, errors = {}, idPrefix = "fix-param") {
  const list = paramList(manifest);
  if (!list.length) return html`<p class="muted">This fix takes no parameters.</p>`;
  return html`<fieldset class="params"><legend>Parameters</legend>
    ${list.map((p) => html`<div class="param" data-param=${p.name}>${field(p, idPrefix)}
      ${errors[p.name] ? html`<p class="error field-error" role="alert">${errors[p.name]}</p>` : nothing}</div>`)}
    <p class="muted">Checked here as a courtesy; the customer's agent checks them again against
      the approved schema and refuses what does not fit.</p>
  </fieldset>`;
}
