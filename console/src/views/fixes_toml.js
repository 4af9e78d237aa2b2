// A manifest (as the relay returns it, FixManifest.as_dict()) written back as TOML,
// with the version bumped: the starting point of "Submit a new version", so an author
// edits the approved text rather than retyping it. Scripts go inline (a multi-line
// literal string when they allow one, a basic string otherwise). The relay parses
// what is submitted (tomllib) and is the judge of it.

const KEY_ORDER = ["id", "version", "title", "description", "platforms", "interpreter",
  "timeout_s", "risk", "consent", "rules"];
const PARAM_ORDER = ["type", "description", "required", "default", "enum", "pattern",
  "min_length", "max_length", "min", "max"];

export function tomlString(value) {
  // A JSON string is a valid TOML basic string, except that TOML has no "\/" (JSON
  // never writes one) and JSON leaves DEL (U+007F) raw, which TOML refuses.
  return JSON.stringify(String(value)).replace(/\u007f/g, "\\u007F");
}

function multiline(text) {
  // '''...''' takes everything literally except ''' and control characters other
  // than tab and newline; a leading newline after the opening quotes is dropped.
  if (!text.includes("'''") && !/[\u0000-\u0008\u000b-\u001f\u007f]/.test(text) && !text.endsWith("'")) {
    return `'''\n${text}'''`;
  }
  return tomlString(text);
}

function scalar(v) {
  if (typeof v === "boolean") return v ? "true" : "false";
  if (typeof v === "number" && Number.isInteger(v)) return String(v);
  if (Array.isArray(v)) return `[${v.map(scalar).join(", ")}]`;
  return tomlString(v);
}

export function manifestToml(m, version = (m.version || 0) + 1) {
  const lines = [];
  for (const k of KEY_ORDER) {
    if (k === "version") lines.push(`version = ${version}`);
    else if (k === "description") lines.push(`description = ${multiline(String(m.description || ""))}`);
    else if (m[k] !== undefined && m[k] !== null) lines.push(`${k} = ${scalar(m[k])}`);
  }
  lines.push(`script = ${multiline(String(m.script || ""))}`);
  if (m.verify) lines.push(`verify = ${multiline(String(m.verify))}`);
  const params = m.parameters || {};
  const list = Array.isArray(params) ? params : Object.entries(params).map(([name, p]) => ({ ...p, name }));
  for (const p of list) {
    lines.push("", `[parameters.${p.name}]`);
    for (const k of PARAM_ORDER) {
      const v = p[k];
      if (v === undefined || v === null) continue;
      if (k === "required" && v === false) continue;
      if (k === "enum" && Array.isArray(v) && !v.length) continue;
      if (k === "min_length" && v === 0) continue;
      if (k === "max_length" && v === 256) continue;
      lines.push(`${k} = ${k === "pattern" && !String(v).includes("'") ? `'${v}'` : scalar(v)}`);
    }
  }
  return `${lines.join("\n")}\n`;
}

export const EXAMPLE = `id = "say-hello"
version = 1
title = "Say hello"
description = "Prints a greeting: a first fix to try the approval flow with."
platforms = ["linux"]
interpreter = "sh"
timeout_s = 60
risk = "low"
consent = false
rules = []
script = '''
echo "hello, $BACKLINE_PARAM_NAME"
'''

[parameters.NAME]
type = "string"
description = "who to greet"
default = "world"
pattern = '^[A-Za-z ]+$'
max_length = 40
`;
