"""Hostile input at the API's edge (findings 3, 4 and 9), as real clients against a
real relay process: each is refused with the one error envelope, carries the security
headers, is audited, and the relay keeps serving."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.harness import ADMIN_PASSWORD, AgentProcess, Api, RelayProcess, admin_api, audit_actions

HEADERS = ("content-security-policy", "x-frame-options", "x-content-type-options",
           "referrer-policy", "strict-transport-security")


def refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The answer is the envelope with ``code``, and has every security header."""
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    for name in HEADERS:
        assert name in r.headers, (name, dict(r.headers))
    return dict(body)


def events(relay: RelayProcess, action: str, **match: Any) -> list[dict[str, Any]]:
    return [e for e in audit_actions(relay) if e["action"] == action
            and all(e["details"].get(k) == v for k, v in match.items())]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayProcess, Api]]:
    """One relay for the tests that sign in nothing wrong (no limiter in the way)."""
    relay = RelayProcess(tmp_path_factory.mktemp("edge")).start()
    admin = admin_api(relay)
    try:
        yield relay, admin
    finally:
        admin.close()
        relay.stop()


def last_refusals(admin: Api, n: int, action: str = "request.refused") -> list[dict[str, Any]]:
    """The newest ``n`` events of ``action``, oldest first, read through the API (the
    export CLI costs a process per call)."""
    page = admin.get("/api/v1/audit", params={"action": action, "limit": n}).json()
    return [e for e in reversed(page["events"]) if e["action"] == action]


def raw(relay: RelayProcess, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, relay.url + path, verify=relay.tls(), timeout=10, **kw)


# --- finding 3: inputs that reached unhandled exceptions -------------------------------


def test_non_ascii_csrf_header_is_refused_not_a_500(shared: tuple[RelayProcess, Api]) -> None:
    _relay, admin = shared
    for sent in ("١٢٣".encode(), b"\xff\xfe", "é".encode("latin-1")):
        r = admin.http.post("/api/v1/groups", json={"name": "sneaky"},
                            headers={"x-csrf-token": sent})
        refused(r, 403, "csrf")
    assert [e["details"]["reason"] for e in last_refusals(admin, 3)] == ["csrf"] * 3
    assert not any(g["name"] == "sneaky" for g in admin.get("/api/v1/groups").json()["groups"])


@pytest.mark.parametrize(("path", "params"), [
    ("/api/v1/audit", {"limit": "²"}),
    ("/api/v1/audit", {"limit": "٣"}),
    ("/api/v1/audit", {"before": "١٢"}),
    ("/api/v1/audit", {"before": "99999999999999999999999"}),
    ("/api/v1/audit", {"since": "١٢٣"}),
    ("/api/v1/audit", {"since": "nan"}),
    ("/api/v1/sessions", {"limit": "²"}),
    ("/api/v1/audit/export", {"since": "٣"}),
])
def test_unicode_digits_in_numbers_are_a_400(shared: tuple[RelayProcess, Api], path: str,
                                             params: dict[str, str]) -> None:
    _relay, admin = shared
    detail = refused(admin.get(path, params=params), 400, "bad_field")["detail"]
    assert next(iter(params)) in detail
    [event] = last_refusals(admin, 1)
    assert event["details"]["reason"] == "bad_field" and event["target"] == path


def test_unicode_digits_in_report_limits(tmp_path: Path,
                                         shared: tuple[RelayProcess, Api]) -> None:
    relay, admin = shared
    agent = AgentProcess(tmp_path, "reported")
    assert agent.enroll(relay.token()).returncode == 0
    r = admin.get(f"/api/v1/agents/{agent.agent_id}/reports", params={"limit": "²"})
    refused(r, 400, "bad_field")
    assert admin.get(f"/api/v1/agents/{agent.agent_id}/reports").json() == {"reports": []}


@pytest.mark.parametrize(("method", "path", "body"), [
    ("PATCH", "/api/v1/users/99999999999999999999999", {"disabled": True}),
    ("PATCH", "/api/v1/users/9223372036854775808", {"disabled": True}),
    ("PATCH", "/api/v1/users/²", {"disabled": True}),
    ("PUT", "/api/v1/groups/99999999999999999999999/grants/admin", None),
    ("DELETE", "/api/v1/groups/18446744073709551616/grants/admin", None),
    ("GET", "/api/v1/agents/" + "a" * 200, None),
    ("GET", "/api/v1/sessions/" + "s" * 65, None),
    ("GET", "/api/v1/reports/rp_" + "%0a" * 3, None),
    ("DELETE", "/api/v1/api-tokens/" + "f" * 100, None),
])
def test_ids_that_cannot_name_anything_are_a_404(shared: tuple[RelayProcess, Api],
                                                 method: str, path: str,
                                                 body: dict[str, Any] | None) -> None:
    relay, admin = shared
    r = admin.request(method, path, **({"json": body} if body is not None else {}))
    refused(r, 404, "not_found")
    [event] = last_refusals(admin, 1)
    assert event["details"]["reason"] == "not_found" and event["actor"] == "user:admin"
    assert relay.healthy()


# --- finding 9: content types and redirects ------------------------------------------


def test_json_endpoints_refuse_text_plain_and_untyped_bodies(
        shared: tuple[RelayProcess, Api]) -> None:
    _relay, admin = shared
    body = json.dumps({"name": "csrf-by-form"})
    for headers in ({"content-type": "text/plain"}, {"content-type": "text/plain;charset=utf-8"},
                    {"content-type": "application/x-www-form-urlencoded"}, {}):
        r = admin.post("/api/v1/groups", content=body, headers=headers)
        refused(r, 415, "unsupported_media_type")
    assert not any(g["name"] == "csrf-by-form"
                   for g in admin.get("/api/v1/groups").json()["groups"])
    assert [e["details"]["reason"] for e in last_refusals(admin, 4)] == [
        "unsupported_media_type"] * 4
    ok = admin.post("/api/v1/groups", content=body,
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 201, ok.text


def test_oversized_bodies_are_refused_before_reading(shared: tuple[RelayProcess, Api]) -> None:
    _relay, admin = shared
    r = admin.post("/api/v1/groups", content=b'{"name": "' + b"x" * 70_000 + b'"}',
                   headers={"content-type": "application/json"})
    refused(r, 413, "too_large")


def test_trailing_slashes_do_not_redirect_to_the_host_header(
        shared: tuple[RelayProcess, Api]) -> None:
    _relay, admin = shared
    for path in ("/api/v1/agents/", "/api/v1/audit/", "/healthz/"):
        r = admin.http.get(path, headers={"host": "evil.example"})
        assert "location" not in r.headers
        refused(r, 404, "not_found")


def test_anonymous_refusals_are_enveloped_audited_and_aggregated(tmp_path: Path) -> None:
    """Nested JSON and text/plain on sign-in, unknown paths and methods: what a stranger
    can send at will is refused, and audited through the flood aggregator (the first
    five from an address one by one, the rest of the minute as one event)."""
    relay = RelayProcess(tmp_path).start()
    try:
        for body in (b"[" * 60_000, b'{"username": ' + b"[" * 50_000 + b"}"):
            r = raw(relay, "POST", "/api/v1/auth/login", content=body,
                    headers={"content-type": "application/json"})
            assert "nested" in refused(r, 400, "bad_json")["detail"]
        r = raw(relay, "POST", "/api/v1/auth/login", headers={"content-type": "text/plain"},
                content=json.dumps({"username": "admin", "password": "x"}))
        refused(r, 415, "unsupported_media_type")
        refused(raw(relay, "GET", "/api/v1/nothing-here"), 404, "not_found")
        refused(raw(relay, "DELETE", "/api/v1/audit"), 405, "method_not_allowed")
        written = [e for e in audit_actions(relay) if e["action"] == "request.refused"]
        assert [e["details"]["reason"] for e in written] == [
            "bad_json", "bad_json", "unsupported_media_type", "not_found",
            "method_not_allowed"]
        assert all(e["actor"] == "anonymous@127.0.0.1" for e in written)
        assert written[0]["target"] == "/api/v1/auth/login"
        for _ in range(12):
            refused(raw(relay, "GET", "/api/v1/agents"), 401, "unauthenticated")
        assert relay.healthy()
    finally:
        relay.stop()  # a clean stop writes the pending summary
    rows = [e for e in audit_actions(relay) if e["action"] == "request.refused"]
    assert len(rows) == 6, rows
    assert rows[-1]["details"]["aggregated"] is True and rows[-1]["details"]["count"] == 12
    assert rows[-1]["details"]["reasons"] == {"unauthenticated": 12}


# --- the TOTP oracle ------------------------------------------------------------------


def test_non_ascii_totp_digits_answer_exactly_like_a_wrong_password(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path).start()
    try:
        admin = admin_api(relay)
        secret = admin.post("/api/v1/auth/totp/begin").json()["secret"]
        code = pyotp.TOTP(secret).now()
        # Non-ASCII digits in the confirmation are a refusal too, not a 500.
        refused(admin.post("/api/v1/auth/totp/confirm", json={"code": "١٢٣٤٥٦"}), 400,
                "bad_field")
        assert admin.post("/api/v1/auth/totp/confirm", json={"code": code}).status_code == 200
        answers = []
        for password, totp in ((ADMIN_PASSWORD, "١٢٣٤٥٦"), ("wrong password!", "١٢٣٤٥٦"),
                               (ADMIN_PASSWORD, "²²²²²²"), (ADMIN_PASSWORD, "12345\uff16")):
            r = Api(relay).login("admin", password, totp)
            answers.append((r.status_code, r.json()))
            refused(r, 401, "bad_credentials")
        assert len({json.dumps(a) for a in answers}) == 1, answers
        reasons = [e["details"]["reason"] for e in events(relay, "auth.login.failed")]
        assert reasons == ["bad_totp", "bad_password", "bad_totp", "bad_totp"]
        assert relay.healthy()
    finally:
        relay.stop()


# --- finding 4: refusals that left no audit event -------------------------------------


def test_every_api_refusal_is_audited(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path).start()
    try:
        admin = admin_api(relay)
        # Sign-in from a foreign Origin.
        r = raw(relay, "POST", "/api/v1/auth/login", headers={"origin": "https://evil.example"},
                json={"username": "admin", "password": ADMIN_PASSWORD})
        refused(r, 403, "bad_origin")
        foreign = events(relay, "request.refused", reason="bad_origin")
        assert foreign and foreign[-1]["target"] == "user:admin"
        assert foreign[-1]["details"]["origin"] == "https://evil.example"

        # An API token on the password and TOTP endpoints.
        token = admin.post("/api/v1/api-tokens", json={"name": "t", "scopes": ["agents:read"]}
                           ).json()["token"]
        auth = {"authorization": f"Bearer {token}"}
        for path, body in (("/api/v1/auth/password", {"current": "x", "new": "y" * 12}),
                           ("/api/v1/auth/totp/begin", {}),
                           ("/api/v1/auth/totp/confirm", {"code": "123456"})):
            refused(raw(relay, "POST", path, headers=auth, json=body), 403, "forbidden")
        token_refusals = [e["target"] for e in events(relay, "request.refused", reason="forbidden")
                          if e["actor"].startswith("token:")]
        assert token_refusals == ["/api/v1/auth/password", "/api/v1/auth/totp/begin",
                                  "/api/v1/auth/totp/confirm"]

        # Asking for a token beyond one's role.
        relay.cli("user", "create", "tina", "--role", "technician", "--password-stdin",
                  input="tina's password 1\n")
        tina = Api(relay)
        assert tina.login("tina", "tina's password 1").status_code == 200
        r = tina.post("/api/v1/api-tokens", json={"name": "more", "scopes": ["audit:read"]})
        refused(r, 403, "forbidden")
        beyond = events(relay, "api_token.create.refused")
        assert beyond and beyond[-1]["actor"] == "user:tina"
        assert beyond[-1]["details"]["scopes"] == ["audit:read"]

        # An API token whose owner is disabled.
        mine = tina.post("/api/v1/api-tokens", json={"name": "t", "scopes": ["agents:read"]})
        assert mine.status_code == 201, mine.text
        tina_id = next(u["id"] for u in admin.get("/api/v1/users").json()["users"]
                       if u["username"] == "tina")
        assert admin.request("PATCH", f"/api/v1/users/{tina_id}",
                             json={"disabled": True}).status_code == 200
        r = raw(relay, "GET", "/api/v1/agents",
                headers={"authorization": f"Bearer {mine.json()['token']}"})
        refused(r, 401, "token_owner_disabled")
        disabled = events(relay, "api_token.refused", reason="owner_disabled")
        assert disabled and disabled[-1]["actor"] == f"token:{mine.json()['id']}"

        # Each refusal once: one event per refused request, no more.
        before = len(audit_actions(relay))
        refused(admin.get("/api/v1/audit", params={"limit": "0"}), 400, "bad_field")
        added = audit_actions(relay)[before:]
        assert [e["action"] for e in added] == ["request.refused"], added
        # ... and the console's "am I signed in?" probe is no refusal worth a record.
        refused(raw(relay, "GET", "/api/v1/auth/me"), 401, "unauthenticated")
        assert len(audit_actions(relay)) == before + 1
    finally:
        relay.stop()


# --- finding 3: the error handler inside the security middleware ----------------------


def test_unhandled_errors_answer_the_envelope_with_headers_and_are_audited(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In process: no input reaches an unhandled exception any more, so one is planted
    on a route of the real application."""
    import asyncio

    from starlette.routing import Route

    from backline.relay.app import build_app
    from backline.relay.config import RelayConfig
    from backline.relay.state import open_relay

    state = open_relay(RelayConfig(data_dir=tmp_path / "relay"))

    async def boom(request: Any) -> Any:
        raise RuntimeError("password=hunter2 was in the way")

    app = build_app(state)
    app.router.routes.insert(0, Route("/api/v1/boom", boom, methods=["POST"]))
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="https://testserver") as client:
            return await client.post("/api/v1/boom", json={"password": "hunter2"})

    with caplog.at_level(logging.ERROR, "backline.relay.http"):
        r = asyncio.run(call())
    body = refused(r, 500, "internal")
    assert "hunter2" not in json.dumps(body)
    assert r.headers["cache-control"] == "no-store"
    from backline.relay.logfmt import formatter
    logged = "\n".join(formatter(f).format(rec) for rec in caplog.records
                        for f in ("text", "json"))
    assert "RuntimeError" in logged and "in boom" in logged, "the traceback is logged"
    assert "hunter2" not in logged, logged
    state.floods.flush_all()
    errors = state.audit.query(action="request.error")
    assert len(errors) == 1 and errors[0]["target"] == "/api/v1/boom"
    details = errors[0]["details"]
    assert details["method"] == "POST" and details["error"] == "RuntimeError"
    assert "hunter2" not in json.dumps(errors[0])


# --- the document ---------------------------------------------------------------------


def test_the_document_describes_every_answer() -> None:
    """Without a relay: every operation has typed answers, the error envelope on each
    refusal, and the statuses the wrapper itself can answer."""
    from backline.relay.api.openapi import document

    doc = document()
    schemas = doc["components"]["schemas"]
    assert schemas["ErrorBody"]["required"] == ["error", "detail"]
    created = set()
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            responses = op["responses"]
            assert "500" in responses and ({"200", "201", "202"} & set(responses)), op
            created |= {op["operationId"]} if "201" in responses else set()
            for status, answer in responses.items():
                (media, content), = answer["content"].items()
                if status.startswith(("4", "5")):
                    assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
                elif media == "application/json":
                    assert content["schema"]["$ref"].split("/")[-1] in schemas
            if op["operationId"] != "login":
                assert "401" in responses, (path, method)
            if "requestBody" in op or method in ("post", "put", "patch"):
                assert {"400", "413", "415"} <= set(responses), (path, method)
            if "{" in path:
                assert "404" in responses, (path, method)
            assert all(p["schema"].get("type") for p in op["parameters"]), op["parameters"]
    assert created == {"create_group", "create_user", "create_enroll_token",
                       "create_api_token", "open_session", "create_session_code",
                       "submit_fix", "add_signature", "place_hold"}
    login = doc["paths"]["/api/v1/auth/login"]["post"]
    assert login["security"] == [] and "429" in login["responses"]
    totp = schemas["TotpConfirm"]["properties"]["code"]
    assert totp["pattern"] == "^[0-9]{6}$"
    limit = next(p for p in doc["paths"]["/api/v1/audit"]["get"]["parameters"]
                 if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 500 and limit["schema"]["type"] == "integer"
