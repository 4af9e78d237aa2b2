"""The one order of checks before anything runs, whoever asked (relay or customer).

1. the request is well-formed and bounded (``bad_request``): at most 1 MiB, a JSON
   object with known fields, a manifest whose STRUCTURE common/fixes accepts
   (:func:`structural_manifest`: every field checked, but no parameter ``pattern`` is
   compiled or applied — patterns are the author's, and a hostile one could make
   the regular-expression engine run for hours before anyone checked who signed it);
2. signatures against the keys pinned here (``unsigned``, ``unpinned_key``,
   ``bad_signature``, ``not_enough_signatures``): the digest is computed by this agent
   from the bytes it received, never taken from the relay; a request that names a
   ``digest`` of its own that differs is ``digest_mismatch``. Only then is the
   manifest read whole, patterns included (a signed pattern common/fixes refuses is
   ``bad_request``);
3. revocation (``revoked``), from the kept list; an unreadable one refuses everything;
4. platform (``platform``): this machine's, and an interpreter for the script;
5. local policy (``policy``): ``[fix] decision = "deny"`` or an id not in
   ``allowed_ids``;
6. parameters against the fix's schema (``params``).

Only then may the customer be asked (:func:`consent_question`); and after the
answer, just before the script starts, the kept revocation list is read again
(:func:`recheck_revoked`): a revocation pushed while the customer was deciding stops
the run. Each failure is one :class:`Refusal` with the contract's reason and a short
detail.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backline.agent.fixes import executor, revocations
from backline.agent.policy import FixPolicy

if TYPE_CHECKING:
    from backline.common.fixes.manifest import FixManifest
    from backline.common.fixes.signing import FixTrust

MAX_REQUEST_BYTES = 1024 * 1024
RUN_ID_RE = re.compile(r"fr_[A-Za-z0-9_-]{1,64}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = frozenset({"manifest", "signatures", "params", "requested_by", "reason", "ticket",
                     "max_output", "run_id", "digest", "cache"})
MAX_SIGNATURES = 32
MAX_SIGNATURE_CHARS = 8192


class Refusal(Exception):
    """A check failed: ``reason`` is the contract's word, ``detail`` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail[:500]


@dataclass(frozen=True)
class FixRequest:
    """One request line, validated (step 1). ``manifest`` is the structural reading
    (:func:`structural_manifest`); ``manifest_data`` the object as it arrived, read
    whole by :func:`check_fix` once the signatures are known good."""

    manifest: FixManifest
    manifest_data: Mapping[str, object]
    signatures: list[str]
    params: dict[str, object]
    requested_by: str = ""
    reason: str = ""
    ticket: str = ""
    max_output: int = executor.DEFAULT_MAX_OUTPUT
    run_id: str = ""
    digest: str = ""
    #: Keep it for self-service, do not run it (the relay pushing a fix).
    cache_only: bool = False


@dataclass(frozen=True)
class Checked:
    """What passed every check: the manifest read whole, its digest as this agent
    computed it, who signed it, and the script's ``BACKLINE_PARAM_*`` environment."""

    manifest: FixManifest
    digest: str
    signers: tuple[str, ...]
    env: dict[str, str]
    signatures: list[str] = field(default_factory=list)


def this_platform() -> str:
    """This machine's platform as manifests name it (linux, macos, windows)."""
    if sys.platform.startswith("linux"):
        return "linux"
    if sys.platform == "darwin":
        return "macos"
    if sys.platform in ("win32", "cygwin"):
        return "windows"
    return sys.platform


def _text(d: Mapping[str, object], name: str, most: int) -> str:
    value = d.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > most:
        raise Refusal("bad_request", f"{name} must be text of at most {most} characters")
    return value


def structural_manifest(data: Mapping[str, object]) -> FixManifest:
    """``data`` read as common/fixes reads it, except that no parameter's ``pattern``
    is compiled or applied (not to the default, not to the enum): the pattern texts are
    put back as they came, checked only as bounded one-line text, so the canonical
    bytes (and the digest the signatures are checked against) are those of the
    manifest sent. :func:`check_fix` reads ``data`` whole after the signature check."""
    from backline.common.fixes.manifest import MAX_PATTERN, ManifestError, manifest_from_dict

    patterns: dict[str, object] = {}
    params = data.get("parameters")
    if isinstance(params, Mapping):
        stripped: dict[object, object] = {}
        for name, spec in params.items():
            if isinstance(spec, Mapping) and spec.get("pattern") is not None:
                patterns[str(name)] = spec["pattern"]
                spec = {k: v for k, v in spec.items() if k != "pattern"}
            stripped[name] = spec
        data = {**data, "parameters": stripped}
    m = manifest_from_dict(data)
    if not patterns:
        return m
    out = []
    for p in m.parameters:
        if p.name in patterns:
            field_name, text = f"parameters.{p.name}.pattern", patterns[p.name]
            if p.type != "string":
                raise ManifestError(f"{field_name}: applies to string parameters only")
            if (not isinstance(text, str) or not 1 <= len(text) <= MAX_PATTERN
                    or any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")
                           for ch in text)):
                raise ManifestError(f"{field_name}: must be one line of 1 to {MAX_PATTERN} "
                                    "characters")
            p = dataclasses.replace(p, pattern=text)
        out.append(p)
    return dataclasses.replace(m, parameters=tuple(out))


def whole_manifest(data: Mapping[str, object], structural: FixManifest) -> FixManifest:
    """Step 2's end: ``data`` read whole (patterns compiled and checked by
    common/fixes), which must be the manifest the signatures were checked for."""
    from backline.common.fixes.manifest import ManifestError, manifest_from_dict

    try:
        whole = manifest_from_dict(data)
    except ManifestError as exc:
        raise Refusal("bad_request", f"manifest: {exc}") from None
    if whole != structural:
        raise Refusal("bad_request", "the manifest reads differently whole than it was "
                                     "checked")
    return whole


def parse_request(raw: bytes | str) -> FixRequest:
    """Step 1: the request line the relay wrote, bounded and validated; the manifest
    only structurally (no author pattern is compiled before the signatures)."""
    from backline.common.fixes.manifest import ManifestError

    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if len(data) > MAX_REQUEST_BYTES:
        raise Refusal("bad_request", f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise Refusal("bad_request", "the request is not one JSON object (UTF-8)") from None
    if not isinstance(body, dict):
        raise Refusal("bad_request", "the request is not a JSON object")
    unknown = set(body) - _FIELDS
    if unknown:
        raise Refusal("bad_request", f"unknown field(s) {sorted(unknown)[:5]}")
    if not isinstance(body.get("manifest"), dict):
        raise Refusal("bad_request", "manifest must be an object")
    try:
        manifest = structural_manifest(body["manifest"])
    except ManifestError as exc:
        raise Refusal("bad_request", f"manifest: {exc}") from None
    signatures = body.get("signatures", [])
    if (not isinstance(signatures, list) or len(signatures) > MAX_SIGNATURES
            or not all(isinstance(s, str) and len(s) <= MAX_SIGNATURE_CHARS
                       for s in signatures)):
        raise Refusal("bad_request", f"signatures must be a list of at most {MAX_SIGNATURES} "
                                     "armored SSH signatures")
    params = body.get("params", {})
    if not isinstance(params, dict) or len(params) > 64:
        raise Refusal("bad_request", "params must be an object")
    max_output = body.get("max_output", executor.DEFAULT_MAX_OUTPUT)
    if type(max_output) is not int or not 0 <= max_output <= executor.MAX_OUTPUT_LIMIT:
        raise Refusal("bad_request", f"max_output must be a whole number from 0 to "
                                     f"{executor.MAX_OUTPUT_LIMIT}")
    run_id = _text(body, "run_id", 80)
    if run_id and not RUN_ID_RE.fullmatch(run_id):
        raise Refusal("bad_request", "run_id is malformed")
    digest = _text(body, "digest", 80)
    if digest and not DIGEST_RE.fullmatch(digest):
        raise Refusal("bad_request", "digest is malformed")
    cache_only = body.get("cache", False)
    if not isinstance(cache_only, bool):
        raise Refusal("bad_request", "cache must be true or false")
    return FixRequest(manifest, body["manifest"], list(signatures), dict(params),
                      _text(body, "requested_by", 128), _text(body, "reason", 512),
                      _text(body, "ticket", 128), max_output, run_id, digest, cache_only)


def check_fix(manifest: FixManifest, signatures: list[str], params: Mapping[str, object], *,
              state_root: Path | None, fix_policy: FixPolicy, trust: FixTrust,
              claimed_digest: str = "", platform: str | None = None,
              check_params: bool = True,
              manifest_data: Mapping[str, object] | None = None) -> Checked:
    """Steps 2 to 6 (see the module docstring); raises :class:`Refusal`.

    ``manifest`` may be the structural reading (:func:`structural_manifest`) of
    ``manifest_data``: then ``manifest_data`` is read whole only once the signatures
    over ``manifest`` are known good, and the whole reading is what is checked further
    and returned."""
    from backline.common.fixes.manifest import digest as digest_of
    from backline.common.fixes.params import ParamError, validate_params
    from backline.common.fixes.signing import check_signatures

    computed = digest_of(manifest)
    verdict = check_signatures(manifest, signatures, trust)
    if not verdict.ok:
        if claimed_digest and claimed_digest != computed and verdict.reason == "bad_signature":
            raise Refusal("digest_mismatch", f"the relay says {claimed_digest}, the bytes "
                                             f"received are {computed}")
        raise Refusal(verdict.reason or "bad_signature", verdict.detail or "no valid signature")
    if claimed_digest and claimed_digest != computed:
        raise Refusal("digest_mismatch", f"the relay says {claimed_digest}, the bytes received "
                                         f"are {computed}")
    if manifest_data is not None:
        manifest = whole_manifest(manifest_data, manifest)
    recheck_revoked(state_root, manifest)
    here = platform or this_platform()
    if here not in manifest.platforms:
        raise Refusal("platform", f"for {', '.join(manifest.platforms)}; this machine is {here}")
    if executor.interpreter_argv(manifest.interpreter) is None:
        raise Refusal("platform", f"no {manifest.interpreter} interpreter on this machine")
    if fix_policy.decision == "deny":
        raise Refusal("policy", "fixes are denied by this machine's policy ([fix] decision)")
    if not fix_policy.allows(manifest.id):
        raise Refusal("policy", f"{manifest.id} is not in this machine's [fix] allowed_ids")
    env: dict[str, str] = {}
    if check_params:
        try:
            env = validate_params(manifest, params)
        except ParamError as exc:
            raise Refusal("params", str(exc)) from None
    return Checked(manifest, computed, tuple(verdict.signers), env, list(signatures))


def recheck_revoked(state_root: Path | None, manifest: FixManifest) -> None:
    """Step 3, also run again just before the script starts (after consent): the kept
    list as it is NOW; an unreadable one refuses (fail closed)."""
    from backline.common.fixes.revocation import is_revoked

    try:
        kept = revocations.load(state_root)
    except revocations.KeptListError as exc:
        raise Refusal("revoked", str(exc)) from None
    hit = is_revoked(kept, manifest)
    if hit is not None:
        raise Refusal("revoked", f"{manifest.id}@{manifest.version} was revoked"
                                 + (f": {hit.reason}" if hit.reason else ""))


def printable(text: str, most: int = 300) -> str:
    """``text`` without control or other unprintable characters, at most ``most`` long:
    everything shown to the customer came from the relay."""
    return "".join(ch for ch in text if ch.isprintable())[:most]


def consent_question(manifest: FixManifest, env: Mapping[str, str], technician: str,
                     reason: str = "", ticket: str = "") -> str:
    """What the customer reads: who, which fix (title, id@version, risk), with which
    parameters, and why. All of it came from the relay: control characters are gone."""
    shown = ", ".join(f"{name.removeprefix(executor.PARAM_PREFIX)}={printable(value, 60)}"
                      for name, value in sorted(env.items()))
    text = (f"Technician {printable(technician, 128)} asks to run the approved fix "
            f"\"{printable(manifest.title, 120)}\" ({manifest.id}@{manifest.version}, "
            f"risk {manifest.risk})")
    if shown:
        text += f" with {shown}"
    if reason:
        text += f" ({printable(reason)})"
    if ticket:
        text += f" [ticket {printable(ticket, 128)}]"
    return text + ". Allow?"


def needs_consent(manifest: FixManifest, capability_decision: str, fix_policy: FixPolicy) -> bool:
    """Whether the customer must be asked: the fix says so, or the policy asks."""
    return bool(manifest.consent) or capability_decision == "ask" or fix_policy.decision == "ask"
