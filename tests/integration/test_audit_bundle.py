"""Acceptance 2 of issue 14: a real relay, a real session with a terminal recording, its
evidence bundle (API and CLI); then the relay stopped and, in a fresh directory with
nothing but the bundle and the pinned key, ``backline-relay audit verify-bundle`` says OK
for the intact bundle and names each tampering: an altered event, a removed event, an
altered recording, a checkpoint signed by another key, a bundle from another relay.

Also the proofs API (checkpoint, inclusion, consistency) checked by the verifiers of
relay/audit_tree.py, and the checkpoint sink the relay wrote as it ran."""

from __future__ import annotations

import base64
import copy
import getpass
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backline.common import keys
from backline.relay import audit_bundle, audit_note, audit_tree
from tests.harness import RELAY, Api, RelayProcess, admin_api, audit_actions, browser_socket
from tests.integration.test_sessions import open_session
from tests.integration.test_terminal import start_shell_agent, stream
from tests.terminal_client import TerminalClient


@dataclass
class Evidence:
    root: Path
    bundle: dict[str, Any]
    vkey: str
    session: str
    recording: str
    sink: Path


def _terminal_session(relay: RelayProcess, admin: Api, agent_id: str) -> tuple[str, str]:
    session = open_session(admin, agent_id, capabilities=["info", "shell"],
                           reason="bundle test", ticket="T-14")
    with browser_socket(relay, admin, stream(session["id"])) as ws:
        term = TerminalClient(ws)
        term.message("ready")
        term.type("echo proof$((6*7))\r")
        term.line(b"proof42")
        term.type("exit\r")
        done = term.message("exit")
    admin.request("DELETE", f"/api/v1/sessions/{session['id']}")
    return session["id"], done["recording"]["id"]


@pytest.fixture(scope="module")
def evidence(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Evidence]:
    root = tmp_path_factory.mktemp("bundle")
    sink = root / "sink" / "checkpoints.jsonl"
    relay = RelayProcess(root, extra_env={
        "BACKLINE_AUDIT_CHECKPOINT_SINKS": f"file:{sink}",
        "BACKLINE_AUDIT_CHECKPOINT_EVERY": "20"}).start()
    admin = admin_api(relay)
    agent = None
    try:
        agent = start_shell_agent(root, relay, admin, "bundle-1")
        session, recording = _terminal_session(relay, admin, agent.agent_id)
        api_proofs(admin)
        got = admin.get(f"/api/v1/sessions/{session}/bundle")
        assert got.status_code == 200, got.text
        assert 'filename="backline-bundle-' in got.headers["content-disposition"]
        assert admin.get("/api/v1/sessions/nosuchsession/bundle").status_code == 404
        exported = [e for e in audit_actions(relay) if e["action"] == "audit.bundle.exported"]
        assert exported and exported[-1]["details"]["session"] == session
        assert exported[-1]["actor"] == "user:admin"
    finally:
        if agent is not None:
            agent.stop()
        admin.close()
        relay.stop()
    # The relay is stopped: the CLI writes the bundle from the data directory, and
    # records that it did into the same trail.
    out = root / "bundle.json"
    made = relay.cli("audit", "bundle", session, "-o", str(out))
    assert "wrote" in made.stderr, made.stderr
    doc = json.loads(out.read_text())
    last = audit_actions(relay)[-1]
    assert (last["actor"], last["action"], last["target"]) == (
        f"cli:{getpass.getuser()}", "audit.bundle.exported", f"session:{session}")
    assert last["details"] == {"session": session, "events": len(doc["events"]),
                               "blobs": len(doc["blobs"]),
                               "size": int(doc["checkpoint"].split("\n")[1])}
    assert relay.cli("audit", "verify").returncode == 0
    vkey = relay.cli("audit", "key").stdout.strip()
    yield Evidence(root, doc, vkey, session, recording, sink)


def api_proofs(admin: Api) -> None:
    """The proofs API, checked with the RFC 9162 verifiers; bounded parameters."""
    cp = admin.get("/api/v1/audit/checkpoint")
    assert cp.status_code == 200, cp.text
    body = cp.json()
    name, public = audit_note.parse_verifier_key(body["verifier_key"])
    parsed = audit_note.parse_checkpoint(audit_note.open_note(body["note"], name, public))
    size = parsed.size
    assert size == body["size"] and base64.b64encode(parsed.root).decode() == body["root"]
    inc = admin.get("/api/v1/audit/proof/inclusion", params={"seq": 1, "size": size})
    assert inc.status_code == 200, inc.text
    p = inc.json()
    audit_tree.verify_inclusion(0, size, base64.b64decode(p["leaf_hash"]),
                                [base64.b64decode(h) for h in p["proof"]], parsed.root)
    first = admin.get("/api/v1/audit/export").text.splitlines()
    assert first, "the trail has events"
    older = min(20, size)
    older_note = admin.get("/api/v1/audit/proof/consistency",
                           params={"from": older, "to": size})
    assert older_note.status_code == 200, older_note.text
    c = older_note.json()
    audit_tree.verify_consistency(older, size, base64.b64decode(c["from_root"]), parsed.root,
                                  [base64.b64decode(h) for h in c["proof"]])
    for bad in ({"seq": 0}, {"seq": "1e3"}, {"seq": 2**40}, {}):
        r = admin.get("/api/v1/audit/proof/inclusion", params=bad)
        assert r.status_code == 400, (bad, r.text)
    assert admin.get("/api/v1/audit/proof/inclusion",
                     params={"seq": 10**9}).status_code == 404
    assert admin.get("/api/v1/audit/proof/consistency",
                     params={"from": size, "to": 1}).status_code == 404
    assert admin.get("/api/v1/audit/proof/consistency",
                     params={"from": "x", "to": 1}).status_code == 400


def offline(evidence: Evidence, doc: dict[str, Any], name: str, *extra: str
            ) -> subprocess.CompletedProcess[str]:
    """``verify-bundle`` in a fresh directory: no data directory, no configuration, a
    HOME of its own, no BACKLINE_ variable: only the bundle (and the key file)."""
    fresh = evidence.root / f"auditor-{name}"
    fresh.mkdir()
    (fresh / "bundle.json").write_text(json.dumps(doc))
    (fresh / "relay.key").write_text(evidence.vkey + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKLINE_")}
    env["HOME"] = str(fresh)
    return subprocess.run([RELAY, "audit", "verify-bundle", "bundle.json", *extra], cwd=fresh,
                          env=env, capture_output=True, text=True, timeout=60)


def resign(doc: dict[str, Any], key: Any, origin: str) -> dict[str, Any]:
    """What another relay's bundle is: its checkpoint and manifest under its key/origin."""
    out = copy.deepcopy(doc)
    text, _ = audit_note.split(doc["checkpoint"])
    cp = audit_note.parse_checkpoint(text)
    out["checkpoint"] = audit_note.sign(audit_note.checkpoint_text(origin, cp.size, cp.root),
                                        origin, key)
    mtext, _ = audit_note.split(doc["manifest"], audit_bundle.MAX_MANIFEST_BYTES)
    lines = mtext.split("\n")
    lines[1] = origin
    out["manifest"] = audit_note.sign("\n".join(lines), origin, key)
    out["origin"] = origin
    out["verifier_key"] = audit_note.verifier_key(origin, keys.public_raw(key))
    return out


def test_the_bundle_holds_the_session(evidence: Evidence) -> None:
    doc = evidence.bundle
    actions = [e["action"] for e in doc["events"]]
    assert "session.opened" in actions or any(a.startswith("session.") for a in actions)
    assert "recording.stored" in actions
    assert [b["id"] for b in doc["blobs"] if b["kind"] == "recording"] == [evidence.recording]
    assert doc["verifier_key"] == evidence.vkey
    data = base64.b64decode(doc["blobs"][0]["data"])
    assert b"proof42" in data


def _raw_key(vkey: str) -> str:
    """The relay's Ed25519 public key alone, base64 (no origin name, no key hash)."""
    return base64.b64encode(audit_note.parse_verifier_key(vkey)[1]).decode()


def test_intact_bundle_verifies_offline_with_the_pinned_key(evidence: Evidence) -> None:
    r = offline(evidence, evidence.bundle, "intact", "--key", "relay.key")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK: session " + evidence.session), r.stdout
    assert "signed by the pinned key (backline-relay/" in r.stdout


def test_the_relays_public_key_alone_verifies_an_intact_bundle(evidence: Evidence) -> None:
    """Raw base64, as an auditor may get it (no `audit key` line): OK, exit 0."""
    raw = _raw_key(evidence.vkey)
    r = offline(evidence, evidence.bundle, "intact-raw", "--key", raw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("OK: session " + evidence.session), r.stdout
    assert f"signed by the pinned key (raw public key {raw}" in r.stdout
    # The same key in a file works too.
    (evidence.root / "raw.key").write_text(raw + "\n")
    r = offline(evidence, evidence.bundle, "intact-raw-file", "--key",
                str(evidence.root / "raw.key"))
    assert r.returncode == 0 and r.stdout.startswith("OK: "), r.stdout + r.stderr


def test_without_a_pinned_key_it_never_says_ok(evidence: Evidence) -> None:
    """Unpinned, the bundle is only checked against the key it carries: the answer says
    what was checked and what was not, on stderr, and exits 3 (never 0, never 1)."""
    r = offline(evidence, evidence.bundle, "unpinned")
    assert r.returncode == audit_bundle.EXIT_UNPINNED == 3, r.stdout + r.stderr
    assert r.stdout == "" and not r.stderr.startswith("OK"), r.stdout
    assert r.stderr.startswith("UNPINNED: NOT VERIFIED that this bundle comes from the "
                               "relay"), r.stderr
    assert f"- checked: session {evidence.session}: " in r.stderr
    assert "- NOT checked: that this key is the relay's" in r.stderr
    assert "--key KEY" in r.stderr
    helped = subprocess.run([RELAY, "audit", "verify-bundle", "--help"], capture_output=True,
                            text=True, timeout=60)
    assert "3 UNPINNED" in " ".join(helped.stdout.split()), helped.stdout


def test_an_altered_event_is_named(evidence: Evidence) -> None:
    doc = copy.deepcopy(evidence.bundle)
    ev = next(e for e in doc["events"] if e["action"] == "recording.stored")
    details = json.loads(ev["details"])
    details["bytes"] += 1
    ev["details"] = json.dumps(details, sort_keys=True, separators=(",", ":"))
    r = offline(evidence, doc, "altered-event", "--key", "relay.key")
    assert r.returncode == 1
    assert f"event #{ev['seq']} was altered" in r.stderr, r.stderr
    # Recomputing its hash does not help: the manifest and the tree still say otherwise.
    ev["hash"] = audit_bundle.hashlib.sha256(audit_bundle.event_body(ev)).hexdigest()
    r = offline(evidence, doc, "altered-rehashed", "--key", "relay.key")
    assert r.returncode == 1
    assert f"event #{ev['seq']} is not proven in the signed trail" in r.stderr, r.stderr


def test_a_removed_event_is_named(evidence: Evidence) -> None:
    doc = copy.deepcopy(evidence.bundle)
    gone = doc["events"].pop(1)
    r = offline(evidence, doc, "removed-event", "--key", "relay.key")
    assert r.returncode == 1
    assert f"event #{gone['seq']} was removed" in r.stderr, r.stderr


def test_an_altered_recording_is_named(evidence: Evidence) -> None:
    doc = copy.deepcopy(evidence.bundle)
    blob = doc["blobs"][0]
    data = base64.b64decode(blob["data"]).replace(b"proof42", b"proof43")
    blob["data"] = base64.b64encode(data).decode()
    r = offline(evidence, doc, "altered-recording", "--key", "relay.key")
    assert r.returncode == 1
    assert f"recording {evidence.recording} was altered" in r.stderr, r.stderr


def test_a_checkpoint_signed_by_another_key_is_named(evidence: Evidence) -> None:
    doc = resign(evidence.bundle, keys.generate(), evidence.bundle["origin"])
    r = offline(evidence, doc, "other-key", "--key", "relay.key")
    assert r.returncode == 1
    assert "the checkpoint is signed by another key" in r.stderr, r.stderr
    # Unpinned, the forged bundle is consistent with the key it carries: it is not OK
    # (exit 3, UNPINNED), and the key it was checked against is named (not the relay's).
    forged = offline(evidence, doc, "other-key-unpinned")
    assert forged.returncode == 3 and forged.stdout == "", forged.stdout
    assert "UNPINNED: NOT VERIFIED" in forged.stderr
    # name+keyhash (the key's base64 after them may itself hold a "+")
    carried = "+".join(doc["verifier_key"].split("+", 2)[:2])
    assert carried != "+".join(evidence.vkey.split("+", 2)[:2]) and carried in forged.stderr


def test_a_bundle_from_another_relay_is_named(evidence: Evidence) -> None:
    doc = resign(evidence.bundle, keys.generate(), "backline-relay/0123456789abcdef")
    r = offline(evidence, doc, "other-relay", "--key", "relay.key")
    assert r.returncode == 1
    assert "the bundle is from another relay" in r.stderr, r.stderr
    # Pinned by its raw public key (no name), the other relay's key is still refused.
    r = offline(evidence, doc, "other-relay-raw", "--key", _raw_key(evidence.vkey))
    assert r.returncode == 1 and "signed by another key" in r.stderr, r.stderr


def test_not_a_bundle_is_named(evidence: Evidence) -> None:
    r = offline(evidence, {"format": "something else"}, "garbage", "--key", "relay.key")
    assert r.returncode == 1 and "not a Backline audit bundle" in r.stderr


def test_the_sink_holds_the_relays_checkpoints(evidence: Evidence) -> None:
    lines = [json.loads(line) for line in evidence.sink.read_text().splitlines()]
    assert lines, "the relay wrote checkpoints to its sink"
    name, public = audit_note.parse_verifier_key(evidence.vkey)
    for line in lines:
        cp = audit_note.parse_checkpoint(audit_note.open_note(line["note"], name, public))
        assert cp.size == line["size"]


# --- the review's defects (issue 14 follow-up) ------------------------------------------

def _store(evidence: Evidence) -> Any:
    from backline.relay import config
    from backline.relay.store import open_store

    return open_store(config.load(overrides={"data_dir": evidence.root / "relay"},
                                  environ={}))


def _trail(evidence: Evidence) -> list[dict[str, Any]]:
    store = _store(evidence)
    try:
        return list(store.audit.export())
    finally:
        store.engine.dispose()


def _recording_file(evidence: Evidence) -> Path:
    digest = next(b["sha256"] for b in evidence.bundle["blobs"] if b["kind"] == "recording")
    return evidence.root / "relay" / "blobs" / digest[:2] / digest


def test_a_deleted_recording_file_is_named_not_skipped(evidence: Evidence) -> None:
    """The recording's file removed from the blob store: the bundle lists it as absent
    with why, and verify-bundle fails naming it (it said OK before)."""
    path = _recording_file(evidence)
    saved = path.read_bytes()
    path.unlink()
    try:
        out = evidence.root / "no-recording.json"
        made = subprocess.run([RELAY, "audit", "bundle", evidence.session, "-o", str(out),
                               "--data-dir", str(evidence.root / "relay")],
                              capture_output=True, text=True, timeout=60)
        assert made.returncode == 0, made.stderr
        assert f"absent: recording {evidence.recording}: missing" in made.stderr
    finally:
        path.write_bytes(saved)
    doc = json.loads(out.read_text())
    assert [a["id"] for a in doc["absent"]] == [evidence.recording]
    got = offline(evidence, doc, "no-recording", "--key", "relay.key")
    assert got.returncode == 1, got.stdout
    assert f"recording {evidence.recording} is missing" in got.stderr
    assert "No such file or directory" in got.stderr


def test_bundles_over_their_limits_are_refused_never_cut(
        evidence: Evidence, monkeypatch: pytest.MonkeyPatch) -> None:
    made = subprocess.run([RELAY, "audit", "bundle", evidence.session, "-o",
                           str(evidence.root / "small.json"), "--max-evidence-bytes", "10",
                           "--data-dir", str(evidence.root / "relay")],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 1
    assert "evidence is over 10 bytes" in made.stderr
    assert not (evidence.root / "small.json").exists()
    refused = _trail(evidence)[-1]  # the CLI's refusal is audited as the API's is
    assert (refused["actor"], refused["action"], refused["target"]) == (
        f"cli:{getpass.getuser()}", "audit.bundle.refused", f"session:{evidence.session}")
    assert refused["details"]["reason"] == "too_much_evidence"
    assert refused["details"]["limit"] == 10 and refused["details"]["amount"] > 10
    assert set(refused["details"]) == {"session", "reason", "limit", "amount"}
    store = _store(evidence)
    try:
        monkeypatch.setattr(audit_bundle, "MAX_EVENTS", 3)
        with pytest.raises(audit_bundle.TooLarge, match="more than 3 audit events"):
            audit_bundle.build(store, evidence.session)
    finally:
        store.engine.dispose()
    path = evidence.root / "big.json"
    path.write_text(json.dumps(evidence.bundle))
    got = offline(evidence, evidence.bundle, "file-cap", "--max-bytes", "1000")
    assert got.returncode == 1 and "over the 1000 bytes verify-bundle reads" in got.stderr


def test_the_api_refuses_a_bundle_over_its_cap_and_audits_a_failing_sink(
        evidence: Evidence) -> None:
    """The relay again, with a 100-byte bundle limit and a checkpoint sink that cannot
    be written (a directory): 413 naming the limit and the CLI, audited; the sink's
    failures audited as ``audit.sink.failed`` (not only logged) and counted in metrics."""
    from tests.harness import ADMIN_PASSWORD

    broken = evidence.root / "sink-is-a-directory"
    broken.mkdir()
    relay = RelayProcess(evidence.root, extra_env={
        "BACKLINE_AUDIT_BUNDLE_MAX_BYTES": "100",
        "BACKLINE_AUDIT_CHECKPOINT_SINKS": f"file:{broken}",
        "BACKLINE_AUDIT_CHECKPOINT_EVERY": "1"})
    relay.admin_password, relay.admin_password_changed = ADMIN_PASSWORD, True
    relay.start()
    try:
        admin = admin_api(relay)
        got = admin.get(f"/api/v1/sessions/{evidence.session}/bundle")
        assert got.status_code == 413, got.text
        assert got.json()["error"] == "too_large"
        assert "over 100 bytes" in got.text and "backline-relay audit bundle" in got.text
        metrics = admin.get("/metrics").text
        admin.close()
    finally:
        relay.stop()
    events = audit_actions(relay)
    refused = [e for e in events if e["action"] == "audit.bundle.refused"]
    assert refused and refused[-1]["details"]["reason"] == "too_much_evidence"
    assert refused[-1]["details"]["limit"] == 100
    failed = [e for e in events if e["action"] == "audit.sink.failed"]
    assert failed, "the failing sink was audited"
    assert failed[0]["target"] == f"sink:file:{broken}"
    assert failed[0]["details"]["reason"] == "write_failed"
    assert "backline_audit_sink_failures" in metrics


def test_a_recording_deleted_by_retention_verifies(evidence: Evidence) -> None:
    """A proven ``retention.deleted`` names the recording: absent, and verify says OK.
    (Last of the module: the trail keeps that event.)"""
    store = _store(evidence)
    digest = _recording_file(evidence).name
    try:
        store.audit.append("system", "retention.deleted", f"recording:{evidence.recording}",
                           {"kind": "recording", "id": evidence.recording,
                            "session": evidence.session, "agent": "a", "sha256": digest,
                            "age_days": 31.0, "days": 30})
        path = _recording_file(evidence)
        saved = path.read_bytes()
        path.unlink()
        try:
            doc = audit_bundle.build(store, evidence.session)
        finally:
            path.write_bytes(saved)
    finally:
        store.engine.dispose()
    assert doc["blobs"] == [] or all(b["kind"] != "recording" for b in doc["blobs"])
    assert doc["absent"][0]["reason"].startswith("deleted by retention (event #")
    got = offline(evidence, doc, "retention", "--key", "relay.key")
    assert got.returncode == 0, got.stderr
    assert "1 deleted by retention (proven)" in got.stdout


def test_bundles_are_built_one_at_a_time(evidence: Evidence) -> None:
    """Each bundle may hold hundreds of MiB while it is built, so the relay builds one
    at a time: eight auditors asking at once each get the bundle or a clear 503 ``busy``
    (with Retry-After, audited as ``audit.bundle.refused`` reason ``busy``, aggregated
    as floods are), never a queue; the slot is given back every time (a last request,
    alone, gets its bundle)."""
    import threading

    from tests.harness import ADMIN_PASSWORD

    relay = RelayProcess(evidence.root)
    relay.admin_password, relay.admin_password_changed = ADMIN_PASSWORD, True
    relay.start()
    try:
        admin = admin_api(relay)
        url = f"/api/v1/sessions/{evidence.session}/bundle"
        start = threading.Barrier(8)
        answers: list[tuple[int, str, str | None]] = []

        def ask() -> None:
            start.wait()
            r = admin.http.get(url)
            answers.append((r.status_code, r.json().get("error", ""),
                            r.headers.get("retry-after")))

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        alone = admin.get(url)
        admin.close()
    finally:
        relay.stop()
    print(f"\n8 at once: {sorted(a[0] for a in answers)}")
    assert len(answers) == 8 and {a[0] for a in answers} <= {200, 503}, answers
    busy = [a for a in answers if a[0] == 503]
    assert all(a[1] == "busy" and a[2] == "5" for a in busy), busy
    assert any(a[0] == 200 for a in answers) and alone.status_code == 200
    from tests.integration.test_hostile_refusals import aggregated

    # (this trail also holds the earlier tests' refusals, which are not floods; an
    # aggregated row names no reason)
    single, count = aggregated([e for e in audit_actions(relay)
                                if e["action"] == "audit.bundle.refused"
                                and (e["details"].get("aggregated")
                                     or e["details"].get("reason") == "busy")])
    assert len(single) + count == len(busy)  # the first few one by one, then counted
