"""The review of issue 12 (agent half), each finding as a test that failed before:
no author pattern is compiled before the signatures are checked (relay request and
self-service cache); the refusal reasons say whose fault it is (``policy`` for an
unusable ``[fix]`` section, ``agent_error`` for a private folder that cannot be made);
a signed list at an equal (reused) serial still adds its entries; two lists merged at
once lose nothing (the merge lock); a list announced as too large is fetched."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest

from backline.agent import fix_cli
from backline.agent.fixes import cache, checks, executor, revocations, trust
from backline.agent.policy import FixPolicy
from backline.common.fixes.manifest import digest
from tests.unit.test_fix_agent_trust import Signer, enrolled, fix, policy

#: Catastrophic backtracking on a non-matching default: seconds per extra "a".
EVIL = "^(a+)+b$"


def hostile_manifest() -> dict[str, Any]:
    body = fix().as_dict()
    body["parameters"] = {"NAME": {"type": "string", "description": "who", "required": False,
                                   "pattern": EVIL, "default": "a" * 40 + "!",
                                   "max_length": 64}}
    return body


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every pattern text the ``re`` module is asked to compile from now on."""
    seen: list[str] = []
    real = re._compile  # type: ignore[attr-defined]

    def spy(pattern: Any, flags: Any) -> Any:
        if isinstance(pattern, str):
            seen.append(pattern)
        return real(pattern, flags)

    monkeypatch.setattr(re, "_compile", spy)
    try:  # where common/fixes matches patterns with google-re2, its compiles too
        import re2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return seen
    real2 = re2.compile

    def spy2(pattern: Any, *args: Any, **kw: Any) -> Any:
        if isinstance(pattern, str):
            seen.append(pattern)
        return real2(pattern, *args, **kw)

    monkeypatch.setattr(re2, "compile", spy2)
    return seen


def test_no_author_pattern_is_compiled_before_the_signatures(tmp_path: Path,
                                                             compiled: list[str]) -> None:
    relay, stranger = Signer(), Signer("stranger")
    state = enrolled(tmp_path, [relay.public])
    body = hostile_manifest()
    for sigs, reason in (([], "unsigned"), (["garbage"], "bad_signature")):
        request = checks.parse_request(json.dumps({"manifest": body, "signatures": sigs}))
        assert request.manifest.parameter("NAME").pattern == EVIL  # kept, for the digest
        with pytest.raises(checks.Refusal) as err:
            checks.check_fix(request.manifest, request.signatures, {}, state_root=state.root,
                             fix_policy=policy().fix, trust=trust.load_trust(state.root,
                                                                             policy()),
                             manifest_data=request.manifest_data)
        assert err.value.reason == reason
    # A stranger's signature over exactly these bytes: the digest is the real one.
    structural = checks.structural_manifest(body)
    signed = stranger.sign(structural)
    request = checks.parse_request(json.dumps({"manifest": body, "signatures": [signed]}))
    with pytest.raises(checks.Refusal) as err:
        checks.check_fix(request.manifest, request.signatures, {}, state_root=state.root,
                         fix_policy=policy().fix, trust=trust.load_trust(state.root, policy()),
                         manifest_data=request.manifest_data)
    assert err.value.reason == "unpinned_key"
    # Self-service: the same hostile entry in the cache is refused as well, unread.
    cache.store(state.root, structural, [signed], "pushed")
    kept = cache.find(state.root, "test-fix", 1)
    assert kept is not None
    with pytest.raises(checks.Refusal) as err:
        fix_cli._verify_cached(state, kept, policy(), {}, check_params=False)
    assert err.value.reason == "unpinned_key"
    assert EVIL not in compiled


def test_a_signed_pattern_is_read_whole_and_applied_after_the_signatures(
        tmp_path: Path, compiled: list[str]) -> None:
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    body = fix().as_dict()
    body["parameters"]["NAME"]["pattern"] = "[a-z]+"
    m = checks.structural_manifest(body)
    request = checks.parse_request(json.dumps({"manifest": body,
                                               "signatures": [relay.sign(m)]}))
    assert compiled.count("[a-z]+") == 0
    ok = checks.check_fix(request.manifest, request.signatures, {"NAME": "bob"},
                          state_root=state.root, fix_policy=policy().fix,
                          trust=trust.load_trust(state.root, policy()),
                          manifest_data=request.manifest_data)
    assert ok.env == {"BACKLINE_PARAM_NAME": "bob"} and ok.digest == digest(m)
    with pytest.raises(checks.Refusal) as err:
        checks.check_fix(request.manifest, request.signatures, {"NAME": "Bob!"},
                         state_root=state.root, fix_policy=policy().fix,
                         trust=trust.load_trust(state.root, policy()),
                         manifest_data=request.manifest_data)
    assert err.value.reason == "params"
    # A pattern that is not one line of text is a bad request, before any signature.
    bad = fix().as_dict()
    bad["parameters"]["NAME"]["pattern"] = "a\nb"
    with pytest.raises(checks.Refusal) as err:
        checks.parse_request(json.dumps({"manifest": bad, "signatures": []}))
    assert err.value.reason == "bad_request"


def test_an_unusable_fix_policy_is_policy_and_an_unusable_pinned_key_unpinned_key(
        tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    pol = dataclasses.replace(policy(), fix=FixPolicy("allow", (), 2, ()))
    with pytest.raises(checks.Refusal) as err:
        trust.load_trust(state.root, pol)
    assert err.value.reason == "policy"
    broken = enrolled(tmp_path / "b", ["ssh-ed25519 AAAAnot-a-key relay"])
    with pytest.raises(checks.Refusal) as err:
        trust.load_trust(broken.root, policy())
    assert err.value.reason == "unpinned_key"


def test_a_private_folder_that_cannot_be_made_is_the_agents_fault_not_the_platforms(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(*args: Any, **kw: Any) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tempfile, "mkdtemp", no_room)
    with pytest.raises(executor.FixRunError) as err:
        asyncio.run(executor.run_fix(fix(), {}, 1024, lambda e: None))
    assert err.value.reason == "agent_error"


def test_a_signed_list_at_an_equal_serial_still_adds_its_entries(tmp_path: Path) -> None:
    """The relay reused a serial (a restored database): its next revocation is not lost."""
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    a, b = fix(), fix(version=2)
    keys_ = (relay.public,)
    assert revocations.receive(state.root, relay.revocations(7, a), keys_).outcome == "adopted"
    got = revocations.receive(state.root, relay.revocations(7, b), keys_)
    assert got.outcome == "adopted"
    got = revocations.receive(state.root, relay.revocations(3, fix(version=3)), keys_)
    assert got.outcome == "adopted"
    kept = revocations.load(state.root)
    assert kept.serial == 7 and {e.version for e in kept.entries} == {1, 2, 3}
    # ... and one pushed again at the next connection is dropped unread.
    assert revocations.receive(state.root, relay.revocations(7, b), ()).outcome == "stale"


def test_lists_merged_at_once_lose_nothing(tmp_path: Path) -> None:
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    keys_ = (relay.public,)
    revocations.receive(state.root, relay.revocations(1, fix()), keys_)
    pushes = [relay.revocations(10 + v, fix(version=v)) for v in range(2, 8)]

    async def all_at_once() -> None:
        await asyncio.gather(*(revocations.receive_in_child(state.root, p, keys_)
                               for p in pushes))

    asyncio.run(all_at_once())
    kept = revocations.load(state.root)
    assert {e.version for e in kept.entries} == set(range(1, 8)) and kept.serial == 17


def test_a_list_announced_as_too_large_is_fetched_and_merged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    relay, stranger = Signer(), Signer("stranger")
    state = enrolled(tmp_path, [relay.public])
    keys_ = (relay.public,)
    served: list[dict[str, Any] | None] = [{"type": "fix_revocations",
                                            **relay.revocations(5, fix(), fix(version=2))}]

    async def fake_fetch(root: Path) -> dict[str, Any] | None:
        assert root == state.root
        return served[0]

    monkeypatch.setattr(revocations, "fetch", fake_fetch)
    announcement = {"list_b64": "", "signature": ""}
    assert revocations.is_announcement(announcement)
    got = revocations.receive(state.root, announcement, keys_)
    assert got.outcome == "adopted" and got.serial == 5
    assert len(revocations.load(state.root).entries) == 2
    served[0] = {"type": "fix_revocations", **stranger.revocations(9, fix(version=3))}
    assert revocations.receive(state.root, announcement, keys_).outcome == "refused"
    served[0] = None  # 404: nothing revoked
    assert revocations.receive(state.root, announcement, keys_).outcome == "stale"
    assert len(revocations.load(state.root).entries) == 2


def test_an_announcement_of_a_list_already_fetched_is_not_fetched_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 12b SHOULD-FIX 3: agents reconnecting (every welcome repeats the
    announcement) do not each download megabytes again: the announcement names its
    serial and SHA-256, and a list fetched and merged under that name is skipped."""
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    keys_ = (relay.public,)
    calls: list[int] = []

    async def fake_fetch(root: Path) -> dict[str, Any] | None:
        calls.append(1)
        return {"type": "fix_revocations", **relay.revocations(5, fix(), fix(version=2))}

    monkeypatch.setattr(revocations, "fetch", fake_fetch)
    named = {"list_b64": "", "signature": "", "serial": 5, "sha256": "ab" * 32}
    assert revocations.receive(state.root, named, keys_).outcome == "adopted"
    assert len(calls) == 1
    again = revocations.receive(state.root, dict(named), keys_)
    assert again.outcome == "stale" and len(calls) == 1  # nothing fetched
    assert revocations.schedule(state.root, dict(named), keys_) is None  # nor scheduled
    # another body under the same serial, or an announcement that names nothing (an
    # older relay): fetched
    assert revocations.receive(state.root, {**named, "sha256": "cd" * 32}, keys_
                               ).outcome == "stale"
    assert len(calls) == 2
    revocations.receive(state.root, {"list_b64": "", "signature": ""}, keys_)
    assert len(calls) == 3
    assert len(revocations.load(state.root).entries) == 2


def test_a_burst_of_pushes_is_coalesced_and_loses_nothing(tmp_path: Path) -> None:
    """The relay revokes many fixes at once: one push each. The running agent merges
    one list at a time and, meanwhile, keeps only the newest: a few children, all
    entries (the relay's list is its whole history)."""
    relay = Signer()
    state = enrolled(tmp_path, [relay.public])
    keys_ = (relay.public,)
    versions = list(range(1, 21))
    pushes = [relay.revocations(100 + n, *(fix(version=v) for v in versions[:n]))
              for n in range(1, len(versions) + 1)]
    children: list[int] = []
    real = revocations.receive_in_child

    async def counted(*args: Any, **kw: Any) -> revocations.Received:
        children.append(1)
        return await real(*args, **kw)

    async def burst() -> None:
        revocations.receive_in_child = counted  # type: ignore[assignment]
        try:
            for push in pushes:
                revocations.schedule(state.root, push, keys_)
            await asyncio.gather(*revocations._tasks)
        finally:
            revocations.receive_in_child = real  # type: ignore[assignment]

    asyncio.run(burst())
    kept = revocations.load(state.root)
    assert {e.version for e in kept.entries} == set(versions) and kept.serial == 120
    assert len(children) <= 3
