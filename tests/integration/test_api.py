"""The REST API and live socket against a real relay process. The tests that exercise
the store run on SQLite and on PostgreSQL (``on_each_database``, tests/conftest.py)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import httpx
import pyotp
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from backline.common.tlspin import client_context
from tests.databases import TestDatabase
from tests.harness import (
    ADMIN_PASSWORD,
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
)

#: The relay of the test uses the ``database`` fixture's: SQLite, then PostgreSQL.
on_each_database = pytest.mark.usefixtures("database")


def wrong_code(totp: pyotp.TOTP) -> str:
    """A code accepted at no step within a minute of now (drift window included)."""
    near = {totp.at(time.time() + d) for d in range(-90, 91, 15)}
    return next(c for c in (f"{n:06d}" for n in range(123456, 10**6)) if c not in near)


@on_each_database
def test_totp_enrolment_and_login(relay: RelayProcess, admin: Api) -> None:
    begun = admin.post("/api/v1/auth/totp/begin").json()
    assert begun["uri"].startswith("otpauth://totp/Backline:admin")
    assert begun["qr_svg"].startswith("<svg")
    totp = pyotp.TOTP(begun["secret"])
    wrong = wrong_code(totp)
    assert admin.post("/api/v1/auth/totp/confirm", json={"code": wrong}).status_code == 400
    confirmed = totp.now()
    assert admin.post("/api/v1/auth/totp/confirm", json={"code": confirmed}).status_code == 200

    fresh = Api(relay)
    r = fresh.login("admin", ADMIN_PASSWORD)
    assert r.status_code == 401 and r.json()["error"] == "totp_required"
    assert fresh.login("admin", ADMIN_PASSWORD, wrong).status_code == 401
    # The code that confirmed the enrolment is spent: replaying it fails (that very code,
    # not totp.now(), which is a new code once the 30 s step has rolled over).
    assert fresh.login("admin", ADMIN_PASSWORD, confirmed).status_code == 401
    later = totp.at(time.time() + 30)  # the next step's code (accepted: one step of drift)
    r = fresh.login("admin", ADMIN_PASSWORD, later)
    assert r.status_code == 200 and r.json()["user"]["totp_enabled"]
    assert fresh.login("admin", ADMIN_PASSWORD, later).status_code == 401  # single use
    reasons = [e["details"]["reason"] for e in audit_actions(relay)
               if e["action"] == "auth.login.failed"]
    assert reasons == ["totp_missing", "bad_totp", "bad_totp", "bad_totp"]


def test_session_cookie_flags_logout_and_me(relay: RelayProcess, admin: Api) -> None:
    api = Api(relay)
    r = api.login("admin", ADMIN_PASSWORD)
    cookie = r.headers["set-cookie"]
    for flag in ("__Host-backline=", "HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
        assert flag in cookie
    me = api.get("/api/v1/auth/me").json()
    assert me["user"]["username"] == "admin" and "users:write" in me["permissions"]
    assert api.post("/api/v1/auth/logout").status_code == 200
    assert api.get("/api/v1/auth/me").status_code == 401


@on_each_database
def test_password_change_signs_out_other_sessions(relay: RelayProcess, admin: Api) -> None:
    other = Api(relay)
    assert other.login("admin", ADMIN_PASSWORD).status_code == 200
    r = admin.post("/api/v1/auth/password",
                   json={"current": ADMIN_PASSWORD, "new": "a brand new passphrase 9"})
    assert r.status_code == 200 and r.json()["other_sessions_ended"] == 1
    assert admin.get("/api/v1/auth/me").status_code == 200  # this browser stays in
    assert other.get("/api/v1/auth/me").status_code == 401
    changed = [e for e in audit_actions(relay) if e["action"] == "auth.password.changed"]
    assert changed[-1]["details"]["other_sessions_ended"] == 1
    other.close()


@on_each_database
def test_auditor_reads_everything_and_changes_nothing(relay: RelayProcess, admin: Api) -> None:
    otp = admin.post("/api/v1/users", json={"username": "audrey", "role": "auditor"}
                     ).json()["one_time_password"]
    auditor = Api(relay)
    auditor.login("audrey", otp)
    assert auditor.post("/api/v1/auth/password",
                        json={"current": otp, "new": "auditor password"}).status_code == 200
    for path in ("/api/v1/agents", "/api/v1/audit", "/api/v1/users", "/api/v1/groups",
                 "/api/v1/enroll-tokens", "/api/v1/audit/verify"):
        assert auditor.get(path).status_code == 200, path
    writes = [("POST", "/api/v1/groups", {"name": "x"}),
              ("POST", "/api/v1/users", {"username": "x", "role": "admin"}),
              ("POST", "/api/v1/enroll-tokens", {"group": "default"}),
              ("POST", "/api/v1/api-tokens", {"name": "x", "scopes": ["audit:read"]}),
              ("PATCH", "/api/v1/users/1", {"disabled": True})]
    for method, path, body in writes:
        r = auditor.request(method, path, json=body)
        assert r.status_code == 403 and r.json()["error"] == "forbidden", (path, r.text)
    verify = auditor.get("/api/v1/audit/verify").json()
    assert verify["ok"] and verify["summary"].startswith("OK")


@on_each_database
def test_audit_paging_filters_and_export(relay: RelayProcess, admin: Api) -> None:
    for i in range(7):
        admin.post("/api/v1/groups", json={"name": f"g{i}"})
    page = admin.get("/api/v1/audit", params={"action": "group.create", "limit": 3}).json()
    assert [e["target"] for e in page["events"]] == ["group:g6", "group:g5", "group:g4"]
    nxt = admin.get("/api/v1/audit", params={"action": "group.create", "limit": 3,
                                             "before": page["next_before"]}).json()
    assert [e["target"] for e in nxt["events"]] == ["group:g3", "group:g2", "group:g1"]
    assert admin.get("/api/v1/audit", params={"limit": "lots"}).status_code == 400
    r = admin.get("/api/v1/audit/export", params={"format": "jsonl"})
    lines = [json.loads(x) for x in r.text.splitlines()]
    assert [e["seq"] for e in lines] == list(range(1, len(lines) + 1))
    assert all(len(e["hash"]) == 64 for e in lines)


def test_live_socket_pushes_agent_presence(tmp_path: Path, relay: RelayProcess,
                                           admin: Api) -> None:
    agent = AgentProcess(tmp_path, "live-one")
    assert agent.enroll(relay.token()).returncode == 0
    cookie = f"__Host-backline={admin.http.cookies.get('__Host-backline')}"
    with connect(relay.url.replace("https", "wss") + "/api/v1/live", ssl=client_context(),
                 additional_headers={"Origin": relay.url, "Cookie": cookie}) as live:
        assert json.loads(live.recv(5))["type"] == "hello"
        agent.start()
        seen = []
        try:
            while not any(e.get("changed", {}).get("online") is True for e in seen):
                seen.append(json.loads(live.recv(20)))
            agent.stop()
            while not any(e.get("changed", {}).get("online") is False for e in seen):
                seen.append(json.loads(live.recv(20)))
        finally:
            agent.stop()
    presence = [e for e in seen if e["type"] == "agent"]
    assert {e["agent_id"] for e in presence} == {agent.agent_id}
    assert any(e["type"] == "audit" and e["event"]["action"] == "agent.connect" for e in seen)


def test_live_socket_needs_a_session(relay: RelayProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        connect(relay.url.replace("https", "wss") + "/api/v1/live", ssl=client_context(),
                additional_headers={"Origin": relay.url})
    assert refused.value.response.status_code == 403
    assert [e["details"]["reason"] for e in audit_actions(relay)
            if e["action"] == "live.refused"] == ["unauthenticated"]


def test_health_ready_metrics_openapi_and_headers(relay: RelayProcess, admin: Api) -> None:
    http = httpx.Client(base_url=relay.url, verify=relay.tls())
    assert http.get("/healthz").json() == {"ok": True}
    assert http.get("/readyz").json()["ready"] is True
    metrics = http.get("/metrics").text
    for name in ("backline_agents_connected", "backline_control_messages_total",
                 "backline_errors_total", "backline_support_sessions_active"):
        assert name in metrics
    doc = http.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.") and "/api/v1/agents/{agent_id}" in doc["paths"]
    assert "agents:write" in doc["paths"]["/api/v1/agents/{agent_id}"]["patch"]["description"]
    r = http.get("/")
    csp = r.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    # WebAssembly may compile (asciinema-player); no JavaScript eval, no inline code.
    assert directives["script-src"] == "'self' 'wasm-unsafe-eval'"
    assert "unsafe" not in csp.replace("'wasm-unsafe-eval'", "")
    assert directives["frame-ancestors"] == "'none'"
    assert r.headers["x-frame-options"] == "DENY"


def test_agent_ping_over_control_socket(tmp_path: Path, relay: RelayProcess,
                                        admin: Api) -> None:
    from tests.harness import wait_for

    agent = AgentProcess(tmp_path, "pinged")
    assert agent.enroll(relay.token()).returncode == 0
    agent.start()
    try:
        wait_for(lambda: admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"], 20,
                 "agent online")
        r = admin.post(f"/api/v1/agents/{agent.agent_id}/ping")
        assert r.status_code == 200 and r.json()["rtt_ms"] >= 0
        assert admin.request("DELETE", f"/api/v1/agents/{agent.agent_id}").status_code == 200
        wait_for(lambda: not admin.get(f"/api/v1/agents/{agent.agent_id}").json()["online"],
                 10, "revoked agent disconnected")
        wait_for(lambda: "refused this agent" in (agent.cmd("status").stdout), 20,
                 "the agent to report the refusal")
    finally:
        agent.stop()


def test_files_are_private_and_config_show_hides_secrets(tmp_path: Path,
                                                         relay: RelayProcess) -> None:
    for name in ("tls.key", "ca_key", "audit_key.pem", "cookie_secret", "relay.db"):
        mode = stat.S_IMODE((relay.data_dir / name).stat().st_mode)
        assert mode == 0o600, (name, oct(mode))
    assert stat.S_IMODE(relay.data_dir.stat().st_mode) == 0o700
    agent = AgentProcess(tmp_path, "private")
    assert agent.enroll(relay.token()).returncode == 0
    assert stat.S_IMODE((agent.state_dir / "identity_key").stat().st_mode) == 0o600
    relay.env["BACKLINE_DATABASE_URL"] = "postgresql://backline:hunter2@db.example/backline"
    shown = relay.cli("config", "show").stdout
    assert "hunter2" not in shown and "postgresql://backline:***@db.example" in shown
    assert "listen_port = " + str(relay.port) in shown


def test_admins_can_be_required_to_use_totp(tmp_path: Path, database: TestDatabase) -> None:
    relay = RelayProcess(tmp_path, {"BACKLINE_REQUIRE_TOTP_FOR_ADMINS": "true",
                                    **database.env}).start()
    try:
        api = admin_api(relay)
        r = api.get("/api/v1/agents")
        assert r.status_code == 403 and r.json()["error"] == "totp_enrolment_required"
        assert api.get("/api/v1/auth/me").json()["totp_enrolment_required"] is True
        # The live socket is no way around it.
        cookie = f"__Host-backline={api.http.cookies.get('__Host-backline')}"
        with pytest.raises(InvalidStatus):
            connect(relay.url.replace("https", "wss") + "/api/v1/live", ssl=client_context(),
                    additional_headers={"Origin": relay.url, "Cookie": cookie})
        assert [e["details"]["reason"] for e in audit_actions(relay)
                if e["action"] == "live.refused"] == ["totp_enrolment_required"]
        secret = api.post("/api/v1/auth/totp/begin").json()["secret"]
        code = pyotp.TOTP(secret).now()
        assert api.post("/api/v1/auth/totp/confirm", json={"code": code}).status_code == 200
        assert api.get("/api/v1/agents").status_code == 200
        with connect(relay.url.replace("https", "wss") + "/api/v1/live", ssl=client_context(),
                     additional_headers={"Origin": relay.url, "Cookie": cookie}) as live:
            assert json.loads(live.recv(5))["type"] == "hello"
    finally:
        relay.stop()


def test_idle_sessions_expire(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, {"BACKLINE_WEB_SESSION_IDLE_MINUTES": "0.03"}).start()
    try:
        api = admin_api(relay)
        assert api.get("/api/v1/auth/me").status_code == 200
        time.sleep(2.5)
        r = api.get("/api/v1/auth/me")
        assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    finally:
        relay.stop()


def test_live_socket_shows_technicians_only_their_groups(tmp_path: Path, relay: RelayProcess,
                                                         admin: Api) -> None:
    relay.cli("group", "create", "hidden")
    relay.cli("user", "create", "tom", "--role", "technician", "--password-stdin",
              input="tom's password 12\n")
    relay.cli("group", "grant", "default", "tom")
    tom = Api(relay)
    assert tom.login("tom", "tom's password 12").status_code == 200
    mine, hidden = AgentProcess(tmp_path, "mine"), AgentProcess(tmp_path, "hidden")
    assert mine.enroll(relay.token()).returncode == 0
    assert hidden.enroll(relay.token("--group", "hidden")).returncode == 0
    cookie = f"__Host-backline={tom.http.cookies.get('__Host-backline')}"
    with connect(relay.url.replace("https", "wss") + "/api/v1/live", ssl=client_context(),
                 additional_headers={"Origin": relay.url, "Cookie": cookie}) as live:
        assert json.loads(live.recv(5))["type"] == "hello"
        hidden.start()
        time.sleep(1)
        mine.start()
        try:
            first = json.loads(live.recv(20))
        finally:
            hidden.stop()
            mine.stop()
    assert first["type"] == "agent" and first["agent_id"] == mine.agent_id


@on_each_database
def test_text_at_its_bounds_and_with_nul_is_stored(tmp_path: Path, relay: RelayProcess,
                                                   admin: Api) -> None:
    """What the API lets through fits its column in both databases: the longest value
    allowed, non-ASCII, and NUL (PostgreSQL refuses it in text: that was a 500 there),
    kept as U+FFFD. A request path with NUL is audited, and the trail verifies."""
    agent = AgentProcess(tmp_path, "labelled")
    assert agent.enroll(relay.token()).returncode == 0
    label = "\x00" + "é" * 255
    r = admin.request("PATCH", f"/api/v1/agents/{agent.agent_id}", json={"label": label})
    assert r.status_code == 200 and r.json()["label"] == "\ufffd" + "é" * 255, r.text
    r = admin.post("/api/v1/groups", json={"name": "G" * 128, "description": "\x00" * 512})
    assert r.status_code == 201, r.text
    shown = [g for g in admin.get("/api/v1/groups").json()["groups"] if g["name"] == "G" * 128]
    assert shown[0]["description"] == "\ufffd" * 512
    r = admin.post("/api/v1/api-tokens", json={"name": "ß" * 128, "scopes": ["audit:read"]})
    assert r.status_code == 201, r.text
    assert admin.get("/api/v1/nothing%00here").status_code == 404
    refused = [e for e in audit_actions(relay) if e["action"] == "request.refused"]
    assert refused[-1]["target"] == "/api/v1/nothing\ufffdhere"
    assert relay.cli("audit", "verify").returncode == 0


@on_each_database
def test_ids_beyond_the_id_columns_are_not_found(relay: RelayProcess, admin: Api) -> None:
    """User and group ids are INTEGER columns (32 bits in PostgreSQL): a larger id in a
    path names nothing, in both databases (PostgreSQL answered 500, out of range)."""
    for big in (2**31, 2**63 - 1):
        r = admin.request("PATCH", f"/api/v1/users/{big}", json={"disabled": True})
        assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
        r = admin.request("PUT", f"/api/v1/groups/{big}/grants/admin")
        assert r.status_code == 404, r.text
    r = admin.request("PATCH", f"/api/v1/users/{2**31 - 1}", json={"disabled": True})
    assert r.status_code == 404 and r.json()["error"] == "not_found", r.text
