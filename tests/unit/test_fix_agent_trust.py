"""The agent's fix trust, revocations, cache and checks, on real files and real SSH
signatures: the pinned relay key (and the policy's offline keys) decide; the relay's
signed fix-trust document is adopted only with a greater serial; a revocation list is
merged only when signed by a pinned key, never lifts an entry, and an unreadable kept
list refuses everything; the cache re-verifies at every use."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from backline.agent.fixes import cache, checks, revocations, trust
from backline.agent.policy import FixPolicy, Policy, from_table
from backline.agent.state import Enrollment, StateDir
from backline.common import keys, protocol
from backline.common.fixes import revocation
from backline.common.fixes.manifest import FixManifest, canonical_bytes, digest, manifest_from_dict
from backline.common.fixes.signing import generate_key, sign

PRINCIPAL = "ag_test0000000001"


class Signer:
    """An approval key: the relay's, an offline approver's, or a stranger's."""

    def __init__(self, comment: str = "relay") -> None:
        self.private, self.public = generate_key(comment)

    def sign(self, m: FixManifest) -> str:
        return sign(canonical_bytes(m), self.private)

    def revocations(self, serial: int, *revoked: FixManifest, reason: str = "bad"
                    ) -> dict[str, Any]:
        rl = revocation.make(serial, [revocation.entry(m.id, m.version, digest(m), reason,
                                                       1.0) for m in revoked])
        msg = revocation.encode_message(rl, revocation.sign(rl, self.private))
        return {k: v for k, v in msg.items() if k != "type"}


def fix(**over: Any) -> FixManifest:
    body: dict[str, Any] = {
        "id": "test-fix", "version": 1, "title": "Say hello", "description": "A test fix.",
        "platforms": ["linux"], "interpreter": "sh",
        "script": 'printf "hello %s\\n" "$BACKLINE_PARAM_NAME"\n',
        "verify": "true\n", "timeout_s": 30, "risk": "low", "consent": False,
        "rules": ["test.rule"],
        "parameters": {"NAME": {"type": "string", "description": "who", "required": False,
                                "default": "world", "max_length": 64}},
    }
    body.update(over)
    return manifest_from_dict(body)


def enrolled(root: Path, fix_keys: list[str], audit: keys.PrivateKey | None = None) -> StateDir:
    state = StateDir(root)
    audit_b64 = protocol.b64e(keys.public_raw(audit)) if audit is not None else ""
    state.save_enrollment(keys.generate(), Enrollment(
        agent_id=PRINCIPAL, relay_url="https://127.0.0.1:9", control_url="wss://127.0.0.1:9/x",
        group="default", ca_public_key="ssh-ed25519 AAAA", audit_public_key=audit_b64,
        fix_keys=fix_keys))
    return state


def policy(**fix_table: Any) -> Policy:
    return from_table({"fix": fix_table} if fix_table else {})


def check(state: StateDir, m: FixManifest, sigs: list[str], pol: Policy | None = None,
          params: dict[str, object] | None = None, **kw: Any) -> checks.Checked:
    pol = pol or policy()
    return checks.check_fix(m, sigs, params or {}, state_root=state.root, fix_policy=pol.fix,
                            trust=trust.load_trust(state.root, pol), **kw)


def refused(state: StateDir, m: FixManifest, sigs: list[str], **kw: Any) -> str:
    with pytest.raises(checks.Refusal) as err:
        check(state, m, sigs, **kw)
    return err.value.reason


def test_the_pinned_relay_key_approves_and_nothing_else_does(tmp_path: Path) -> None:
    relay, stranger = Signer(), Signer("stranger")
    state = enrolled(tmp_path, [relay.public])
    m = fix()
    ok = check(state, m, [relay.sign(m)], params={"NAME": "$(touch X)"})
    assert ok.digest == digest(m) and ok.env == {"BACKLINE_PARAM_NAME": "$(touch X)"}
    assert refused(state, m, []) == "unsigned"
    assert refused(state, m, [stranger.sign(m)]) == "unpinned_key"
    changed = fix(script=m.script.replace("hello", "hellp"))  # one byte
    assert refused(state, changed, [relay.sign(m)]) == "bad_signature"
    v2 = fix(version=2)  # the approval of v1 replayed onto v2
    assert refused(state, v2, [relay.sign(m)]) == "bad_signature"
    assert refused(state, m, [relay.sign(m)], claimed_digest="sha256:" + "0" * 64) == (
        "digest_mismatch")
    assert refused(state, fix(platforms=["windows"]), [relay.sign(fix(platforms=["windows"]))]
                   ) == "platform"
    assert refused(state, m, [relay.sign(m)], pol=policy(decision="deny")) == "policy"
    assert refused(state, m, [relay.sign(m)], pol=policy(allowed_ids=["other-fix"])) == "policy"
    for bad in ("a\nb", "a\0b", "x" * 65, "\ud800"):
        assert refused(state, m, [relay.sign(m)], params={"NAME": bad}) == "params"
    assert refused(state, m, [relay.sign(m)], params={"OTHER": "x"}) == "params"
    # Not enrolled (an attended join): no relay key is pinned, nothing runs.
    assert refused(StateDir(tmp_path / "none"), m, [relay.sign(m)]) == "unpinned_key"


def test_offline_signatures_the_policy_requires(tmp_path: Path) -> None:
    relay, offline, other = Signer(), Signer("approver"), Signer("approver2")
    state = enrolled(tmp_path, [relay.public])
    pol = policy(offline_keys=[offline.public, other.public], required_offline=1)
    m = fix()
    # A compromised relay holding only its own key cannot reach this agent.
    assert refused(state, m, [relay.sign(m)], pol=pol) == "not_enough_signatures"
    ok = check(state, m, [relay.sign(m), offline.sign(m)], pol=pol)
    assert len(ok.signers) == 2
    # Offline signatures alone are not enough either: the relay's approval is needed.
    assert refused(state, m, [offline.sign(m), other.sign(m)], pol=pol) == (
        "not_enough_signatures")


def test_policy_fix_section_is_checked_loudly() -> None:
    from backline.agent.policy import PolicyError

    for table in ({"decision": "maybe"}, {"offline_keys": ["not a key"]},
                  {"required_offline": 1}, {"allowed_ids": ["Bad Id"]}, {"extra": 1}):
        with pytest.raises(PolicyError):
            from_table({"fix": table}, "p.toml")
    assert Policy().fix == FixPolicy()


def test_the_signed_fix_trust_document_is_adopted_only_when_newer(tmp_path: Path) -> None:
    audit = keys.generate()
    relay, rotated = Signer(), Signer("rotated")
    state = enrolled(tmp_path, [], audit)
    e = state.load_enrollment()
    answer = trust.sign(audit, 3, [relay.public])
    assert trust.verify_document(answer, trust.audit_key(e)) == (3, [relay.public])
    # standard padded base64 is read too (the relay serves unpadded base64url)
    standard = {k: base64.b64encode(protocol.b64d(v)).decode() for k, v in answer.items()}
    assert trust.verify_document(standard, trust.audit_key(e)) == (3, [relay.public])
    other_audit = keys.generate()
    forged = trust.sign(other_audit, 9, [rotated.public])
    with pytest.raises(trust.FixTrustError, match="audit key"):
        trust.verify_document(forged, trust.audit_key(e))
    tampered = dict(answer)
    data = protocol.b64d(answer["payload_b64"]).replace(b'"serial":3', b'"serial":4')
    tampered["payload_b64"] = protocol.b64e(data)
    with pytest.raises(trust.FixTrustError):
        trust.verify_document(tampered, trust.audit_key(e))
    with pytest.raises(trust.FixTrustError):
        trust.verify_document({"payload_b64": "!!", "signature_b64": ""}, trust.audit_key(e))
    updated = state.update_fix_keys(e, [relay.public], 3)
    assert state.load_enrollment().fix_keys == [relay.public]
    assert state.load_enrollment().fix_keys_serial == 3 == updated.fix_keys_serial


def fix_trust_sync(state: StateDir, answer: Any) -> Enrollment:
    import asyncio

    async def fake_fetch(url: str, t: Any) -> Any:
        return answer

    original = trust.fetch
    trust.fetch = fake_fetch  # type: ignore[assignment]  # the HTTP part: see integration
    try:
        return asyncio.run(trust.sync(state, state.load_enrollment()))
    finally:
        trust.fetch = original  # type: ignore[assignment]


def test_sync_adopts_newer_and_ignores_replays_and_forgeries(tmp_path: Path) -> None:
    audit = keys.generate()
    relay, rotated = Signer(), Signer("rotated")
    state = enrolled(tmp_path, [], audit)
    assert fix_trust_sync(state, trust.sign(audit, 2, [relay.public])).fix_keys == [relay.public]
    assert fix_trust_sync(state, trust.sign(audit, 1, [rotated.public])).fix_keys == [
        relay.public]  # an older document, replayed
    assert fix_trust_sync(state, trust.sign(keys.generate(), 5, [rotated.public])).fix_keys == [
        relay.public]  # not the pinned audit key
    assert fix_trust_sync(state, trust.sign(audit, 3, [rotated.public])).fix_keys == [
        rotated.public]
    assert state.load_enrollment().fix_keys_serial == 3


def test_revocations_merge_signed_newer_lists_and_never_lift_one(tmp_path: Path) -> None:
    relay, stranger = Signer(), Signer("stranger")
    state = enrolled(tmp_path, [relay.public])
    a, b = fix(), fix(version=2)
    keys_ = (relay.public,)
    assert revocations.receive(state.root, relay.revocations(1, a), keys_).outcome == "adopted"
    assert refused(state, a, [relay.sign(a)]) == "revoked"
    check(state, b, [relay.sign(b)])
    # A stranger's list, and a replay of the same one, change nothing.
    assert revocations.receive(state.root, stranger.revocations(5, b), keys_).outcome == (
        "refused")
    assert revocations.receive(state.root, relay.revocations(1, a), keys_).outcome == "stale"
    check(state, b, [relay.sign(b)])
    # A newer list without a's entry does not lift it: entries are unioned.
    assert revocations.receive(state.root, relay.revocations(2, b), keys_).outcome == "adopted"
    kept = json.loads(revocations.path_in(state.root).read_text())
    assert kept["serial"] == 2 and len(kept["entries"]) == 2
    assert refused(state, a, [relay.sign(a)]) == "revoked"
    assert refused(state, b, [relay.sign(b)]) == "revoked"
    kept = json.loads(revocations.path_in(state.root).read_text())
    assert kept["serial"] == 2 and len(kept["entries"]) == 2
    assert oct(revocations.path_in(state.root).stat().st_mode & 0o777) == "0o600"
    # Garbage is refused, not a crash.
    assert revocations.receive(state.root, {"list_b64": "!!", "signature": "x"}, keys_
                               ).outcome == "refused"
    # An unreadable kept list fails closed.
    revocations.path_in(state.root).write_text("{not json")
    c = fix(version=3)
    assert refused(state, c, [relay.sign(c)]) == "revoked"


def test_the_cache_keeps_what_arrived_and_is_checked_again_at_use(tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    m, m2 = fix(), fix(version=2)
    assert cache.store(state.root, m, [relay.sign(m)])
    assert cache.store(state.root, m2, [relay.sign(m2)], "pushed")
    found = cache.entries(state.root)
    assert [(c.fix_id, c.version) for c in found] == [("test-fix", 2), ("test-fix", 1)]
    assert cache.find(state.root, "test-fix").version == 2  # type: ignore[union-attr]
    assert oct(os.stat(cache.folder(state.root)).st_mode & 0o777) == "0o700"
    entry = cache.find(state.root, "test-fix", 1)
    assert entry is not None
    back = manifest_from_dict(entry.manifest)
    assert digest(back) == digest(m)
    check(state, back, entry.signatures)
    # Edited on disk: the signature no longer verifies.
    body = json.loads(entry.path.read_text())
    body["manifest"]["script"] = "rm -rf /tmp/nothing\n"
    entry.path.write_text(json.dumps(body))
    edited = cache.find(state.root, "test-fix", 1)
    assert edited is not None
    assert refused(state, manifest_from_dict(edited.manifest), edited.signatures) == (
        "bad_signature")
    # Junk in the folder is ignored, oversize entries are not kept.
    (cache.folder(state.root) / "junk@1.json").write_text("[]")
    (cache.folder(state.root) / "notes.txt").write_text("x")
    assert len(cache.entries(state.root)) == 2
    big = fix(version=9, script="#" * 200_000 + "\n", verify="#" * 200_000 + "\n")
    assert cache.MAX_ENTRY_BYTES > 400_000 and cache.store(state.root, big, [])
    cache_max = cache.MAX_ENTRIES
    cache.MAX_ENTRIES = 2
    try:
        cache.store(state.root, fix(version=10), [])
        assert len(cache.entries(state.root)) == 2
    finally:
        cache.MAX_ENTRIES = cache_max


def test_request_parsing_is_bounded_and_strict() -> None:
    m = fix()
    good = {"manifest": m.as_dict(), "signatures": ["sig"], "params": {}, "run_id": "fr_1"}
    req = checks.parse_request(json.dumps(good))
    assert req.manifest == m and req.max_output == 16 * 1024 * 1024
    for bad in ("[]", "{", json.dumps({**good, "extra": 1}),
                json.dumps({**good, "manifest": {"id": "x"}}),
                json.dumps({**good, "signatures": "sig"}),
                json.dumps({**good, "max_output": -1}), json.dumps({**good, "max_output": True}),
                json.dumps({**good, "run_id": "bad id"}),
                json.dumps({**good, "digest": "md5:1"}),
                json.dumps({**good, "requested_by": "x" * 200})):
        with pytest.raises(checks.Refusal) as err:
            checks.parse_request(bad)
        assert err.value.reason == "bad_request"
    with pytest.raises(checks.Refusal):
        checks.parse_request(b"\xff\xfe")
    with pytest.raises(checks.Refusal):
        checks.parse_request(json.dumps({**good, "reason": "x" * (1024 * 1024)}))


def test_the_question_names_who_what_risk_parameters_and_why() -> None:
    words = checks.consent_question(fix(), {"BACKLINE_PARAM_NAME": "bob\x1b[2J"}, "alice",
                                    "printer jam", "T-1")
    assert words == ('Technician alice asks to run the approved fix "Say hello" '
                     "(test-fix@1, risk low) with NAME=bob[2J (printer jam) [ticket T-1]. "
                     "Allow?")
    assert checks.needs_consent(fix(), "allow", FixPolicy(decision="allow")) is False
    assert checks.needs_consent(fix(consent=True), "allow", FixPolicy(decision="allow"))
    assert checks.needs_consent(fix(), "ask", FixPolicy(decision="allow"))
    assert checks.needs_consent(fix(), "allow", FixPolicy(decision="ask"))


def test_the_control_message_is_bounded_and_handled_without_ending_the_socket(tmp_path: Path
                                                                               ) -> None:
    import asyncio

    from backline.agent import control
    from backline.agent.activity import ActivityLog

    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    m = fix()
    body = relay.revocations(1, m)
    frame = protocol.encode("fix_revocations", **body)
    msg = protocol.parse_relay_message(frame)

    class Runner:
        enrollment = state.load_enrollment()
        log = ActivityLog(tmp_path / "activity.jsonl")

    def events() -> list[str]:
        return [e["event"] for e in Runner.log.read()]

    async def push(message: dict[str, Any]) -> None:
        control._fix_revocations(state, Runner.enrollment, message,
                                 Runner())  # type: ignore[arg-type]
        await asyncio.gather(*revocations._tasks)

    asyncio.run(push(msg))
    assert events() == ["fix.revocations.adopted"]
    assert refused(state, m, [relay.sign(m)]) == "revoked"
    asyncio.run(push(msg))  # pushed again at the next connection: nothing to do
    assert events() == ["fix.revocations.adopted"]
    asyncio.run(push({"list_b64": "x", "signature": 5}))
    assert events()[-1] == "fix.revocations.refused"
    for bad in ({**body, "extra": 1}, {"list_b64": "x" * (57 * 1024), "signature": "s"},
                {"list_b64": "x"}):
        with pytest.raises(protocol.ProtocolError):
            protocol.decode(json.dumps({"v": 1, "type": "fix_revocations", **bad}))


def test_the_running_agent_checks_fix_documents_in_a_child(tmp_path: Path) -> None:
    """trust.sync and a revocation push, as ``backline-agent run`` does them, leave no
    SSH-signature machinery (asyncssh, common/fixes) in the agent's own process."""
    import subprocess
    import sys

    audit = keys.generate()
    relay = Signer()
    state = enrolled(tmp_path, [], audit)
    answer = trust.sign(audit, 1, [relay.public])
    push = relay.revocations(1, fix())
    probe = f"""
import asyncio, json, sys
from pathlib import Path
from backline.agent.fixes import revocations, trust
from backline.agent.state import StateDir
state = StateDir(Path({str(state.root)!r}))
async def fake_fetch(url, t):
    return json.loads({json.dumps(answer)!r})
trust.fetch = fake_fetch
async def main():
    e = await trust.sync(state, state.load_enrollment())
    revocations.schedule(state.root, json.loads({json.dumps(push)!r}), tuple(e.fix_keys))
    await asyncio.gather(*revocations._tasks)
    return e
e = asyncio.run(main())
print(json.dumps({{"keys": e.fix_keys, "kept": revocations.kept_serial(state.root),
                  "loaded": sorted(m for m in sys.modules
                                   if m == "asyncssh" or m.startswith("backline.common.fixes"))}}))
"""
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result == {"keys": [relay.public], "kept": 1, "loaded": []}


def test_a_stale_list_pushed_at_each_reconnection_loads_no_signature_machinery(
        tmp_path: Path) -> None:
    import subprocess
    import sys

    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    body = relay.revocations(1, fix())
    revocations.receive(state.root, body, (relay.public,))
    probe = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from backline.agent.fixes import revocations\n"
        f"r = revocations.receive(Path({str(state.root)!r}),\n"
        f"                        json.loads({json.dumps(body)!r}), ())\n"
        "print(r.outcome, 'asyncssh' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["stale", "False"], done.stderr
