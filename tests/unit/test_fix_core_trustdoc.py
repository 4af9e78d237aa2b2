"""common/fixes/trustdoc.py: the relay's fix keys, told to agents enrolled earlier, signed
by the audit key they pinned; forgeries, other relays' documents, replays and non-canonical
payloads are refused."""

from __future__ import annotations

import base64
import json

import pytest

from backline.common import keys
from backline.common.fixes import generate_key
from backline.common.fixes import trustdoc as td
from backline.common.fixes.revocation import b64decode as rv_b64decode

AUDIT = keys.generate()
AUDIT_PUB = keys.public_raw(AUDIT)
_, FIX1 = generate_key("fix key 1")
_, FIX2 = generate_key("fix key 2")


def test_round_trip_and_serial() -> None:
    doc = td.document(AUDIT, 3, [FIX1, FIX2])
    got = td.read(json.loads(json.dumps(doc)), AUDIT_PUB, kept_serial=2)
    assert got.serial == 3
    assert got.fix_keys == (FIX1, FIX2)
    with pytest.raises(td.TrustDocError, match="replay"):
        td.read(doc, AUDIT_PUB, kept_serial=3)


def test_forged_or_foreign_documents() -> None:
    other = keys.generate()
    with pytest.raises(td.TrustDocError, match="not signed"):
        td.read(td.document(other, 5, [FIX1]), AUDIT_PUB)
    # the other relay's bytes, re-signed by... nobody we trust; and ours with its name
    data = td.payload(keys.public_raw(other), 5, [FIX1])
    doc = {"payload_b64": base64.b64encode(data).decode(),
           "signature_b64": base64.b64encode(AUDIT.sign(data)).decode()}
    with pytest.raises(td.TrustDocError, match="another relay"):
        td.read(doc, AUDIT_PUB)


def test_tampered_and_malformed() -> None:
    doc = td.document(AUDIT, 1, [FIX1])
    data = rv_b64decode(doc["payload_b64"]).replace(b'"serial":1', b'"serial":9')
    with pytest.raises(td.TrustDocError, match="not signed"):
        td.read({**doc, "payload_b64": base64.b64encode(data).decode()}, AUDIT_PUB)
    loose = td.CONTEXT + json.dumps({"fix_keys": [FIX1], "relay": keys.fingerprint(AUDIT_PUB),
                                     "serial": 1}).encode()
    signed = {"payload_b64": base64.b64encode(loose).decode(),
              "signature_b64": base64.b64encode(AUDIT.sign(loose)).decode()}
    with pytest.raises(td.TrustDocError, match="canonical"):
        td.read(signed, AUDIT_PUB)
    for bad in ({}, {"payload_b64": "!!", "signature_b64": "AA=="}, [],
                {"payload_b64": doc["payload_b64"], "signature_b64": "A" * 200}):
        with pytest.raises(td.TrustDocError):
            td.read(bad, AUDIT_PUB)  # type: ignore[arg-type]


@pytest.mark.parametrize(("serial", "lines"), [
    (0, [FIX1]), (2**53, [FIX1]), (True, [FIX1]), (1, []), (1, [FIX1] * 2),
    (1, [FIX1, FIX1 + " same key"]),
    (1, ["not a key"]), (1, [FIX1] + [generate_key()[1] for _ in range(8)]), (1, FIX1),
], ids=["serial-0", "serial-too-big", "serial-bool", "no-keys", "duplicate", "same-key-renamed",
        "not-a-key", "too-many", "a-bare-string"])
def test_payload_bounds(serial: int, lines: list[str]) -> None:
    with pytest.raises(td.TrustDocError):
        td.payload(AUDIT_PUB, serial, lines)


def test_served_in_the_protocols_base64url() -> None:
    doc = td.document(AUDIT, 1, [FIX1])
    assert "=" not in doc["payload_b64"] + doc["signature_b64"]
    assert "+" not in doc["payload_b64"] and "/" not in doc["payload_b64"]
