"""The relay's revocation list (relay/fixes/service.py, store.py, push.py), in-process:
its serial only grows and is never handed out twice, even after the database is
restored from an older copy; a list too long for one control frame is announced and
served whole on ``GET /agent/fix-revocations``, never silently dropped; the fix key
is never made behind the operator's back. (Over real processes, with an agent:
tests/integration/test_fix_relay*.py.)"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa

from backline.common import protocol
from backline.common.fixes import revocation
from backline.common.fixes import signing as fix_signing
from backline.common.fixes.manifest import parse_manifest
from backline.relay import audit_events
from backline.relay.fixes import signing, store
from backline.relay.fixes.service import MAX_PUSHED_REASON, FixRefused, FixService, pushed_reason
from backline.relay.schema import metadata

TOML = '''id = "{id}"
version = 1
title = "t"
platforms = ["linux"]
interpreter = "sh"
script = "true"
timeout_s = 5
risk = "low"
consent = false
'''


class FakeRelay:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.db = root / "db.sqlite"
        self.engine = sa.create_engine(f"sqlite:///{self.db}")
        metadata.create_all(self.engine)
        private, self.public = fix_signing.generate_key("test")
        (root / "fix_key").write_bytes(private)
        self.datadir = SimpleNamespace(fix_key=root / "fix_key")
        self.config = SimpleNamespace(fix_offline_keys=[])
        self.events: list[tuple[str, dict[str, Any]]] = []

    def record(self, actor: str, action: str, target: str = "", **details: Any) -> None:
        self.events.append((action, audit_events.checked(action, details)))


@pytest.fixture
def relay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeRelay:
    monkeypatch.setenv(audit_events.STRICT_ENV, "1")
    return FakeRelay(tmp_path)


def revoke(relay: FakeRelay, service: FixService, fix_id: str, reason: str = "bad") -> int:
    store.submit(relay.engine, parse_manifest(TOML.format(id=fix_id)), "alice")
    return service.revoke(fix_id, 1, reason, "bob", "user:bob")


def test_serials_grow_and_survive_a_restore_of_an_older_database(relay: FakeRelay) -> None:
    service = FixService(relay)  # type: ignore[arg-type]
    first = revoke(relay, service, "fix-a")
    assert first >= int(time.time() * 1000) - 60_000  # not a row id
    relay.engine.dispose()
    shutil.copy(relay.db, relay.root / "backup.sqlite")
    second = revoke(relay, service, "fix-b")
    assert second > first
    relay.engine.dispose()
    shutil.copy(relay.root / "backup.sqlite", relay.db)  # the restore: fix-b's row is gone
    third = revoke(relay, service, "fix-c")
    assert third > second, "a serial an agent already holds was handed out again"
    assert store.revocation_serial(relay.engine) == third


def test_a_burst_of_revocations_in_one_millisecond_still_grows() -> None:
    now = 1_800_000_000.0
    assert store.next_serial(0, now) == 1_800_000_000_000
    assert store.next_serial(1_800_000_000_000, now) == 1_800_000_000_001
    assert store.next_serial(5, now) > 5
    assert store.next_serial(10**15, now) == 10**15 + 1  # a clock set back: still grows


def test_a_short_list_rides_in_the_control_message(relay: FakeRelay) -> None:
    service = FixService(relay)  # type: ignore[arg-type]
    revoke(relay, service, "fix-a")
    msg = protocol.decode(service.revocation_message() or "")
    assert not revocation.is_announcement(msg)
    listed, sig = revocation.decode_message(msg)
    assert revocation.verify(listed, sig, [relay.public]) is not None
    assert relay.events[-1][1]["delivery"] == "control"


def test_a_list_too_long_for_a_frame_is_announced_and_served_whole(relay: FakeRelay) -> None:
    """The review measured 150 entries with 200-character reasons: no longer one frame.
    Before, agents were sent nothing, ever again, and fix.revoked said success."""
    service = FixService(relay)  # type: ignore[arg-type]
    for i in range(150):
        revoke(relay, service, f"fix-{i:03d}", reason="r" * 300)
    message = service.revocation_message()
    assert message is not None
    msg = protocol.decode(message)
    assert revocation.is_announcement(msg)
    with pytest.raises(revocation.RevocationError):  # it does not fit the frame bound
        revocation.decode_message(service.signed_revocations()[1])  # type: ignore[index]
    body = service.signed_revocations()[1]  # type: ignore[index]
    listed, sig = revocation.decode_message(body, max_bytes=revocation.MAX_FETCHED_LIST_BYTES)
    assert len(listed.entries) == 150 and listed.serial == store.revocation_serial(relay.engine)
    assert revocation.verify(listed, sig, [relay.public]) is not None
    assert all(len(e.reason) == MAX_PUSHED_REASON for e in listed.entries)
    assert relay.events[-1][0] == "fix.revoked"
    assert relay.events[-1][1]["delivery"] == "fetch"


def test_the_fetched_list_is_encoded_once_per_serial_and_announced_with_its_hash(
        relay: FakeRelay) -> None:
    """Review 12b SHOULD-FIX 3: the answer of GET /agent/fix-revocations (megabytes at
    the fullest) is encoded once per serial, not per request; the announcement names its
    serial and SHA-256 so an agent that has it fetches nothing; ETag/If-None-Match 304."""
    import hashlib
    import json

    from starlette.applications import Starlette
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from backline.relay.fixes.push import revocations_endpoint

    service = FixService(relay)  # type: ignore[arg-type]
    for i in range(150):
        revoke(relay, service, f"fix-{i:03d}", reason="r" * 300)
    served = service.served_revocations()
    assert served is not None
    data, sha = served
    assert service.served_revocations()[0] is data  # type: ignore[index]  # cached bytes
    assert sha == hashlib.sha256(data).hexdigest()
    assert json.loads(data) == service.signed_revocations()[1]  # type: ignore[index]
    msg = protocol.decode(service.revocation_message() or "")
    assert revocation.is_announcement(msg)
    assert msg["serial"] == store.revocation_serial(relay.engine) and msg["sha256"] == sha

    app = Starlette(routes=[Route(revocation.FETCH_PATH, revocations_endpoint)])
    app.state.relay = SimpleNamespace(fixes=service)
    with TestClient(app) as client:
        first = client.get(revocation.FETCH_PATH)
        assert first.status_code == 200 and first.content == data
        assert first.headers["etag"] == f'"{sha}"'
        again = client.get(revocation.FETCH_PATH, headers={"if-none-match": f'"{sha}"'})
        assert again.status_code == 304 and again.content == b""
        other = client.get(revocation.FETCH_PATH, headers={"if-none-match": '"x"'})
        assert other.status_code == 200 and other.content == data
    # a new revocation: a new serial, new bytes, a new hash
    revoke(relay, service, "fix-new", reason="r" * 300)
    assert service.served_revocations()[1] != sha  # type: ignore[index]


def test_the_fullest_list_agents_accept_fits_the_fetch_bound() -> None:
    entries = [revocation.entry(f"f{i:046d}", 999_999, "sha256:" + "f" * 64,
                                pushed_reason("é\U0001f600" * 500), 2.0**33) for i in range(
                                    revocation.MAX_ENTRIES)]
    size = len(revocation.canonical_bytes(revocation.make(2**53 - 1, entries)))
    assert size <= revocation.MAX_FETCHED_LIST_BYTES, size
    assert pushed_reason("abc") == "abc" and len(pushed_reason("x" * 500)) == MAX_PUSHED_REASON


def test_a_list_at_the_entry_limit_refuses_more_loudly(relay: FakeRelay,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation, "MAX_ENTRIES", 2)
    service = FixService(relay)  # type: ignore[arg-type]
    revoke(relay, service, "fix-a")
    revoke(relay, service, "fix-b")
    with pytest.raises(FixRefused) as exc:
        revoke(relay, service, "fix-c")
    assert exc.value.code == "too_many"
    assert relay.events[-1][0] == "fix.revoke.refused"
    assert relay.events[-1][1]["reason"] == "too_many"


def test_a_missing_fix_key_is_an_error_not_a_new_key(relay: FakeRelay) -> None:
    (relay.root / "fix_key").unlink()
    service = FixService(relay)  # type: ignore[arg-type]
    with pytest.raises(signing.FixKeyMissing, match="missing"):
        _ = service.key
    assert not (relay.root / "fix_key").exists()


def test_the_fix_key_is_loaded_with_common_checks(relay: FakeRelay) -> None:
    key = FixService(relay).key  # type: ignore[arg-type]
    assert key.public_line.endswith(" backline-relay-fix")
    assert key.fingerprint == fix_signing.fingerprint(relay.public)
    (relay.root / "fix_key").write_bytes(b"not a key")
    with pytest.raises(fix_signing.SigningError):
        signing.load(relay.root / "fix_key")
