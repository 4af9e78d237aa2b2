"""A fix manifest: what a fix is, parsed and bounded, and the canonical bytes approvals sign.

Why so strict: a manifest travels from an author, through the relay's database, to a
customer's machine, and the agent runs what it says. Every field is bounded here, once,
with a message naming the field, so the relay refuses a bad submission with the same
words the agent would use, and neither side has to guess what "valid" means.

Why canonical bytes: an approval must bind one exact version, so the signature is over a
deterministic encoding of everything that decides what runs (id, version, platforms,
interpreter, the SHA-256 of the script and of the verify script, the parameter schema,
timeout, consent, risk), after a context line no other Backline signature starts with.
Lists that are sets (platforms, enums, parameter names) are sorted, so the order an
author wrote them in changes nothing. Title and descriptions are not in it (the contract
of issue 12): they inform, they do not execute.

No I/O here except :func:`load_manifest` and ``*_file`` reading the manifest's folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backline.common.fixes import patterns
from backline.common.fixes.params import ParamError, check_value

CONTEXT = b"backline fix manifest v1\n"

ID_RE = re.compile(r"[a-z][a-z0-9-]{1,47}")
PARAM_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,31}")
RULE_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,79}")

PLATFORMS = ("linux", "macos", "windows")
INTERPRETERS = ("sh", "bash", "powershell", "python")
RISKS = ("low", "medium", "high")
PARAM_TYPES = ("string", "integer", "boolean")

MAX_VERSION = 2**31 - 1
MAX_TITLE = 120
MAX_DESCRIPTION = 4000
MAX_SCRIPT_BYTES = 256 * 1024
MAX_TIMEOUT_S = 3600
#: The verify script gets its own timeout: the fix's, but never more than this.
MAX_VERIFY_TIMEOUT_S = 60
MAX_RULES = 32
MAX_PARAMETERS = 16
MAX_PARAM_DESCRIPTION = 500
MAX_ENUM = 64
MAX_PATTERN = 512
DEFAULT_MAX_LENGTH = 256
HARD_MAX_LENGTH = 4096
#: Integers are kept to what every JSON parser (and the console's JS) reads exactly.
INT_LIMIT = 2**53 - 1
#: Whole manifest text (TOML) or file read: scripts inline at most 2 x 256 KiB + text.
MAX_MANIFEST_BYTES = 1024 * 1024

#: LRE RLE PDF LRO RLO, LRI RLI FSI PDI.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

_TOP_KEYS = frozenset({
    "id", "version", "title", "description", "platforms", "interpreter", "script",
    "script_file", "verify", "verify_file", "timeout_s", "risk", "consent", "rules",
    "parameters",
})
_PARAM_KEYS = frozenset({
    "type", "description", "required", "default", "enum", "pattern", "min_length",
    "max_length", "min", "max",
})


class ManifestError(ValueError):
    """A manifest that cannot be accepted; the message names the field."""


@dataclass(frozen=True)
class Parameter:
    """One parameter's schema. String-only and integer-only bounds are None otherwise."""

    name: str
    type: str
    description: str = ""
    required: bool = False
    default: str | int | bool | None = None
    enum: tuple[str, ...] | tuple[int, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    min: int | None = None
    max: int | None = None

    def schema(self) -> dict[str, Any]:
        """The normalised schema, every key present (what :func:`canonical_bytes` signs)."""
        enum: list[Any] | None = None
        if self.enum is not None:
            enum = sorted(self.enum)  # type: ignore[type-var]
        return {"type": self.type, "required": self.required, "default": self.default,
                "enum": enum, "pattern": self.pattern, "min_length": self.min_length,
                "max_length": self.max_length, "min": self.min, "max": self.max}

    def as_dict(self) -> dict[str, Any]:
        """The authored form (JSON-able; keys that are unset are left out)."""
        out: dict[str, Any] = {"type": self.type, "description": self.description,
                               "required": self.required}
        for key in ("default", "pattern", "min_length", "max_length", "min", "max"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.enum is not None:
            out["enum"] = list(self.enum)
        return out


@dataclass(frozen=True)
class FixManifest:
    """One version of one fix. ``script``/``verify`` are the texts, not file names."""

    id: str
    version: int
    title: str
    description: str
    platforms: tuple[str, ...]
    interpreter: str
    script: str
    verify: str | None
    timeout_s: int
    risk: str
    consent: bool
    rules: tuple[str, ...]
    parameters: tuple[Parameter, ...]

    @property
    def ref(self) -> str:
        """``id@version``, how people and the CLI name one version."""
        return f"{self.id}@{self.version}"

    @property
    def verify_timeout_s(self) -> int:
        return min(self.timeout_s, MAX_VERIFY_TIMEOUT_S)

    def parameter(self, name: str) -> Parameter | None:
        for p in self.parameters:
            if p.name == name:
                return p
        return None

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with the script texts: what travels on the wire and the relay stores.

        :func:`manifest_from_dict` reads it back to an equal manifest.
        """
        return {
            "id": self.id, "version": self.version, "title": self.title,
            "description": self.description, "platforms": list(self.platforms),
            "interpreter": self.interpreter, "script": self.script, "verify": self.verify,
            "timeout_s": self.timeout_s, "risk": self.risk, "consent": self.consent,
            "rules": list(self.rules),
            "parameters": {p.name: p.as_dict() for p in self.parameters},
        }


# -- field checks ---------------------------------------------------------------------

def _fail(field: str, why: str) -> ManifestError:
    return ManifestError(f"{field}: {why}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(field: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise _fail(field, f"must be an integer, not {type(value).__name__}")
    assert isinstance(value, int)
    if not lo <= value <= hi:
        shown = str(value) if abs(value) <= 10**30 else "a huge number"
        raise _fail(field, f"must be between {lo} and {hi}, got {shown}")
    return value


def _bool(field: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, f"must be true or false, not {type(value).__name__}")
    return value


def _utf8(field: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(field, "is not valid UTF-8 (lone surrogate)") from None


def _text(field: str, value: object, lo: int, hi: int, *, multiline: bool) -> str:
    """A human text: bounded in characters, valid UTF-8, no control characters.

    ``multiline`` allows newline, carriage return and tab (descriptions); a one-line
    text (a title) allows none of them, so nothing can forge a second line in a prompt.
    """
    if not isinstance(value, str):
        raise _fail(field, f"must be a string, not {type(value).__name__}")
    _utf8(field, value)
    if not lo <= len(value) <= hi:
        raise _fail(field, f"must be {lo} to {hi} characters, got {len(value)}")
    allowed = "\n\r\t" if multiline else ""
    for ch in value:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            raise _fail(field, f"contains the control character U+{ord(ch):04X}")
    _no_bidi(field, value)
    return value


def _no_bidi(field: str, value: str) -> None:
    """Refuse the bidirectional embedding/override/isolate controls ("Trojan Source",
    CVE-2021-42574): they make a script, title or value read differently from what it is,
    and an approver must approve what they see."""
    hit = BIDI_CONTROLS.intersection(value)
    if hit:
        raise _fail(field, f"contains the bidirectional control U+{ord(min(hit)):04X}")


def _choice(field: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        shown = ascii(value[:40]) if isinstance(value, str) else type(value).__name__
        raise _fail(field, f"must be one of {', '.join(choices)}, got {shown}")
    return value


def _script_text(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise _fail(field, f"must be a string, not {type(value).__name__}")
    data = _utf8(field, value)
    if len(data) > MAX_SCRIPT_BYTES:
        raise _fail(field, f"is {len(data)} bytes, more than {MAX_SCRIPT_BYTES} (256 KiB)")
    if not value.strip():
        raise _fail(field, "is empty")
    if "\x00" in value:
        raise _fail(field, "contains NUL")
    _no_bidi(field, value)
    return value


def _read_regular(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file, never following a last-moment symlink
    or blocking on a FIFO swapped in after the checks."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_script(field: str, name: object, base_dir: Path | None) -> str:
    """Read ``*_file``: relative to the manifest's folder and, resolved, inside it."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise _fail(field, "must be a non-empty file name")
    if base_dir is None:
        raise _fail(field, "needs the manifest's folder; inline the script instead")
    rel = Path(name)
    if rel.is_absolute():
        raise _fail(field, f"must be relative to the manifest's folder, got {name[:60]!a}")
    lexical = os.path.normpath(rel)
    if lexical == ".." or lexical.startswith(".." + os.sep):
        raise _fail(field, f"{name[:60]!a} is outside the manifest's folder")
    base = base_dir.resolve()
    try:
        target = (base / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        raise _fail(field, f"cannot read {name[:60]!a}: no such file") from None
    if not target.is_relative_to(base):
        raise _fail(field, f"{name[:60]!a} is outside the manifest's folder")
    try:
        data = _read_regular(target, MAX_SCRIPT_BYTES + 1)
    except OSError as exc:
        raise _fail(field, f"cannot read {name[:60]!a}: {exc.strerror}") from None
    if len(data) > MAX_SCRIPT_BYTES:
        raise _fail(field, f"{name[:60]!a} is more than {MAX_SCRIPT_BYTES} bytes (256 KiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(field, f"{name[:60]!a} is not valid UTF-8") from None
    return _script_text(field, text)


def _script(d: Mapping[str, Any], key: str, base_dir: Path | None,
            required: bool) -> str | None:
    inline, file_key = d.get(key), f"{key}_file"
    has_inline = inline is not None
    has_file = d.get(file_key) is not None
    if has_inline and has_file:
        raise _fail(key, f"give either {key} or {file_key}, not both")
    if has_file:
        return _read_script(file_key, d[file_key], base_dir)
    if has_inline:
        return _script_text(key, inline)
    if required:
        raise _fail(key, f"missing: give {key} (inline) or {file_key}")
    return None


def _string_list(field: str, value: object, *, item_re: re.Pattern[str] | None,
                 choices: tuple[str, ...] | None, lo: int, hi: int) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _fail(field, f"must be a list, not {type(value).__name__}")
    if not lo <= len(value) <= hi:
        raise _fail(field, f"must have {lo} to {hi} entries, got {len(value)}")
    out: list[str] = []
    for i, item in enumerate(value):
        where = f"{field}[{i}]"
        if choices is not None:
            out.append(_choice(where, item, choices))
        elif not isinstance(item, str) or item_re is None or not item_re.fullmatch(item):
            shown = ascii(item[:40]) if isinstance(item, str) else type(item).__name__
            raise _fail(where, f"must match {item_re.pattern if item_re else ''}, got {shown}")
        else:
            out.append(item)
    if len(set(out)) != len(out):
        raise _fail(field, "has duplicates")
    return tuple(out)


# -- parameters -----------------------------------------------------------------------

def _param(name: object, spec: object) -> Parameter:
    if not isinstance(name, str) or not PARAM_NAME_RE.fullmatch(name):
        shown = ascii(name[:40]) if isinstance(name, str) else type(name).__name__
        raise _fail("parameters", f"name {shown} must match {PARAM_NAME_RE.pattern}")
    field = f"parameters.{name}"
    if not isinstance(spec, Mapping):
        raise _fail(field, "must be a table")
    unknown = sorted(str(k) for k in spec if k not in _PARAM_KEYS)
    if unknown:
        raise _fail(field, f"unknown key {unknown[0][:40]!a}")
    if "type" not in spec:
        raise _fail(f"{field}.type", "missing: string, integer or boolean")
    ptype = _choice(f"{field}.type", spec["type"], PARAM_TYPES)
    description = _text(f"{field}.description", spec.get("description", ""), 0,
                        MAX_PARAM_DESCRIPTION, multiline=True)
    required = _bool(f"{field}.required", spec.get("required", False))

    def only(keys: tuple[str, ...], types: str) -> None:
        for key in keys:
            if spec.get(key) is not None:
                raise _fail(f"{field}.{key}", f"applies to {types} parameters only")

    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    min_length = max_length = lo = hi = None
    if ptype == "string":
        only(("min", "max"), "integer")
        min_length = _int(f"{field}.min_length", spec.get("min_length", 0), 0, HARD_MAX_LENGTH)
        max_length = _int(f"{field}.max_length", spec.get("max_length", DEFAULT_MAX_LENGTH),
                          1, HARD_MAX_LENGTH)
        if min_length > max_length:
            raise _fail(f"{field}.min_length", f"{min_length} is more than max_length "
                        f"{max_length}")
        if spec.get("pattern") is not None:
            pattern = _text(f"{field}.pattern", spec["pattern"], 1, MAX_PATTERN,
                            multiline=False)
            try:
                patterns.compile_pattern(pattern)  # RE2: linear time (common/fixes/patterns.py)
            except patterns.PatternError as exc:
                raise _fail(f"{field}.pattern", f"is not a valid regular expression of the "
                                                f"supported (RE2) syntax: {exc}") from None
    elif ptype == "integer":
        only(("pattern", "min_length", "max_length"), "string")
        if spec.get("min") is not None:
            lo = _int(f"{field}.min", spec["min"], -INT_LIMIT, INT_LIMIT)
        if spec.get("max") is not None:
            hi = _int(f"{field}.max", spec["max"], -INT_LIMIT, INT_LIMIT)
        if lo is not None and hi is not None and lo > hi:
            raise _fail(f"{field}.min", f"{lo} is more than max {hi}")
    else:
        only(("pattern", "min_length", "max_length", "min", "max", "enum"),
             "string or integer")

    if spec.get("enum") is not None:
        raw = spec["enum"]
        if not isinstance(raw, list | tuple) or not 1 <= len(raw) <= MAX_ENUM:
            raise _fail(f"{field}.enum", f"must be a list of 1 to {MAX_ENUM} values")
        items: list[Any] = []
        for i, item in enumerate(raw):
            where = f"{field}.enum[{i}]"
            if ptype == "string":
                items.append(_text(where, item, 0, HARD_MAX_LENGTH, multiline=False))
            else:
                items.append(_int(where, item, -INT_LIMIT, INT_LIMIT))
        if len(set(items)) != len(items):
            raise _fail(f"{field}.enum", "has duplicates")
        enum = tuple(items)

    param = Parameter(name=name, type=ptype, description=description, required=required,
                      default=None, enum=enum, pattern=pattern, min_length=min_length,
                      max_length=max_length, min=lo, max=hi)
    if enum is not None:
        bare = Parameter(**{**param.__dict__, "enum": None})
        for i, item in enumerate(enum):
            try:
                check_value(bare, item)
            except ParamError as exc:
                raise _fail(f"{field}.enum[{i}]", f"does not validate: {exc.why}") from None
    if spec.get("default") is not None:
        try:
            check_value(param, spec["default"])
        except ParamError as exc:
            raise _fail(f"{field}.default", f"does not validate: {exc.why}") from None
        param = Parameter(**{**param.__dict__, "default": spec["default"]})
    return param


def _parameters(value: object) -> tuple[Parameter, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise _fail("parameters", "must be a table of parameter tables")
    if len(value) > MAX_PARAMETERS:
        raise _fail("parameters", f"at most {MAX_PARAMETERS}, got {len(value)}")
    return tuple(sorted((_param(k, v) for k, v in value.items()), key=lambda p: p.name))


# -- entry points ---------------------------------------------------------------------

def _build(d: Mapping[str, Any], base_dir: Path | None) -> FixManifest:
    if not isinstance(d, Mapping):
        raise ManifestError("manifest: must be a table (JSON object)")
    unknown = sorted(str(k) for k in d if k not in _TOP_KEYS)
    if unknown:
        raise ManifestError(f"{unknown[0][:40]!a}: unknown field")
    for key in ("id", "version", "title", "platforms", "interpreter", "timeout_s", "risk"):
        if key not in d:
            raise _fail(key, "missing")
    ident = d["id"]
    if not isinstance(ident, str) or not ID_RE.fullmatch(ident):
        shown = ascii(ident[:60]) if isinstance(ident, str) else type(ident).__name__
        raise _fail("id", f"must match ^{ID_RE.pattern}$, got {shown}")
    return FixManifest(
        id=ident,
        version=_int("version", d["version"], 1, MAX_VERSION),
        title=_text("title", d["title"], 1, MAX_TITLE, multiline=False),
        description=_text("description", d.get("description", ""), 0, MAX_DESCRIPTION,
                          multiline=True),
        platforms=tuple(sorted(_string_list("platforms", d["platforms"], item_re=None,
                                            choices=PLATFORMS, lo=1, hi=len(PLATFORMS)))),
        interpreter=_choice("interpreter", d["interpreter"], INTERPRETERS),
        script=_script(d, "script", base_dir, required=True) or "",
        verify=_script(d, "verify", base_dir, required=False),
        timeout_s=_int("timeout_s", d["timeout_s"], 1, MAX_TIMEOUT_S),
        risk=_choice("risk", d["risk"], RISKS),
        consent=_bool("consent", d.get("consent", True)),
        rules=_string_list("rules", d.get("rules", []), item_re=RULE_RE, choices=None,
                           lo=0, hi=MAX_RULES),
        parameters=_parameters(d.get("parameters")),
    )


def parse_manifest(text: str, base_dir: Path | None = None) -> FixManifest:
    """Parse a TOML manifest; ``*_file`` are read from ``base_dir`` (and must stay in it)."""
    if not isinstance(text, str):
        raise ManifestError("manifest: must be text")
    if len(_utf8("manifest", text)) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: more than {MAX_MANIFEST_BYTES} bytes")
    try:
        data = tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of over 4300 digits
        raise ManifestError(f"manifest: not valid TOML: {exc}") from None
    return _build(data, base_dir)


def manifest_from_dict(d: Mapping[str, Any]) -> FixManifest:
    """The wire/stored form (:meth:`FixManifest.as_dict`); scripts must be inline."""
    if isinstance(d, Mapping) and (d.get("script_file") is not None
                                   or d.get("verify_file") is not None):
        raise _fail("script_file" if d.get("script_file") is not None else "verify_file",
                    "not allowed here: the script travels inline")
    return _build(d, None)


def load_manifest(path: Path | str) -> FixManifest:
    """Read a manifest file; its folder is where ``*_file`` are looked up."""
    p = Path(path)
    try:
        raw = _read_regular(p.resolve(), MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(f"manifest: cannot read {p}: {exc.strerror}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest: {p} is more than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"manifest: {p} is not valid UTF-8") from None
    return parse_manifest(text, p.parent)


def _sha256(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_body(m: FixManifest) -> dict[str, Any]:
    """What the canonical bytes encode (handy for diffs and docs). ``title`` and
    ``description`` are in it because the agent shows them at the consent prompt: a
    relay must not be able to relabel a signed fix."""
    return {
        "id": m.id, "version": m.version, "title": m.title, "description": m.description,
        "platforms": sorted(m.platforms),
        "interpreter": m.interpreter, "script_sha256": _sha256(m.script),
        "verify_sha256": _sha256(m.verify),
        "parameters": {p.name: p.schema() for p in m.parameters},
        "timeout_s": m.timeout_s, "consent": m.consent, "risk": m.risk,
    }


def canonical_bytes(m: FixManifest) -> bytes:
    """The bytes approvals sign: context line + compact sorted-key ASCII JSON."""
    body = json.dumps(canonical_body(m), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    return CONTEXT + body.encode("ascii")


def digest(m: FixManifest) -> str:
    """``sha256:<hex>`` of :func:`canonical_bytes`: the name the audit trail records."""
    return "sha256:" + hashlib.sha256(canonical_bytes(m)).hexdigest()


def as_dict(m: FixManifest) -> dict[str, Any]:
    """Function form of :meth:`FixManifest.as_dict`."""
    return m.as_dict()


# -- platform, text form, diff ----------------------------------------------------------

#: ``sys.platform`` -> manifest platform name.
PLATFORM_OF = {"linux": "linux", "darwin": "macos", "win32": "windows"}


def runs_on(m: FixManifest, sys_platform: str) -> bool:
    """Whether ``m`` is for the platform ``sys_platform`` names (``sys.platform``)."""
    return PLATFORM_OF.get(sys_platform) in m.platforms


def _toml_string(text: str, multiline: bool = False) -> str:
    """A TOML string that reads back as ``text`` (a script as a readable literal block
    when it can be one, else a basic string with escapes)."""
    if multiline and "'''" not in text and not text.endswith("'") and all(
            ch in "\n\t" or unicodedata.category(ch) != "Cc" for ch in text):
        return "'''\n" + text + "'''"
    # JSON's escapes are TOML's too; TOML also wants DEL escaped.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def to_toml(m: FixManifest) -> str:
    """The manifest as TOML with its scripts inline: what ``fix show`` prints and diffs
    compare. :func:`parse_manifest` reads it back to an equal manifest."""
    out = [f"id = {_toml_string(m.id)}", f"version = {m.version}",
           f"title = {_toml_string(m.title)}",
           f"description = {_toml_string(m.description)}",
           f"platforms = {_toml_value(list(m.platforms))}",
           f"interpreter = {_toml_string(m.interpreter)}",
           f"timeout_s = {m.timeout_s}", f"risk = {_toml_string(m.risk)}",
           f"consent = {_toml_value(m.consent)}", f"rules = {_toml_value(list(m.rules))}",
           f"script = {_toml_string(m.script, multiline=True)}"]
    if m.verify is not None:
        out.append(f"verify = {_toml_string(m.verify, multiline=True)}")
    for p in m.parameters:
        out.append(f"\n[parameters.{p.name}]")
        out.extend(f"{key} = {_toml_value(value)}" for key, value in p.as_dict().items())
    return "\n".join(out) + "\n"


def diff_text(old: FixManifest, new: FixManifest) -> str:
    """A unified diff of two versions' :func:`to_toml` (scripts included), digests on top."""
    import difflib

    lines = difflib.unified_diff(to_toml(old).splitlines(keepends=True),
                                 to_toml(new).splitlines(keepends=True),
                                 fromfile=f"{old.ref} {digest(old)}",
                                 tofile=f"{new.ref} {digest(new)}")
    return "".join(lines)
