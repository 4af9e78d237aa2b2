"""A session's outcome (issue 14), on real processes: the technician sets it on a closed
session, it shows in ``GET /api/v1/sessions/{id}`` and the trail; changing it is allowed
and audited with the previous value; another technician, an auditor, an open session,
bad values, a long note and control characters are refused, each with a clear error."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import (
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    browser_socket,
)
from tests.integration.test_sessions import make_user, open_session, start_agent


@dataclass
class World:
    relay: RelayProcess
    admin: Api
    alice: Api
    bob: Api
    carol: Api  # an auditor
    agent: AgentProcess


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory,
          initialised_relay: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("outcome")
    relay = RelayProcess(root, template=initialised_relay).start()
    admin = admin_api(relay)
    alice = make_user(admin, relay, "alice", "technician", ("default",))
    bob = make_user(admin, relay, "bob", "technician", ("default",))
    carol = make_user(admin, relay, "carol", "auditor")
    agent = start_agent(root, relay, admin, "pc-outcome")
    try:
        yield World(relay, admin, alice, bob, carol, agent)
    finally:
        agent.stop()
        for api in (alice, bob, carol, admin):
            api.close()
        relay.stop()


def test_set_change_and_read_an_outcome(world: World) -> None:
    alice = world.alice
    s = open_session(alice, world.agent.agent_id, reason="printer", ticket="T-77")
    assert s["outcome"] is None and s["outcome_note"] == ""
    early = alice.post(f"/api/v1/sessions/{s['id']}/outcome", json={"outcome": "resolved"})
    assert early.status_code == 409 and early.json()["error"] == "not_closed", early.text
    assert alice.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200

    r = alice.post(f"/api/v1/sessions/{s['id']}/outcome",
                   json={"outcome": "resolved", "note": "driver reinstalled\nprints again"})
    assert r.status_code == 200, r.text
    got = alice.get(f"/api/v1/sessions/{s['id']}").json()
    assert got["outcome"] == "resolved" and got["outcome_by"] == "alice"
    assert got["outcome_note"] == "driver reinstalled\nprints again"
    assert got["outcome_at"] >= got["closed_at"]

    # Changed later (the customer called back): allowed, and the trail keeps both.
    r = world.admin.post(f"/api/v1/sessions/{s['id']}/outcome",
                         json={"outcome": "escalated", "note": "came back"})
    assert r.status_code == 200, r.text
    assert r.json()["outcome"] == "escalated" and r.json()["outcome_by"] == "admin"
    events = [e for e in audit_actions(world.relay) if e["action"] == "session.outcome"
              and e["target"] == f"session:{s['id']}"]
    assert [e["details"]["outcome"] for e in events] == ["resolved", "escalated"]
    assert events[0]["details"]["ticket"] == "T-77" and "previous" not in events[0]["details"]
    assert events[1]["details"]["previous"] == "resolved"
    assert events[1]["actor"] == "user:admin"
    refused = [e for e in audit_actions(world.relay)
               if e["action"] == "session.outcome.refused"]
    assert refused and refused[-1]["details"]["reason"] == "not_closed"


def test_the_live_socket_pushes_the_outcome_after_the_end(world: World) -> None:
    """The console replaces its copy of a session with each pushed row: the outcome is
    pushed too, after the "end", so the end cannot undo it on the page (it did, under
    load, when only the end was pushed)."""
    alice = world.alice
    s = open_session(alice, world.agent.agent_id, reason="live", ticket="T-78")
    with browser_socket(world.relay, alice, "/api/v1/live") as live:
        assert json.loads(live.recv(5))["type"] == "hello"
        assert alice.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
        r = alice.post(f"/api/v1/sessions/{s['id']}/outcome", json={"outcome": "resolved"})
        assert r.status_code == 200, r.text
        rows = []
        for _ in range(200):  # bounded: the presence and audit events come too
            event = json.loads(live.recv(20))
            if event["type"] == "session" and event["session"]["id"] == s["id"]:
                rows.append((event["event"], event["session"]))
                if event["event"] == "outcome":
                    break
    assert [kind for kind, _ in rows][-2:] == ["end", "outcome"], rows
    assert rows[-1][1]["outcome"] == "resolved" and rows[-1][1]["state"] == "closed"


def test_hostile_outcomes_are_refused(world: World) -> None:
    s = open_session(world.alice, world.agent.agent_id)
    assert world.alice.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
    path = f"/api/v1/sessions/{s['id']}/outcome"
    # Another technician of the same group may see it, not say how it ended.
    other = world.bob.post(path, json={"outcome": "resolved"})
    assert other.status_code == 403 and "technician who opened" in other.json()["detail"]
    # An auditor holds no write permission at all.
    assert world.carol.post(path, json={"outcome": "resolved"}).status_code == 403
    for body in ({"outcome": "fixed"}, {"outcome": ""}, {}, {"outcome": 1},
                 {"outcome": "resolved", "note": "x" * 1025},
                 {"outcome": "resolved", "note": "bell\x07"},
                 {"outcome": "resolved", "extra": True}):
        r = world.alice.post(path, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] in ("bad_field", "missing_field", "unknown_field"), r.text
    assert world.alice.post("/api/v1/sessions/ss_nope/outcome",
                            json={"outcome": "resolved"}).status_code == 404
    # None of that changed it.
    assert world.alice.get(f"/api/v1/sessions/{s['id']}").json()["outcome"] is None
    ok = world.alice.post(path, json={"outcome": "not_resolved", "note": "x" * 1024})
    assert ok.status_code == 200 and len(ok.json()["outcome_note"]) == 1024
    actions = audit_actions(world.relay)
    assert any(e["action"] == "session.access.refused" and e["actor"] == "user:bob"
               and e["target"] == f"session:{s['id']}" for e in actions)
