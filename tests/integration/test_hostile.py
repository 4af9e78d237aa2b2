"""Hostile inputs against a real relay process: each is refused with a clear error,
audited, and the relay keeps serving."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from backline.common import enrollment, keys, protocol
from backline.common.tlspin import client_context
from tests.harness import AgentProcess, Api, RelayProcess, audit_actions, bystander


def refusals(relay: RelayProcess, action: str) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"] == action]


def still_serving(relay: RelayProcess) -> None:
    assert relay.healthy()


# --- enrollment ----------------------------------------------------------------------


def enroll_fails(tmp_path: Path, name: str, token: str) -> tuple[int, str]:
    r = AgentProcess(tmp_path, name).enroll(token)
    return r.returncode, r.stderr


def test_expired_token(tmp_path: Path, relay: RelayProcess) -> None:
    token = relay.token("--ttl", "1s")
    time.sleep(1.5)
    code, err = enroll_fails(tmp_path, "late", token)
    assert code == 5 and "expired" in err
    assert refusals(relay, "agent.enroll.refused")[-1]["details"]["reason"] == "token_expired"
    still_serving(relay)


def test_used_up_token(tmp_path: Path, relay: RelayProcess) -> None:
    token = relay.token("--uses", "1")
    assert AgentProcess(tmp_path, "first").enroll(token).returncode == 0
    code, err = enroll_fails(tmp_path, "second", token)
    assert code == 5 and "used" in err
    assert refusals(relay, "agent.enroll.refused")[-1]["details"]["reason"] == "token_used_up"


def test_revoked_token(tmp_path: Path, relay: RelayProcess, admin: Api) -> None:
    r = admin.post("/api/v1/enroll-tokens", json={"group": "default", "uses": 5, "ttl": "1h"})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["command"] == f"backline-agent enroll '{created['token']}'"
    assert admin.request("DELETE", f"/api/v1/enroll-tokens/{created['id']}").status_code == 200
    code, err = enroll_fails(tmp_path, "revoked", created["token"])
    assert code == 5 and "revoked" in err
    assert refusals(relay, "agent.enroll.refused")[-1]["details"]["reason"] == "token_revoked"


def test_forged_and_malformed_tokens(tmp_path: Path, relay: RelayProcess) -> None:
    real = enrollment.parse(relay.token())
    forged = enrollment.EnrollmentToken(real.relay_url, real.fingerprint,
                                        real.token_id + "." + "A" * 43).encode()
    code, err = enroll_fails(tmp_path, "forger", forged)
    assert code == 5 and "secret is wrong" in err
    assert refusals(relay, "agent.enroll.refused")[-1]["details"]["reason"] == "token_forged"
    unknown = enrollment.EnrollmentToken(real.relay_url, real.fingerprint,
                                         "et_0000000000000000." + "B" * 43).encode()
    code, err = enroll_fails(tmp_path, "stranger", unknown)
    assert code == 5 and "does not know" in err
    code, err = enroll_fails(tmp_path, "typo", "bl1-notbase64!!")
    assert code == 2 and "damaged" in err
    code, err = enroll_fails(tmp_path, "junk", "hello")
    assert code == 2 and "not a Backline enrollment token" in err
    still_serving(relay)


def test_wrong_tls_fingerprint_is_refused_before_sending_the_secret(
        tmp_path: Path, relay: RelayProcess) -> None:
    real = enrollment.parse(relay.token())
    wrong = enrollment.EnrollmentToken(real.relay_url, "ab" * 32, real.secret).encode()
    code, err = enroll_fails(tmp_path, "mitm", wrong)
    assert code == 4 and "does not match the pinned key" in err
    # The secret never reached the relay: the token is still unused and works.
    assert AgentProcess(tmp_path, "honest").enroll(relay.token()).returncode == 0
    # What the relay saw is a socket that left before its first message (audited so).
    assert [e["details"]["reason"] for e in refusals(relay, "agent.enroll.refused")] in (
        [], ["peer_gone"])


def test_unreachable_relay(tmp_path: Path, relay: RelayProcess) -> None:
    real = enrollment.parse(relay.token())
    moved = enrollment.EnrollmentToken("https://127.0.0.1:9", real.fingerprint,
                                       real.secret).encode()
    code, err = enroll_fails(tmp_path, "lost", moved)
    assert code == 3 and "cannot reach the relay" in err


# --- the control socket --------------------------------------------------------------


def ws(relay: RelayProcess, path: str, **headers: str) -> Any:
    return connect(relay.url.replace("https", "wss") + path, ssl=client_context(),
                   additional_headers=headers, open_timeout=10, close_timeout=2)


def test_replayed_auth_signature_is_refused(tmp_path: Path, relay: RelayProcess) -> None:
    agent = AgentProcess(tmp_path, "victim")
    assert agent.enroll(relay.token()).returncode == 0
    key = keys.load_private(agent.state_dir / "identity_key")
    with ws(relay, "/agent/connect") as first:
        answer = protocol.answer_challenge(first.recv(5), agent.agent_id, key,
                                           relay_fingerprint(relay), "test")
        first.send(answer)
        assert json.loads(first.recv(5))["type"] == "welcome"
    with ws(relay, "/agent/connect") as second:
        second.recv(5)  # a fresh challenge, ignored by the attacker
        second.send(answer)
        reply = json.loads(second.recv(5))
        assert reply == {"v": 1, "type": "error", "code": "auth_failed",
                         "message": "authentication failed: bad signature"}
        with pytest.raises(ConnectionClosed) as closed:
            second.recv(5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    refused = refusals(relay, "agent.auth.refused")
    assert refused and refused[-1]["target"] == f"agent:{agent.agent_id}"
    still_serving(relay)


def relay_fingerprint(relay: RelayProcess) -> str:
    from backline.relay.datadir import pem_fingerprint

    return pem_fingerprint(relay.data_dir / "tls.crt")


@pytest.mark.parametrize("garbage", [
    # 1,500 brackets: deeper than the JSON decoder goes, yet within the size of an auth
    # message (the first message's limit; past it the frame itself is refused, 1009).
    "not json", "{}", '{"v":1,"type":"hb"}', "[" * 1_500, b"\x00\xff" * 100,
    json.dumps({"v": 1, "type": "auth", "agent_id": "ag_" + "x" * 20,
                "signature": "A" * 200, "version": "1"}),
])
def test_garbage_frames_close_one_connection_not_the_relay(
        tmp_path: Path, relay: RelayProcess, admin: Api, garbage: str | bytes) -> None:
    with bystander(tmp_path, relay, admin):
        with ws(relay, "/agent/connect") as bad:
            bad.recv(5)
            bad.send(garbage)
            reply = json.loads(bad.recv(5))
            assert reply["type"] == "error" and reply["code"]
            with pytest.raises(ConnectionClosed) as closed:
                bad.recv(5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert refusals(relay, "agent.protocol_error")


def test_oversized_frame_is_refused(relay: RelayProcess) -> None:
    with ws(relay, "/agent/connect") as bad:
        bad.recv(5)
        with pytest.raises(ConnectionClosed):
            bad.send("x" * (2 * 1024 * 1024))
            bad.recv(5)
    still_serving(relay)


# --- the web side --------------------------------------------------------------------


def test_login_brute_force_is_rate_limited(relay: RelayProcess, admin: Api) -> None:
    attacker = Api(relay)
    codes = [attacker.login("admin", f"guess-{i}-xxxxxx").status_code for i in range(5)]
    assert codes == [401] * 5
    r = attacker.login("admin", relay.admin_password or "")
    assert r.status_code == 429 and "too many failed sign-ins" in r.json()["detail"]
    assert int(r.headers["retry-after"]) > 0
    failed = refusals(relay, "auth.login.failed")
    assert len(failed) == 5 and all(e["details"]["reason"] == "bad_password" for e in failed)
    assert refusals(relay, "auth.login.rate_limited")
    assert "guess-" not in relay.log(), "a password reached the log"
    still_serving(relay)


def test_request_without_csrf_token_is_refused(relay: RelayProcess, admin: Api) -> None:
    r = admin.http.post("/api/v1/groups", json={"name": "sneaky"})
    assert r.status_code == 403 and r.json()["error"] == "csrf"
    r = admin.http.post("/api/v1/groups", json={"name": "sneaky"},
                        headers={"x-csrf-token": "wrong"})
    assert r.status_code == 403
    r = admin.post("/api/v1/groups", json={"name": "sneaky"},
                   headers={"origin": "https://evil.example"})
    assert r.status_code == 403 and r.json()["error"] == "bad_origin"
    assert [e["details"]["reason"] for e in refusals(relay, "request.refused")][-3:] == [
        "csrf", "csrf", "bad_origin"]
    assert admin.post("/api/v1/groups", json={"name": "honest"}).status_code == 201


def test_websocket_from_foreign_origin_is_refused(relay: RelayProcess, admin: Api) -> None:
    cookie = f"__Host-backline={admin.http.cookies.get('__Host-backline')}"
    with ws(relay, "/api/v1/live", Origin=relay.url, Cookie=cookie) as good:
        assert json.loads(good.recv(5))["type"] == "hello"
    for path in ("/api/v1/live", "/agent/connect"):
        with pytest.raises(InvalidStatus) as refused:
            ws(relay, path, Origin="https://evil.example", Cookie=cookie)
        assert refused.value.response.status_code == 403
    reasons = [e for e in refusals(relay, "websocket.refused")
               if e["details"]["reason"] == "bad_origin"]
    assert len(reasons) == 2
    still_serving(relay)


def test_technician_cannot_act_outside_their_groups(tmp_path: Path, relay: RelayProcess,
                                                    admin: Api) -> None:
    assert admin.post("/api/v1/groups", json={"name": "finance"}).status_code == 201
    created = admin.post("/api/v1/users", json={"username": "tech", "role": "technician"})
    assert created.status_code == 201
    groups = {g["name"]: g["id"] for g in admin.get("/api/v1/groups").json()["groups"]}
    assert admin.request("PUT", f"/api/v1/groups/{groups['default']}/grants/tech"
                         ).status_code == 200
    mine, theirs = AgentProcess(tmp_path, "mine"), AgentProcess(tmp_path, "theirs")
    assert mine.enroll(relay.token()).returncode == 0
    assert theirs.enroll(relay.token("--group", "finance")).returncode == 0

    tech = Api(relay)
    otp = created.json()["one_time_password"]
    assert tech.login("tech", otp).status_code == 200
    assert tech.get("/api/v1/agents").json() == {"error": "password_change_required",
                                                 "detail": "set a new password first "
                                                 "(POST /api/v1/auth/password)"}
    assert tech.post("/api/v1/auth/password",
                     json={"current": otp, "new": "tech password 123"}).status_code == 200
    seen = {a["id"] for a in tech.get("/api/v1/agents").json()["agents"]}
    assert seen == {mine.agent_id}
    r = tech.request("PATCH", f"/api/v1/agents/{theirs.agent_id}", json={"label": "pwned"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert tech.get(f"/api/v1/agents/{theirs.agent_id}").status_code == 403
    assert tech.post(f"/api/v1/agents/{theirs.agent_id}/ping").status_code == 403
    r = tech.post("/api/v1/enroll-tokens", json={"group": "finance"})
    assert r.status_code == 403
    finance_token = admin.post("/api/v1/enroll-tokens", json={"group": "finance"}).json()["id"]
    r = tech.request("DELETE", f"/api/v1/enroll-tokens/{finance_token}")
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert [t["state"] for t in admin.get("/api/v1/enroll-tokens").json()["tokens"]
            if t["id"] == finance_token] == ["active"]
    assert [e["details"]["reason"] for e in refusals(relay, "enroll_token.refused")] == [
        "group_not_granted", "group_not_granted"]
    r = tech.request("PATCH", f"/api/v1/agents/{mine.agent_id}", json={"label": "ok"})
    assert r.status_code == 200 and r.json()["label"] == "ok"
    refused = refusals(relay, "agent.access.refused")
    assert len(refused) == 3 and all(e["actor"] == "user:tech" for e in refused)
    assert admin.get(f"/api/v1/agents/{theirs.agent_id}").json()["label"] == ""


def make_token(admin: Api, **body: Any) -> str:
    r = admin.post("/api/v1/api-tokens", json={"name": "automation", **body})
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def bearer(relay: RelayProcess, token: str, method: str, path: str, **kw: Any) -> Any:
    import httpx

    return httpx.request(method, relay.url + path, verify=relay.tls(), timeout=10,
                         headers={"authorization": f"Bearer {token}"}, **kw)


def test_api_token_scope_expiry_and_address(relay: RelayProcess, admin: Api) -> None:
    reader = make_token(admin, scopes=["agents:read"], ttl="1h")
    assert bearer(relay, reader, "GET", "/api/v1/agents").status_code == 200
    r = bearer(relay, reader, "POST", "/api/v1/enroll-tokens", json={"group": "default"})
    assert r.status_code == 403 and "scopes do not include enroll:write" in r.json()["detail"]
    assert bearer(relay, reader, "GET", "/api/v1/audit").status_code == 403
    assert bearer(relay, reader, "GET", "/api/v1/users").status_code == 403

    # A token can never manage users, groups or tokens, whoever made it.
    r = admin.post("/api/v1/api-tokens", json={"name": "root", "scopes": ["users:write"]})
    assert r.status_code == 400
    full = make_token(admin, scopes=sorted(["agents:read", "agents:write", "audit:read",
                                            "enroll:read", "enroll:write", "groups:read",
                                            "users:read"]))
    r = bearer(relay, full, "POST", "/api/v1/users", json={"username": "x", "role": "admin"})
    assert r.status_code == 403
    r = bearer(relay, full, "POST", "/api/v1/api-tokens", json={"name": "more",
                                                                 "scopes": ["agents:read"]})
    assert r.status_code == 403

    short = make_token(admin, scopes=["agents:read"], ttl="1s")
    time.sleep(1.5)
    r = bearer(relay, short, "GET", "/api/v1/agents")
    assert r.status_code == 401 and r.json()["error"] == "token_expired"

    elsewhere = make_token(admin, scopes=["agents:read"], allowed_cidrs=["192.0.2.0/24"])
    r = bearer(relay, elsewhere, "GET", "/api/v1/agents")
    assert r.status_code == 401 and r.json()["error"] == "token_address"
    here = make_token(admin, scopes=["agents:read"], allowed_cidrs=["127.0.0.0/8", "::1"])
    assert bearer(relay, here, "GET", "/api/v1/agents").status_code == 200

    forged = reader[:-4] + "AAAA"
    assert bearer(relay, forged, "GET", "/api/v1/agents").json()["error"] == "token_forged"

    reasons = [e["details"]["reason"] for e in refusals(relay, "api_token.refused")]
    assert reasons == ["expired", "address", "forged"]
    # Every refusal is audited, the admin's 400 for a scope no token may carry too.
    assert [e["details"]["reason"] for e in refusals(relay, "request.refused")][-6:] == [
        "forbidden"] * 3 + ["bad_field"] + ["forbidden"] * 2
    uses = refusals(relay, "api_token.use")
    assert uses and all(e["actor"].startswith("token:") for e in uses)
    assert reader.split("_", 2)[2] not in relay.log(), "a token secret reached the log"
    still_serving(relay)


def test_no_web_setup_path(relay: RelayProcess) -> None:
    import httpx

    for path in ("/setup", "/api/v1/setup", "/api/v1/users", "/install"):
        r = httpx.post(relay.url + path, verify=relay.tls(), json={"username": "evil",
                                                             "role": "admin"})
        assert r.status_code in (401, 404, 405), (path, r.status_code)


