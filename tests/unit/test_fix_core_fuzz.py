"""Property tests for common/fixes: whatever arrives (a manifest object, parameter values,
signature text), the only outcome is a result or the module's own error, never another
exception; and every manifest that is accepted round-trips to the same digest."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backline.common.fixes import (
    FixTrust,
    ManifestError,
    ParamError,
    check_signatures,
    digest,
    generate_key,
    manifest_from_dict,
    parse_manifest,
    validate_params,
)
from backline.common.fixes import revocation as rv
from backline.common.fixes.manifest import to_toml

BASE: dict[str, Any] = {
    "id": "fuzz-fix", "version": 1, "title": "Fuzz", "platforms": ["linux"],
    "interpreter": "sh", "script": "true\n", "timeout_s": 10, "risk": "low",
}
KEYS = ["id", "version", "title", "description", "platforms", "interpreter", "script",
        "verify", "timeout_s", "risk", "consent", "rules", "parameters", "script_file"]
PARAM_KEYS = ["type", "description", "required", "default", "enum", "pattern", "min_length",
              "max_length", "min", "max", "extra"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True), st.text(max_size=20),
                    st.sampled_from(["string", "integer", "boolean", "linux", "sh", "low",
                                     "^[a-z]+$", "(", "a", "A"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
param_specs = st.dictionaries(st.sampled_from(PARAM_KEYS), json_values, max_size=6)
overrides = st.dictionaries(st.sampled_from(KEYS), json_values, max_size=4)
params = st.dictionaries(st.sampled_from(["A", "B", "X_1"]), param_specs, max_size=3)


@settings(max_examples=200, deadline=None)
@given(overrides, params)
def test_manifest_from_dict_accepts_or_names_a_field(over: dict[str, Any],
                                                     ps: dict[str, Any]) -> None:
    d = {**BASE, **over}
    if ps:
        d["parameters"] = ps
    try:
        m = manifest_from_dict(d)
    except ManifestError as exc:
        assert str(exc).split(":", 1)[0]
        return
    wire = json.loads(json.dumps(m.as_dict()))
    again = manifest_from_dict(wire)
    assert again == m and digest(again) == digest(m)
    assert parse_manifest(to_toml(m)) == m


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=200).filter(lambda t: t.strip() and "\x00" not in t),
       st.text(max_size=100))
def test_to_toml_round_trips_any_script_text(script: str, description: str) -> None:
    try:
        m = manifest_from_dict({**BASE, "script": script, "description": description})
    except ManifestError:
        return
    assert parse_manifest(to_toml(m)) == m


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_parse_manifest_never_crashes(text: str) -> None:
    try:
        parse_manifest(text)
    except ManifestError:
        pass


M = manifest_from_dict({**BASE, "parameters": {
    "S": {"type": "string", "pattern": "^[a-z]*$", "max_length": 8},
    "T": {"type": "string"},
    "I": {"type": "integer", "min": 0, "max": 9},
    "B": {"type": "boolean"},
    "E": {"type": "integer", "enum": [1, 2]},
}})


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["S", "T", "I", "B", "E", "Z"]), json_values,
                       max_size=5))
def test_validate_params_accepts_or_refuses_cleanly(values: dict[str, Any]) -> None:
    try:
        env = validate_params(M, values)
    except ParamError as exc:
        assert len(str(exc)) < 200
        return
    for name, text in env.items():
        assert name.startswith("BACKLINE_PARAM_") and isinstance(text, str)
        assert "\x00" not in text and "\n" not in text
        text.encode("utf-8")


PRIV, PUB = generate_key("fuzz")
TRUST = FixTrust((PUB,))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=600), st.binary(max_size=300),
                          st.builds(lambda body: "-----BEGIN SSH SIGNATURE-----\n" + body
                                    + "\n-----END SSH SIGNATURE-----\n",
                                    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789+/=",
                                            max_size=400)),
                          json_values), max_size=4))
def test_check_signatures_never_crashes_on_junk(sigs: list[Any]) -> None:
    verdict = check_signatures(M, sigs, TRUST)
    assert not verdict.ok
    assert verdict.reason in ("unsigned", "bad_signature", "unpinned_key",
                              "not_enough_signatures")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400), json_values)
def test_revocation_readers_refuse_cleanly(data: bytes, msg: Any) -> None:
    for attempt in (lambda: rv.from_canonical(rv.CONTEXT + data),
                    lambda: rv.decode_message(msg),
                    lambda: rv.list_from_dict(msg)):
        try:
            attempt()
        except rv.RevocationError:
            pass
