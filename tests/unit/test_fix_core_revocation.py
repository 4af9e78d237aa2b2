"""common/fixes/revocation.py: the signed list an agent keeps. An update is adopted only if
signed by a pinned relay key under the revocation namespace and newer (serial); entries
are unioned, so no list ever lifts a revocation; the bytes are canonical and strict."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from backline.common.fixes import (
    RevocationList,
    digest,
    generate_key,
    is_revoked,
    manifest_from_dict,
    merge,
    parse_manifest,
    sign,
)
from backline.common.fixes import revocation as rv

TOML = '''
id = "dns-flush"
version = 1
title = "Flush the DNS cache"
platforms = ["linux"]
interpreter = "sh"
script = "resolvectl flush-caches\\n"
timeout_s = 60
risk = "low"
'''
M1 = parse_manifest(TOML)
M2 = manifest_from_dict({**M1.as_dict(), "version": 2})
RELAY_PRIV, RELAY_PUB = generate_key("relay")
OTHER_PRIV, OTHER_PUB = generate_key("other")
D0 = "sha256:" + "0" * 64


def revoke(m: object = M1, reason: str = "broke DNS", at: float = 1_700_000_000.0
           ) -> rv.Revoked:
    assert hasattr(m, "id")
    return rv.entry(m.id, m.version, digest(m), reason, at)  # type: ignore[attr-defined]


def signed(serial: int, *entries: rv.Revoked) -> tuple[RevocationList, str]:
    rl = rv.make(serial, entries)
    return rl, rv.sign(rl, RELAY_PRIV)


def test_adopt_a_signed_newer_list() -> None:
    new, sig = signed(1, revoke())
    assert rv.check_update(None, new, sig, [RELAY_PUB]) is None
    kept = merge(None, new, sig, [RELAY_PUB])
    assert kept.serial == 1
    hit = is_revoked(kept, M1)
    assert hit is not None and hit.reason == "broke DNS"
    assert is_revoked(kept, M2) is None
    assert rv.verify(new, sig, [RELAY_PUB]) is not None


def test_merge_never_lifts_a_revocation() -> None:
    kept = merge(None, *signed(1, revoke()), [RELAY_PUB])
    emptier, sig = signed(2)  # genuine, newer, and without the entry
    kept = merge(kept, emptier, sig, [RELAY_PUB])
    assert kept.serial == 2 and is_revoked(kept, M1)
    other, sig = signed(3, revoke(M2))
    kept = merge(kept, other, sig, [RELAY_PUB])
    assert kept.serial == 3 and is_revoked(kept, M1) and is_revoked(kept, M2)


def test_a_changed_reason_does_not_replace_the_kept_entry() -> None:
    kept = merge(None, *signed(1, revoke(reason="first")), [RELAY_PUB])
    kept = merge(kept, *signed(2, revoke(reason="second", at=1.0)), [RELAY_PUB])
    assert [e.reason for e in kept.entries] == ["first"]


@pytest.mark.parametrize("serial", [0, 4, 5])
def test_lower_or_equal_serial_is_ignored(serial: int) -> None:
    kept = merge(None, *signed(5, revoke()), [RELAY_PUB])
    stale, sig = signed(serial, revoke(M2))
    assert rv.check_update(kept, stale, sig, [RELAY_PUB]) == "stale_serial"
    assert merge(kept, stale, sig, [RELAY_PUB]) == kept


def test_bad_signatures_are_ignored() -> None:
    kept = merge(None, *signed(1, revoke()), [RELAY_PUB])
    new = rv.make(2, [revoke(M2)])
    for sig in (rv.sign(new, OTHER_PRIV),                         # key not pinned
                rv.sign(rv.make(3, [revoke(M2)]), RELAY_PRIV),    # another list's
                sign(rv.canonical_bytes(new), RELAY_PRIV),        # approval namespace
                rv.sign(new, RELAY_PRIV).replace("A", "B", 3),    # tampered
                "", "garbage"):
        assert rv.check_update(kept, new, sig, [RELAY_PUB]) == "bad_signature"
        assert merge(kept, new, sig, [RELAY_PUB]) == kept
    # an empty pin set trusts nothing
    assert merge(None, new, rv.sign(new, RELAY_PRIV), []) == rv.EMPTY


def test_is_revoked_by_id_version_or_digest() -> None:
    by_ref = rv.make(1, [rv.entry("dns-flush", 1, D0, "", 0)])
    assert is_revoked(by_ref, M1) and not is_revoked(by_ref, M2)
    by_digest = rv.make(1, [rv.entry("some-other-id", 9, digest(M2), "", 0)])
    assert is_revoked(by_digest, M2) and not is_revoked(by_digest, M1)
    assert is_revoked(by_digest, ("x-y", 1, digest(M2)))
    assert is_revoked(None, M1) is None and is_revoked(rv.EMPTY, M1) is None


def test_canonical_bytes_sorted_deduplicated_and_stable() -> None:
    a, b = revoke(M1), revoke(M2)
    one, two = rv.make(7, [a, b, a]), rv.make(7, [b, a])
    assert rv.canonical_bytes(one) == rv.canonical_bytes(two)
    raw = rv.canonical_bytes(one)
    assert raw.startswith(b"backline fix revocations v1\n") and raw.isascii()
    body = json.loads(raw.split(b"\n", 1)[1])
    assert body == {"serial": 7, "entries": [a.as_dict(), b.as_dict()]}
    assert rv.from_canonical(raw) == one


def test_ssh_keygen_verifies_a_revocation_list(tmp_path: Path) -> None:
    rl, sig = signed(1, revoke())
    (tmp_path / "allowed").write_text(f"relay {RELAY_PUB}\n")
    (tmp_path / "list.sig").write_text(sig)
    done = subprocess.run(["/usr/bin/ssh-keygen", "-Y", "verify", "-n",
                           "backline-fix-revocation", "-f", str(tmp_path / "allowed"), "-I",
                           "relay", "-s", str(tmp_path / "list.sig")],
                          input=rv.canonical_bytes(rl), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("data", [
    b"",
    b"backline fix manifest v1\n{}",
    b"backline fix revocations v1\n{\"serial\": 1, \"entries\": []}",   # not compact
    b"backline fix revocations v1\n{\"entries\":[],\"serial\":-1}",
    b"backline fix revocations v1\n{\"entries\":[],\"serial\":1,\"x\":1}",
    b"backline fix revocations v1\n{\"entries\":[{}],\"serial\":1}",
    b"backline fix revocations v1\nnot json",
    b"backline fix revocations v1\n\xff",
    b"backline fix revocations v1\n" + b" " * 43008,
])
def test_from_canonical_is_strict(data: bytes) -> None:
    with pytest.raises(rv.RevocationError):
        rv.from_canonical(data)


def test_from_canonical_refuses_unsorted_entries() -> None:
    a, b = revoke(M1), revoke(M2)
    body = {"entries": [b.as_dict(), a.as_dict()], "serial": 1}
    raw = rv.CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(rv.RevocationError, match=r"canonical"):
        rv.from_canonical(raw)


@pytest.mark.parametrize(("args", "field"), [
    (("Bad_ID", 1, D0), "id"), (("ok-id", 0, D0), "version"), (("ok-id", True, D0), "version"),
    (("ok-id", 1, "sha256:xyz"), "digest"), (("ok-id", 1, D0.upper()), "digest"),
    (("ok-id", 1, D0, "r" * 501), "reason"), (("ok-id", 1, D0, "\ud800"), "reason"),
    (("ok-id", 1, D0, "", -1.0), "at"), (("ok-id", 1, D0, "", float("nan")), "at"),
    (("ok-id", 1, D0, "", True), "at"), (("ok-id", 1, D0, "", "now"), "at"),
])
def test_entry_bounds(args: tuple[object, ...], field: str) -> None:
    with pytest.raises(rv.RevocationError, match=rf"^revocation {field}:"):
        rv.entry(*args)  # type: ignore[arg-type]


def test_list_bounds() -> None:
    with pytest.raises(rv.RevocationError, match=r"serial"):
        rv.make(-1, [])
    with pytest.raises(rv.RevocationError, match=r"serial"):
        rv.make(2**53, [])
    many = [rv.entry("fix-a", i, D0, "", 0) for i in range(1, 10002)]
    with pytest.raises(rv.RevocationError, match=r"10000"):
        rv.make(1, many)


def test_what_fits_one_control_frame() -> None:
    """The relay checks fits_one_frame before it sends; agents refuse anything longer."""
    from backline.common import protocol

    entries: list[rv.Revoked] = []
    i = 1
    while True:
        # the longest id, a reason of 200 characters that each escape to 6 bytes
        candidate = [*entries, rv.entry("f" * 48, i, "sha256:" + f"{i:064x}", "é" * 200,
                                        1_700_000_000.123)]
        if not rv.fits_one_frame(rv.make(1, candidate)):
            break
        entries, i = candidate, i + 1
    rl = rv.make(1, entries)
    msg = rv.encode_message(rl, rv.sign(rl, RELAY_PRIV))
    # as a frame: {"v": 1, "type": ..., fields} (protocol.encode once the type is declared)
    frame = json.dumps({"v": protocol.VERSION, **msg})
    assert len(rl.entries) >= 25 and len(frame.encode()) <= protocol.MAX_FRAME_BYTES
    assert len(msg["list_b64"]) <= 56 * 1024  # the relay's schema bound for list_b64
    assert rv.decode_message(msg)[0] == rl
    too_long = rv.make(1, candidate)
    big = rv.encode_message(too_long, rv.sign(too_long, RELAY_PRIV))
    with pytest.raises(rv.RevocationError):
        rv.decode_message(big)


def test_state_file_round_trip() -> None:
    kept = merge(None, *signed(3, revoke(), revoke(M2)), [RELAY_PUB])
    again = rv.list_from_dict(json.loads(json.dumps(kept.as_dict())))
    assert again == kept
    with pytest.raises(rv.RevocationError):
        rv.list_from_dict({"serial": 1})
    with pytest.raises(rv.RevocationError):
        rv.list_from_dict({"serial": 1, "entries": [{"id": "a"}]})


def test_control_message_round_trip_and_bounds() -> None:
    rl, sig = signed(4, revoke())
    msg = rv.encode_message(rl, sig)
    assert msg["type"] == "fix_revocations"
    # standard padded base64 (what the relay's protocol schema and the agent expect)...
    assert msg["list_b64"] == base64.b64encode(rv.canonical_bytes(rl)).decode()
    # ...and base64url, padded or not, is read too
    url = base64.urlsafe_b64encode(rv.canonical_bytes(rl)).decode()
    for text in (url, url.rstrip("=")):
        assert rv.decode_message({**msg, "list_b64": text})[0] == rl
    got, got_sig = rv.decode_message(json.loads(json.dumps(msg)))
    assert got == rl and got_sig == sig
    assert merge(None, got, got_sig, [RELAY_PUB]).serial == 4
    for bad in ({**msg, "type": "other"}, {**msg, "list_b64": "!!"},
                {**msg, "list_b64": 5}, {**msg, "signature": None},
                {**msg, "signature": "x" * 9000},
                {**msg, "list_b64": "A" * (6 * 1024 * 1024)},
                {**msg, "list_b64": base64.b64encode(b"not a list").decode()},
                {**msg, "list_b64": "ab+c-d=="}, {**msg, "list_b64": "abc d"}):
        with pytest.raises(rv.RevocationError):
            rv.decode_message(bad)


def test_add_raises_the_serial() -> None:
    rl = rv.add(rv.EMPTY, revoke())
    assert rl.serial == 1 and is_revoked(rl, M1)
    rl2 = rv.add(rl, revoke())
    assert rl2.serial == 2 and len(rl2.entries) == 1
