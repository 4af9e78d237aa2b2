"""common/fixes/manifest.py: every field's bounds (refused with a message naming the field),
``*_file`` kept inside the manifest's folder, and canonical bytes that are stable, blind
to the order sets are written in, and changed by any byte that decides what runs."""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from backline.common.fixes import (
    FixManifest,
    ManifestError,
    canonical_bytes,
    digest,
    load_manifest,
    manifest_from_dict,
    parse_manifest,
)
from backline.common.fixes.manifest import MAX_SCRIPT_BYTES, canonical_body

GOLDEN_TOML = '''
id = "restart-service"
version = 3
title = "Restart a systemd service"
description = "Restarts SERVICE and waits."
platforms = ["linux", "macos"]
interpreter = "bash"
script = "systemctl restart -- \\"$BACKLINE_PARAM_SERVICE\\"\\n"
verify = "systemctl is-active --quiet -- \\"$BACKLINE_PARAM_SERVICE\\"\\n"
timeout_s = 120
risk = "medium"
consent = true
rules = ["failed-services"]

[parameters.SERVICE]
type = "string"
description = "systemd unit to restart"
required = true
pattern = '^[A-Za-z0-9@._-]+$'
max_length = 64

[parameters.WAIT]
type = "integer"
default = 5
min = 0
max = 60

[parameters.FORCE]
type = "boolean"
default = false
'''
GOLDEN_SCRIPT = 'systemctl restart -- "$BACKLINE_PARAM_SERVICE"\n'
GOLDEN_VERIFY = 'systemctl is-active --quiet -- "$BACKLINE_PARAM_SERVICE"\n'
#: Pinned: if this changes, every approval ever signed stops verifying.
GOLDEN_DIGEST = "sha256:7405c3af756faff365f700e35a02348a9f972016a5d3c96b9eb08ef779f083cd"


def base() -> dict[str, Any]:
    """A valid manifest in its dict form (what the wire carries)."""
    return parse_manifest(GOLDEN_TOML).as_dict()


def refused(d: dict[str, Any], field: str) -> str:
    with pytest.raises(ManifestError) as info:
        manifest_from_dict(d)
    message = str(info.value)
    assert message.startswith(field), message
    return message


# -- happy ----------------------------------------------------------------------------

def test_golden_manifest_parses_to_what_it_says() -> None:
    m = parse_manifest(GOLDEN_TOML)
    assert (m.id, m.version, m.ref) == ("restart-service", 3, "restart-service@3")
    assert m.platforms == ("linux", "macos")
    assert m.script == GOLDEN_SCRIPT and m.verify == GOLDEN_VERIFY
    assert m.verify_timeout_s == 60
    assert [p.name for p in m.parameters] == ["FORCE", "SERVICE", "WAIT"]
    service = m.parameter("SERVICE")
    assert service is not None and service.required and service.max_length == 64
    assert service.min_length == 0
    assert m.parameter("NOPE") is None


def test_as_dict_round_trips_and_is_json() -> None:
    import json

    m = parse_manifest(GOLDEN_TOML)
    wire = json.loads(json.dumps(m.as_dict()))
    again = manifest_from_dict(wire)
    assert again == m and digest(again) == digest(m)


def test_defaults_of_optional_fields() -> None:
    d = base()
    for key in ("description", "verify", "consent", "rules", "parameters"):
        d.pop(key)
    m = manifest_from_dict(d)
    assert m.description == "" and m.verify is None and m.consent is True
    assert m.rules == () and m.parameters == ()


# -- the canonical bytes --------------------------------------------------------------

def test_golden_canonical_bytes_and_digest() -> None:
    m = parse_manifest(GOLDEN_TOML)
    script = hashlib.sha256(GOLDEN_SCRIPT.encode()).hexdigest()
    verify = hashlib.sha256(GOLDEN_VERIFY.encode()).hexdigest()
    expected = (
        b"backline fix manifest v1\n"
        b'{"consent":true,"description":"Restarts SERVICE and waits.",'
        b'"id":"restart-service","interpreter":"bash","parameters":{'
        b'"FORCE":{"default":false,"enum":null,"max":null,"max_length":null,"min":null,'
        b'"min_length":null,"pattern":null,"required":false,"type":"boolean"},'
        b'"SERVICE":{"default":null,"enum":null,"max":null,"max_length":64,"min":null,'
        b'"min_length":0,"pattern":"^[A-Za-z0-9@._-]+$","required":true,"type":"string"},'
        b'"WAIT":{"default":5,"enum":null,"max":60,"max_length":null,"min":0,'
        b'"min_length":null,"pattern":null,"required":false,"type":"integer"}},'
        b'"platforms":["linux","macos"],"risk":"medium","script_sha256":"'
        + script.encode() + b'","timeout_s":120,"title":"Restart a systemd service",'
        b'"verify_sha256":"' + verify.encode()
        + b'","version":3}'
    )
    assert canonical_bytes(m) == expected
    assert digest(m) == "sha256:" + hashlib.sha256(expected).hexdigest() == GOLDEN_DIGEST


def test_canonical_is_blind_to_the_order_sets_are_written_in() -> None:
    reordered = GOLDEN_TOML.replace('platforms = ["linux", "macos"]',
                                    'platforms = ["macos", "linux"]')
    # parameters declared in another order, keys inside a table in another order
    head, _, params = reordered.partition("[parameters.SERVICE]")
    tables = ("[parameters.SERVICE]" + params).split("\n\n")
    shuffled = head + "\n\n".join(reversed(tables)) + "\n"
    shuffled = shuffled.replace("min = 0\nmax = 60", "max = 60\nmin = 0")
    assert shuffled != GOLDEN_TOML
    assert digest(parse_manifest(shuffled)) == GOLDEN_DIGEST
    d1, d2 = base(), base()
    d1["parameters"]["SERVICE"]["enum"] = ["a", "b", "c"]
    d2["parameters"]["SERVICE"]["enum"] = ["c", "a", "b"]
    assert digest(manifest_from_dict(d1)) == digest(manifest_from_dict(d2))


def test_canonical_ignores_what_informs_only() -> None:
    d = base()
    d["rules"] = ["dns-slow"]
    d["parameters"]["SERVICE"]["description"] = "other"
    assert digest(manifest_from_dict(d)) == GOLDEN_DIGEST


@pytest.mark.parametrize("field,value", [("title", "Restart a systemd service!"),
                                         ("title", "Update your browser"),
                                         ("description", ""),
                                         ("description", "Restarts SERVICE and waits. ")])
def test_what_the_customer_is_shown_is_signed(field: str, value: str) -> None:
    """A relay cannot relabel a signed fix at the consent prompt: the title and the
    description are in the canonical bytes (lead's decision, 14:58)."""
    d = base()
    d[field] = value
    assert digest(manifest_from_dict(d)) != GOLDEN_DIGEST


def flip_one_byte(text: str, at: int = 0) -> str:
    return text[:at] + chr(ord(text[at]) ^ 1) + text[at + 1:]


@pytest.mark.parametrize("change", [
    lambda d: d.update(script=flip_one_byte(d["script"], 5)),
    lambda d: d.update(script=d["script"] + " "),
    lambda d: d.update(verify=flip_one_byte(d["verify"], 3)),
    lambda d: d.update(verify=None),
    lambda d: d.update(version=4),
    lambda d: d.update(id="restart-servicf"),
    lambda d: d.update(platforms=["linux"]),
    lambda d: d.update(interpreter="sh"),
    lambda d: d.update(timeout_s=121),
    lambda d: d.update(risk="high"),
    lambda d: d.update(consent=False),
    lambda d: d["parameters"]["WAIT"].update(max=61),
    lambda d: d["parameters"]["WAIT"].update(min=1),
    lambda d: d["parameters"]["WAIT"].update(default=6),
    lambda d: d["parameters"]["SERVICE"].update(max_length=65),
    lambda d: d["parameters"]["SERVICE"].update(min_length=1),
    lambda d: d["parameters"]["SERVICE"].update(pattern="^[A-Za-z0-9@._-]*$"),
    lambda d: d["parameters"]["SERVICE"].update(required=False),
    lambda d: d["parameters"].update(FORCE={"type": "string"}),
    lambda d: d["parameters"].pop("FORCE"),
    lambda d: d["parameters"].update(EXTRA={"type": "boolean"}),
], ids=lambda _: "")
def test_canonical_changes_with_any_executing_byte(change: Any) -> None:
    d = base()
    change(d)
    assert digest(manifest_from_dict(d)) != GOLDEN_DIGEST


def test_canonical_body_lists_exactly_the_contract_fields() -> None:
    body = canonical_body(parse_manifest(GOLDEN_TOML))
    assert set(body) == {"id", "version", "platforms", "interpreter", "script_sha256",
                         "verify_sha256", "parameters", "timeout_s", "consent", "risk",
                         "title", "description"}
    assert all(set(p) == {"type", "required", "default", "enum", "pattern", "min_length",
                          "max_length", "min", "max"} for p in body["parameters"].values())


def test_canonical_bytes_are_ascii_even_for_unicode_patterns() -> None:
    d = base()
    d["parameters"]["SERVICE"]["pattern"] = "^[äöü]+$"
    raw = canonical_bytes(manifest_from_dict(d))
    assert raw.isascii() and b"\\u00e4" in raw


# -- every field's bounds, each refused naming it --------------------------------------

@pytest.mark.parametrize(("field", "value"), [
    ("id", "A-upper"), ("id", "x"), ("id", "1abc"), ("id", "a" * 49), ("id", "dns_flush"),
    ("id", "dns-flush\n"), ("id", 5), ("id", "dns flush"), ("id", "ünï"),
    ("version", 0), ("version", -1), ("version", 1.0), ("version", True), ("version", "1"),
    ("version", 2**31),
    ("title", ""), ("title", "x" * 121), ("title", "two\nlines"), ("title", "tab\there"),
    ("title", "esc\x1b[31m"), ("title", 7), ("title", "bad \ud800"), ("title", "a\u2028b"),
    ("description", "x" * 4001), ("description", "nul\x00"), ("description", ["x"]),
    ("platforms", []), ("platforms", ["linux", "linux"]), ("platforms", ["bsd"]),
    ("platforms", "linux"), ("platforms", ["linux", "macos", "windows", "linux"]),
    ("interpreter", "zsh"), ("interpreter", "SH"), ("interpreter", None),
    ("script", ""), ("script", "   \n"), ("script", "echo \x00"), ("script", 5),
    ("script", "x" * (MAX_SCRIPT_BYTES + 1)), ("script", "é" * (MAX_SCRIPT_BYTES // 2 + 1)),
    ("script", "echo \udc80"),
    ("verify", ""), ("verify", "x" * (MAX_SCRIPT_BYTES + 1)), ("verify", 1),
    ("timeout_s", 0), ("timeout_s", 3601), ("timeout_s", 1.5), ("timeout_s", False),
    ("risk", "none"), ("risk", ""), ("risk", 1),
    ("consent", "yes"), ("consent", 1),
    ("rules", "dns-slow"), ("rules", ["Bad Rule"]), ("rules", ["a", "a"]),
    ("rules", [f"r{i}" for i in range(33)]), ("rules", [1]),
])
def test_field_bounds(field: str, value: object) -> None:
    d = base()
    d[field] = value
    message = refused(d, field)
    assert len(message) < 300


def test_script_at_the_limit_is_accepted() -> None:
    d = base()
    d["script"] = "#" * (MAX_SCRIPT_BYTES - 1) + "\n"
    assert len(manifest_from_dict(d).script.encode()) == MAX_SCRIPT_BYTES


@pytest.mark.parametrize("field", ["id", "version", "title", "platforms", "interpreter",
                                   "script", "timeout_s", "risk"])
def test_missing_required_field_is_named(field: str) -> None:
    d = base()
    d.pop(field)
    refused(d, field)


def test_unknown_top_level_field_is_named() -> None:
    d = base()
    d["run_as"] = "root"
    assert "unknown field" in refused(d, "'run_as'")


def test_not_a_mapping() -> None:
    with pytest.raises(ManifestError, match=r"manifest"):
        manifest_from_dict(["id"])  # type: ignore[arg-type]


@pytest.mark.parametrize(("change", "field"), [
    (lambda p: p.update(type="float"), "parameters.SERVICE.type"),
    (lambda p: p.pop("type"), "parameters.SERVICE.type"),
    (lambda p: p.update(min_length=-1), "parameters.SERVICE.min_length"),
    (lambda p: p.update(min_length=65), "parameters.SERVICE.min_length"),
    (lambda p: p.update(max_length=4097), "parameters.SERVICE.max_length"),
    (lambda p: p.update(max_length=0), "parameters.SERVICE.max_length"),
    (lambda p: p.update(max_length="64"), "parameters.SERVICE.max_length"),
    (lambda p: p.update(pattern="("), "parameters.SERVICE.pattern"),
    (lambda p: p.update(pattern="x" * 513), "parameters.SERVICE.pattern"),
    (lambda p: p.update(pattern="a\nb"), "parameters.SERVICE.pattern"),
    (lambda p: p.update(min=1), "parameters.SERVICE.min"),
    (lambda p: p.update(enum=[]), "parameters.SERVICE.enum"),
    (lambda p: p.update(enum=["a", "a"]), "parameters.SERVICE.enum"),
    (lambda p: p.update(enum=[1]), "parameters.SERVICE.enum[0]"),
    (lambda p: p.update(enum=["ok", "not ok"]), "parameters.SERVICE.enum[1]"),
    (lambda p: p.update(enum=[str(i) for i in range(65)]), "parameters.SERVICE.enum"),
    (lambda p: p.update(default="has space"), "parameters.SERVICE.default"),
    (lambda p: p.update(default="x" * 65), "parameters.SERVICE.default"),
    (lambda p: p.update(default=5), "parameters.SERVICE.default"),
    (lambda p: p.update(required="yes"), "parameters.SERVICE.required"),
    (lambda p: p.update(description="x" * 501), "parameters.SERVICE.description"),
    (lambda p: p.update(secret=True), "parameters.SERVICE"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_string_parameter_bounds(change: Any, field: str) -> None:
    d = base()
    change(d["parameters"]["SERVICE"])
    refused(d, field)


@pytest.mark.parametrize(("change", "field"), [
    (lambda p: p.update(min=61), "parameters.WAIT.min"),
    (lambda p: p.update(max=2**53), "parameters.WAIT.max"),
    (lambda p: p.update(min=0.5), "parameters.WAIT.min"),
    (lambda p: p.update(pattern="x"), "parameters.WAIT.pattern"),
    (lambda p: p.update(max_length=3), "parameters.WAIT.max_length"),
    (lambda p: p.update(default=61), "parameters.WAIT.default"),
    (lambda p: p.update(default="5"), "parameters.WAIT.default"),
    (lambda p: p.update(default=True), "parameters.WAIT.default"),
    (lambda p: p.update(enum=[1, 99]), "parameters.WAIT.enum[1]"),
    (lambda p: p.update(enum=[1, True]), "parameters.WAIT.enum[1]"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_integer_parameter_bounds(change: Any, field: str) -> None:
    d = base()
    change(d["parameters"]["WAIT"])
    refused(d, field)


@pytest.mark.parametrize(("change", "field"), [
    (lambda p: p.update(enum=[True]), "parameters.FORCE.enum"),
    (lambda p: p.update(min=0), "parameters.FORCE.min"),
    (lambda p: p.update(default="false"), "parameters.FORCE.default"),
    (lambda p: p.update(default=0), "parameters.FORCE.default"),
], ids=lambda x: x if isinstance(x, str) else "")
def test_boolean_parameter_bounds(change: Any, field: str) -> None:
    d = base()
    change(d["parameters"]["FORCE"])
    refused(d, field)


@pytest.mark.parametrize("name", ["lower", "_X", "1X", "X-Y", "X" * 33, "Ä", ""])
def test_parameter_names(name: str) -> None:
    d = base()
    d["parameters"][name] = {"type": "boolean"}
    refused(d, "parameters")


def test_at_most_16_parameters() -> None:
    d = base()
    d["parameters"] = {f"P{i}": {"type": "boolean"} for i in range(16)}
    assert len(manifest_from_dict(d).parameters) == 16
    d["parameters"]["P16"] = {"type": "boolean"}
    assert "at most 16" in refused(d, "parameters")


def test_parameters_must_be_tables() -> None:
    d = base()
    d["parameters"] = ["SERVICE"]
    refused(d, "parameters")
    d = base()
    d["parameters"]["SERVICE"] = "string"
    refused(d, "parameters.SERVICE")


def test_enum_members_and_integer_enum_accepted() -> None:
    d = base()
    d["parameters"]["WAIT"]["enum"] = [10, 5, 0]
    d["parameters"]["SERVICE"]["enum"] = ["cron.service", "ssh.service"]
    m = manifest_from_dict(d)
    wait = m.parameter("WAIT")
    assert wait is not None and wait.enum == (10, 5, 0)
    assert canonical_body(m)["parameters"]["WAIT"]["enum"] == [0, 5, 10]


# -- TOML and files --------------------------------------------------------------------

def test_bad_toml_is_named() -> None:
    with pytest.raises(ManifestError, match=r"^manifest: not valid TOML"):
        parse_manifest("id = ")


def test_oversized_manifest_text() -> None:
    with pytest.raises(ManifestError, match=r"^manifest: more than"):
        parse_manifest("# " + "x" * (1024 * 1024))


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


FILE_TOML = '''
id = "dns-flush"
version = 1
title = "Flush the DNS cache"
platforms = ["linux"]
interpreter = "sh"
script_file = "{script}"
{verify}
timeout_s = 60
risk = "low"
'''


def file_manifest(folder: Path, script: str, verify: str = "") -> Path:
    return write(folder, "fix.toml", FILE_TOML.format(script=script, verify=verify))


def test_script_and_verify_files_are_read(tmp_path: Path) -> None:
    write(tmp_path, "dns-flush.sh", "resolvectl flush-caches\n")
    write(tmp_path, "sub/verify.sh", "true\n")
    m = load_manifest(file_manifest(tmp_path, "dns-flush.sh", 'verify_file = "sub/verify.sh"'))
    assert m.script == "resolvectl flush-caches\n" and m.verify == "true\n"
    assert manifest_from_dict(m.as_dict()) == m


def test_load_through_a_symlinked_manifest(tmp_path: Path) -> None:
    write(tmp_path, "lib/x.sh", "true\n")
    real = file_manifest(tmp_path / "lib", "x.sh")
    (tmp_path / "link.toml").symlink_to(real)
    # the link's folder is the base: x.sh is not next to the link
    with pytest.raises(ManifestError, match=r"^script_file"):
        load_manifest(tmp_path / "link.toml")
    assert load_manifest(real).script == "true\n"


def test_script_file_escaping_by_dotdot_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "outside.sh", "rm -rf ~\n")
    inner = tmp_path / "fix"
    inner.mkdir()
    with pytest.raises(ManifestError, match=r"^script_file: .* outside the manifest's folder"):
        load_manifest(file_manifest(inner, "../outside.sh"))
    with pytest.raises(ManifestError, match=r"^script_file: .* outside"):
        load_manifest(file_manifest(inner, "sub/../../outside.sh"))


def test_script_file_escaping_by_symlink_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "outside.sh", "rm -rf ~\n")
    inner = tmp_path / "fix"
    inner.mkdir()
    (inner / "link.sh").symlink_to(tmp_path / "outside.sh")
    (inner / "dirlink").symlink_to(tmp_path)
    with pytest.raises(ManifestError, match=r"^script_file: .* outside"):
        load_manifest(file_manifest(inner, "link.sh"))
    with pytest.raises(ManifestError, match=r"^script_file: .* outside"):
        load_manifest(file_manifest(inner, "dirlink/outside.sh"))


def test_verify_file_escaping_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "outside.sh", "true\n")
    inner = tmp_path / "fix"
    write(inner, "ok.sh", "true\n")
    with pytest.raises(ManifestError, match=r"^verify_file: .* outside"):
        load_manifest(file_manifest(inner, "ok.sh", 'verify_file = "../outside.sh"'))


def test_symlink_inside_the_folder_is_fine(tmp_path: Path) -> None:
    write(tmp_path, "real.sh", "true\n")
    (tmp_path / "alias.sh").symlink_to("real.sh")
    assert load_manifest(file_manifest(tmp_path, "alias.sh")).script == "true\n"


@pytest.mark.parametrize("name", ["/etc/passwd", "", "missing.sh", "."])
def test_bad_script_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(ManifestError, match=r"^script_file"):
        load_manifest(file_manifest(tmp_path, name))


def test_script_file_special_files(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.sh")
    with pytest.raises(ManifestError, match=r"^script_file: .*not a regular file"):
        load_manifest(file_manifest(tmp_path, "fifo.sh"))
    (tmp_path / "dir.sh").mkdir()
    with pytest.raises(ManifestError, match=r"^script_file"):
        load_manifest(file_manifest(tmp_path, "dir.sh"))


def test_script_file_size_and_encoding(tmp_path: Path) -> None:
    (tmp_path / "big.sh").write_bytes(b"#" * (MAX_SCRIPT_BYTES + 1))
    with pytest.raises(ManifestError, match=r"^script_file: .*256 KiB"):
        load_manifest(file_manifest(tmp_path, "big.sh"))
    (tmp_path / "latin1.sh").write_bytes(b"echo caf\xe9\n")
    with pytest.raises(ManifestError, match=r"^script_file: .*UTF-8"):
        load_manifest(file_manifest(tmp_path, "latin1.sh"))


def test_script_and_script_file_together_or_neither(tmp_path: Path) -> None:
    write(tmp_path, "x.sh", "true\n")
    both = FILE_TOML.format(script="x.sh", verify='script = "true"')
    with pytest.raises(ManifestError, match=r"^script: give either"):
        parse_manifest(both, tmp_path)
    d = base()
    d.pop("script")
    refused(d, "script")


def test_files_need_a_folder_and_never_travel() -> None:
    toml = FILE_TOML.format(script="x.sh", verify="")
    with pytest.raises(ManifestError, match=r"^script_file: needs the manifest's folder"):
        parse_manifest(toml)
    d = base()
    d["verify_file"] = "v.sh"
    refused(d, "verify_file")


def test_load_manifest_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"^manifest: cannot read"):
        load_manifest(tmp_path / "none.toml")
    (tmp_path / "bad.toml").write_bytes(b"id = \"\xff\"")
    with pytest.raises(ManifestError, match=r"^manifest: .*UTF-8"):
        load_manifest(tmp_path / "bad.toml")


def test_manifest_is_frozen() -> None:
    m = parse_manifest(GOLDEN_TOML)
    with pytest.raises(AttributeError):
        m.script = "rm -rf /"  # type: ignore[misc]
    assert isinstance(copy.deepcopy(m), FixManifest)


@pytest.mark.parametrize("field", ["script", "verify", "title", "description"])
@pytest.mark.parametrize("char", ["\u202e", "\u202a", "\u2066", "\u2069"])
def test_bidirectional_overrides_are_refused(field: str, char: str) -> None:
    """Trojan Source: the approver must approve the script as it reads."""
    d = base()
    d[field] = f"echo ok # {char}; rm -rf ~ {char}\n".strip() if field == "title" else \
        f'access="user" # {char}check{char} \n'
    assert "bidirectional control" in refused(d, field)


def test_bidi_in_a_parameter_pattern_is_refused() -> None:
    d = base()
    d["parameters"]["SERVICE"]["pattern"] = "^[a-z]+\u202e$"
    refused(d, "parameters.SERVICE.pattern")


def test_huge_integers_are_refused_without_printing_them() -> None:
    d = base()
    d["version"] = 10**5000
    assert "a huge number" in refused(d, "version")
    with pytest.raises(ManifestError, match=r"^manifest: not valid TOML"):
        parse_manifest(GOLDEN_TOML.replace("version = 3", "version = " + "9" * 5000))


@pytest.mark.parametrize("script", [
    "echo '''\n", "echo hi'", "a\r\nb\r\n", "del \x7f here\n", "tab\there\n", "no newline",
    'quote " and \\ backslash\n', "ünïcödé ☕ 𝄞\n", "\x1b[31mred\n", "'''",
])
def test_to_toml_round_trips(script: str) -> None:
    from backline.common.fixes.manifest import to_toml

    d = base()
    d["script"] = script
    d["description"] = "two\nlines \"quoted\""
    m = manifest_from_dict(d)
    assert parse_manifest(to_toml(m)) == m


def test_diff_text_and_runs_on() -> None:
    from backline.common.fixes.manifest import diff_text, runs_on

    m = parse_manifest(GOLDEN_TOML)
    m2 = manifest_from_dict({**m.as_dict(), "version": 4, "script": "echo changed\n"})
    diff = diff_text(m, m2)
    assert diff.startswith(f"--- restart-service@3 {GOLDEN_DIGEST}\n+++ restart-service@4 ")
    assert "-systemctl restart" in diff and "+echo changed" in diff
    assert diff_text(m, m) == ""
    assert runs_on(m, "linux") and runs_on(m, "darwin") and not runs_on(m, "win32")
    assert not runs_on(m, "freebsd14")
