"""The bundle verifier (relay/audit_bundle.py) on bundles built in memory: OK for a whole
one, and for hostile ones (wrong types, garbage, huge proofs) a named problem, never an
exception. The real relay's bundles are tests/integration/test_audit_bundle.py's."""

from __future__ import annotations

import base64
import copy
import hashlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from backline.common import keys
from backline.relay import audit_bundle as b
from backline.relay import audit_note, audit_tree

KEY = keys.generate()
ORIGIN = "backline-relay/unit"


def make_bundle(trail_data: bytes = b"recording bytes", *, ended: dict[str, Any] | None = None,
                extra: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
                with_blob: bool = True,
                absent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A trail of 11 events (+ ``extra`` session events: action, details); event 11 is
    ``fix.run.ended`` with ``ended`` (default: the agent's ``output_sha256`` of
    ``trail_data``); the bundle carries fix output fr_1 = b"recording bytes" unless
    ``with_blob`` is false (then listed in ``absent``)."""
    events, tree, prev = [], audit_tree.MemoryTree(), "0" * 64
    ended_text = b._canonical(ended or {"run": "fr_1", "output_sha256": hashlib.sha256(
        trail_data).hexdigest(), "session": "s1"})
    more = list(extra)
    for seq in range(1, 12 + len(more)):
        action, details = "test.event", '{"n":1}'
        if seq == 11:
            action, details = "fix.run.ended", ended_text
        elif seq > 11:
            action, details = more[seq - 12][0], b._canonical(more[seq - 12][1])
        ev = {"seq": seq, "time": 1.5 + seq, "actor": "user:a", "action": action,
              "target": "session:s1" if seq % 2 or seq > 11 else "other",
              "details": details, "prev_hash": prev}
        body = b.event_body(ev)
        ev["hash"] = prev = hashlib.sha256(body).hexdigest()
        tree.append(audit_tree.leaf_hash(body))
        events.append(ev)
    mine = [dict(e, inclusion=[base64.b64encode(h).decode()
                               for h in tree.inclusion(e["seq"] - 1, tree.size)])
            for e in events if e["target"] == "session:s1"]
    data = b"recording bytes"
    blobs = [{"kind": "fix_output", "id": "fr_1", "sha256": hashlib.sha256(data).hexdigest(),
              "bytes": len(data), "data": base64.b64encode(data).decode()}]
    if not with_blob:
        absent = absent if absent is not None else [
            {"kind": "fix_output", "id": "fr_1", "sha256": blobs[0]["sha256"],
             "reason": "missing from the relay's blob store (No such file or directory)"}]
        blobs = []
    checkpoint = audit_note.sign(audit_note.checkpoint_text(ORIGIN, tree.size, tree.root()),
                                 ORIGIN, KEY)
    manifest = audit_note.sign(b.manifest_text(ORIGIN, "s1", tree.size, mine, blobs, absent),
                               ORIGIN, KEY)
    return {"format": b.FORMAT, "session": "s1", "origin": ORIGIN,
            "verifier_key": audit_note.verifier_key(ORIGIN, keys.public_raw(KEY)),
            "checkpoint": checkpoint, "manifest": manifest, "events": mine, "blobs": blobs,
            "absent": absent or []}


PINNED = audit_note.verifier_key(ORIGIN, keys.public_raw(KEY))


def test_a_whole_bundle_verifies() -> None:
    rep = b.verify(make_bundle(), PINNED)
    assert rep.ok, rep.problems
    assert "6 events proven in the trail of 11 events" in rep.describe()


def test_only_a_pinned_key_gives_ok_and_exit_status_0() -> None:
    """Pinned (verifier key or raw public key): OK, 0. Unpinned: never OK, 3, saying what
    was and was not checked. A problem: 1, pinned or not."""
    raw = base64.b64encode(keys.public_raw(KEY)).decode()
    for pinned in (PINNED, raw):
        rep = b.verify(make_bundle(), pinned)
        assert rep.exit_status == b.EXIT_OK and rep.describe().startswith("OK: "), pinned
    rep = b.verify(make_bundle())
    assert rep.ok and not rep.key_pinned and rep.exit_status == b.EXIT_UNPINNED
    text = rep.describe()
    assert text.startswith("UNPINNED: NOT VERIFIED") and "OK" not in text.split("\n")[0]
    assert "- checked: session s1: 6 events proven" in text
    assert f"by the key the bundle itself carries ({ORIGIN}+" in text
    assert "- NOT checked: that this key is the relay's" in text
    broken = make_bundle()
    broken["events"].pop()
    assert b.verify(broken).exit_status == b.verify(broken, PINNED).exit_status == \
        b.EXIT_NOT_OK


def test_a_swapped_proof_and_a_changed_session_are_named() -> None:
    doc = make_bundle()
    doc["events"][0]["inclusion"], doc["events"][1]["inclusion"] = (
        doc["events"][1]["inclusion"], doc["events"][0]["inclusion"])
    rep = b.verify(doc, PINNED)
    assert not rep.ok and any("is not proven in the signed trail" in p for p in rep.problems)
    doc = make_bundle()
    doc["session"] = "s2"
    assert "the manifest is not this bundle's" in b.verify(doc, PINNED).problems[0]
    doc = make_bundle()
    doc["blobs"] = []
    assert "fix output fr_1 was removed" in b.verify(doc, PINNED).problems[0]
    # The relay's manifest and the blob agree, but the proven trail recorded another
    # digest for that run's output: named.
    rep = b.verify(make_bundle(trail_data=b"what the agent reported"), PINNED)
    assert any("fix output fr_1 was altered" in p and "the audit trail recorded" in p
               for p in rep.problems), rep.problems


HOSTILE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(["checkpoint", "manifest", "events", "blobs", "verifier_key",
                        "session", "format"]), HOSTILE)
def test_hostile_fields_are_named_never_raised(field: str, value: Any) -> None:
    doc = make_bundle()
    doc[field] = value
    rep = b.verify(doc)
    assert not rep.ok or (field == "session" and value == "s1")
    assert rep.problems or rep.ok


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 5), st.sampled_from(["seq", "time", "details", "inclusion", "hash"]),
       HOSTILE)
def test_hostile_event_fields_are_named_never_raised(i: int, field: str, value: Any) -> None:
    doc = make_bundle()
    ev = copy.deepcopy(doc["events"][i])
    if ev.get(field) == value:
        return
    ev[field] = value
    doc["events"][i] = ev
    rep = b.verify(doc, PINNED)
    assert not rep.ok and rep.problems


DATA_SHA = hashlib.sha256(b"recording bytes").hexdigest()


def test_a_fix_output_is_checked_against_the_relays_blob_not_the_agents_claim() -> None:
    """``output_ok`` false: the agent claimed another digest, the relay kept the output
    under ``blob``; the intact bundle is OK (it was called altered)."""
    ended = {"run": "fr_1", "session": "s1", "output_ok": False, "blob": DATA_SHA,
             "output_sha256": hashlib.sha256(b"what the agent claimed").hexdigest()}
    rep = b.verify(make_bundle(ended=ended), PINNED)
    assert rep.ok, rep.problems
    ended["blob"] = hashlib.sha256(b"another output").hexdigest()
    rep = b.verify(make_bundle(ended=ended), PINNED)
    assert any("fix output fr_1 was altered" in p and ended["blob"] in p
               for p in rep.problems), rep.problems


def test_evidence_missing_from_the_bundle_fails_unless_retention_deleted_it() -> None:
    ended = {"run": "fr_1", "session": "s1", "blob": DATA_SHA, "output_sha256": DATA_SHA}
    rep = b.verify(make_bundle(ended=ended, with_blob=False), PINNED)
    assert not rep.ok
    assert any("fix output fr_1 is missing" in p and "event #11" in p
               and "No such file" in p for p in rep.problems), rep.problems
    # Not even listed as absent (a builder that skipped it): still named.
    rep = b.verify(make_bundle(ended=ended, with_blob=False, absent=[]), PINNED)
    assert any("fix output fr_1 is missing" in p for p in rep.problems), rep.problems
    deleted = ("retention.deleted", {"kind": "fix_output", "id": "fr_1", "session": "s1",
                                     "sha256": DATA_SHA, "age_days": 40, "days": 30})
    gone = [{"kind": "fix_output", "id": "fr_1", "sha256": DATA_SHA,
             "reason": "deleted by retention (event #12)"}]
    rep = b.verify(make_bundle(ended=ended, with_blob=False, extra=[deleted], absent=gone),
                   PINNED)
    assert rep.ok, rep.problems
    assert "1 deleted by retention" in rep.describe()
    # The trail says the relay kept nothing (blob ""): nothing to demand.
    rep = b.verify(make_bundle(ended=dict(ended, blob=""), with_blob=False), PINNED)
    assert rep.ok, rep.problems
    # An absent entry the manifest does not sign is named.
    doc = make_bundle(ended=ended, with_blob=False, extra=[deleted], absent=gone)
    doc["absent"].append({"kind": "recording", "id": "r_x", "sha256": "-", "reason": "x"})
    assert "list of absent evidence" in " ".join(b.verify(doc, PINNED).problems)


def test_verify_file_refuses_a_file_over_its_cap(tmp_path: Any) -> None:
    import json

    path = tmp_path / "bundle.json"
    path.write_text(json.dumps(make_bundle()))
    assert b.verify_file(path, PINNED).ok
    rep = b.verify_file(path, PINNED, max_bytes=100)
    assert not rep.ok and "over the 100 bytes verify-bundle reads" in rep.problems[0]
