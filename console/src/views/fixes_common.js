// What the Fixes pages share: API errors in words, a status badge, submitting a
// manifest.

import { html } from "lit-html";
import { post } from "../api.js";

// An API error in words: what the relay said, with the common refusals explained.
export function words(err) {
  const code = err?.code;
  const detail = err?.message || "";
  if (err?.status === 0) return detail;
  if (code === "immutable") return `This version already exists and cannot change: give it a new version number. (${detail})`;
  if (code === "self_approval") return "You submitted this version: a different person must approve it (four eyes).";
  if (code === "digest_mismatch") return `This version is no longer the one you reviewed (its digest differs): reload it and review it again. (${detail})`;
  if (code === "forbidden") return `Your role may not do this: ${detail}`;
  if (code === "not_found") return `Not found: ${detail}`;
  return detail || `The relay refused (${err?.status ?? "?"}).`;
}

// Submit a manifest (TOML text): the relay's answer {id, version, digest, status}, or
// null after handing the refusal, in words, to setError.
export async function submitToml(text, setError) {
  try {
    const r = await post("/fixes", { manifest_toml: text });
    setError("");
    return r;
  } catch (err) {
    setError(words(err));
    return null;
  }
}

export function statusBadge(status) {
  const cls = { approved: "ok", submitted: "warning", revoked: "critical" }[status] || "info";
  return html`<span class="badge ${cls} status-${status}">${status || "—"}</span>`;
}

