"""Acceptance 4: schemathesis against the generated OpenAPI document of a live relay.

The fuzzer reads ``/api/v1/openapi.json`` from a real relay process and sends what
the document allows (and what it forbids: ``--mode all``) to every operation, then
holds each answer to the document: no server error, no status code the document
does not list, bodies that match the response schemas, the documented content types.

Two runs, bounded by ``--max-examples`` so both take about a minute here:

* as automation does, with an admin's API token (``Authorization: Bearer``), on
  every operation. Tokens cannot carry ``users:write``, ``groups:write`` or
  ``apitokens:write``, so those answer 403 in this run;
* as the console does, with the admin's browser session (cookie, CSRF header,
  Origin), on the operations only a person may use (users, groups, API tokens,
  password and TOTP). ``POST /api/v1/auth/logout`` is left out of this run, and
  only of it: signing the fuzzer's own session out halfway would turn the rest of
  the run into 401s. It is fuzzed in the token run.

Ids the fuzzer cannot guess are given to it (``[parameters]``): an enrolled (offline)
agent, the default group and a throwaway user, never the admin itself, so that a
``PATCH /users/{id}`` with ``totp_required`` cannot lock the run out.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import httpx

from backline.relay.roles import TOKEN_SCOPES
from tests.harness import BIN, AgentProcess, Api, RelayProcess

CHECKS = ("not_a_server_error,status_code_conformance,response_schema_conformance,"
          "content_type_conformance")
SEED = os.environ.get("BACKLINE_FUZZ_SEED", "20261201")
PERSON_ONLY = r"^/api/v1/(users|groups|api-tokens|auth/(me|password|totp))"


def fuzz(relay: RelayProcess, config: Path, headers: dict[str, str], examples: int,
         *filters: str) -> str:
    # One worker: on CPython 3.11, ast.parse in two threads at once (hypothesis describes
    # filters by their source) can fail with "AST constructor recursion depth mismatch".
    cmd = [str(BIN / "st"), "--config-file", str(config), "run",
           f"{relay.url}/api/v1/openapi.json", "--url", relay.url,
           "--tls-verify", str(relay.data_dir / "tls.crt"),
           "--checks", CHECKS, "--mode", "all", "--phases", "coverage,fuzzing",
           "--max-examples", str(examples), "--workers", "1", "--seed", SEED,
           "--no-shrink", "--request-timeout", "20", *filters]
    for name, value in headers.items():
        cmd += ["--header", f"{name}: {value}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                          cwd=config.parent,  # its cache (.schemathesis/) stays out of the tree
                          env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "0"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-8000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", out)
    tested = re.search(r"Tested: (\d+)", out)
    assert selected and tested, out[-3000:]
    # Nothing skipped silently: every selected operation was exercised.
    assert tested.group(1) == selected.group(1), out[-3000:]
    assert re.search(r"\d+ generated, \d+ passed", out), out[-3000:]
    return out


def test_the_relay_keeps_to_its_openapi_document(tmp_path: Path, relay: RelayProcess,
                                                 admin: Api) -> None:
    agent = AgentProcess(tmp_path, "fuzzed")
    assert agent.enroll(relay.token()).returncode == 0
    other = admin.post("/api/v1/users", json={"username": "fuzzed", "role": "technician"})
    assert other.status_code == 201, other.text
    groups = admin.get("/api/v1/groups").json()["groups"]
    config = tmp_path / "schemathesis.toml"
    config.write_text("[parameters]\n"
                      f'"path.agent_id" = "{agent.agent_id}"\n'
                      f'"path.group_id" = {groups[0]["id"]}\n'
                      '"path.username" = "fuzzed"\n'
                      f'"path.user_id" = {other.json()["user"]["id"]}\n')
    r = admin.post("/api/v1/api-tokens", json={"name": "fuzzer",
                                                "scopes": sorted(TOKEN_SCOPES)})
    assert r.status_code == 201, r.text
    operations = sum(len(methods) for methods in
                     admin.get("/api/v1/openapi.json").json()["paths"].values())

    out = fuzz(relay, config, {"Authorization": f"Bearer {r.json()['token']}"}, 12)
    assert f"Selected: {operations}/{operations}" in out, out[-3000:]

    cookie = admin.http.cookies.get("__Host-backline")
    fuzz(relay, config, {"Cookie": f"__Host-backline={cookie}", "X-CSRF-Token": admin.csrf,
                         "Origin": relay.url}, 12,
         "--include-path-regex", PERSON_ONLY, "--exclude-operation-id", "logout")

    # The fuzzer's session and token still work: nothing locked the admin out, and the
    # relay kept serving.
    assert admin.get("/api/v1/auth/me").status_code == 200
    assert httpx.get(relay.url + "/healthz", verify=relay.tls()).status_code == 200
    assert "Traceback" not in relay.log(), relay.log()[-3000:]
