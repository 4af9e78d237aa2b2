"""The web console in real Chromium (Debian's, driven by Playwright), against a real
relay process and real agents. Every page is watched for dialogs and CSP
violations: either fails the test."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pyotp
import pytest

from tests.browser.helpers import (
    CHROMIUM_PRESENT,
    SKIP_REASON,
    Watched,
    nav,
    new_user,
    shot,
    sign_in,
)
from tests.harness import (
    ADMIN_PASSWORD,
    AGENT,
    AgentProcess,
    Api,
    RelayProcess,
)
from tests.integration.test_api import wrong_code

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import expect


# --- the tests -----------------------------------------------------------------------


def test_login_with_totp_enrolment(page: Watched, site: RelayProcess) -> None:
    new_user(site, "tina", "technician", "tina's password 1")
    p = page.page
    sign_in(p, "tina", "tina's password 1")
    nav(p, "Account")
    p.get_by_role("button", name="Set up an authenticator").click()
    secret = p.locator("#totp-secret").inner_text()
    expect(p.get_by_role("img", name="QR code for your authenticator")).to_be_visible()
    confirmed = pyotp.TOTP(secret).now()
    p.get_by_label("Code from the app").fill(confirmed)
    p.get_by_role("button", name="Confirm").click()
    expect(p.get_by_text("Authenticator set up")).to_be_visible()
    p.get_by_role("button", name="Sign out").click()
    expect(p.get_by_text("You signed out.")).to_be_visible()

    sign_in(p, "tina", "tina's password 1")
    expect(p.get_by_role("alert")).to_contain_text("Enter the 6-digit code")
    # The code just used to confirm is spent (that very code: totp.now() is a new one
    # once the 30 s step has rolled over); the next time step's code is accepted.
    p.get_by_label("Authenticator code").fill(confirmed)
    p.get_by_role("button", name="Sign in").click()
    expect(p.get_by_role("alert")).to_contain_text("wrong username, password or code")
    p.get_by_label("Authenticator code").fill(pyotp.TOTP(secret).at(time.time() + 30))
    p.get_by_role("button", name="Sign in").click()
    expect(p.locator("#agents-title")).to_be_visible()
    expect(p.locator("#live-status")).to_have_text("Live")
    # Replacing it asks for the password and a current code, which the relay checks.
    nav(p, "Account")
    replace = p.get_by_role("form", name="Replace authenticator")
    replace.get_by_label("Password", exact=True).fill("tina's password 1")
    replace.get_by_label("Code from the current app").fill(wrong_code(pyotp.TOTP(secret)))
    replace.get_by_role("button", name="Replace authenticator").click()
    expect(p.get_by_role("alert")).to_contain_text("needs your password and a current code")


SESSION_ENDED = "You were signed out (your session ended)"


def test_first_visit_says_nothing_about_being_signed_out(page: Watched) -> None:
    """Nobody signed in in this browser yet: the sign-in page greets without claiming
    a session ended (the first /auth/me is refused as every signed-out call is)."""
    p = page.page
    with p.expect_response(lambda r: r.url.endswith("/api/v1/auth/me")) as me:
        p.goto("/")
    assert me.value.status == 401
    expect(p.get_by_role("heading", name="Sign in to Backline")).to_be_visible()
    expect(p.locator(".login .notice")).to_have_count(0)
    expect(p.get_by_text("signed out")).to_have_count(0)
    p.reload()
    expect(p.get_by_role("heading", name="Sign in to Backline")).to_be_visible()
    expect(p.get_by_text("signed out")).to_have_count(0)


def test_signed_out_when_session_ends(page: Watched, site: RelayProcess) -> None:
    """The session really ends on the relay (an admin resets the user's password,
    which ends their sessions): the page says so at the next request, and again after
    a reload; signing out oneself says that instead, and a reload after it nothing."""
    new_user(site, "eve", "technician", "eve's password 123")
    p = page.page
    sign_in(p, "eve", "eve's password 123")
    expect(p.locator("#live-status")).to_have_text("Live")
    site.cli("user", "reset-password", "eve")
    nav(p, "Sessions")
    expect(p.get_by_text(SESSION_ENDED)).to_be_visible()
    p.reload()
    expect(p.get_by_text(SESSION_ENDED)).to_be_visible()

    sign_in(p, "admin", ADMIN_PASSWORD)
    expect(p.locator("#live-status")).to_have_text("Live")
    p.context.clear_cookies()  # the cookie is gone (expired): the same message
    nav(p, "Audit")
    expect(p.get_by_text(SESSION_ENDED)).to_be_visible()

    sign_in(p, "admin", ADMIN_PASSWORD)
    expect(p.locator("#live-status")).to_have_text("Live")
    p.get_by_role("button", name="Sign out").click()
    expect(p.get_by_text("You signed out.")).to_be_visible()
    p.reload()
    expect(p.get_by_role("heading", name="Sign in to Backline")).to_be_visible()
    expect(p.get_by_text("signed out")).to_have_count(0)


def test_agent_goes_online_and_offline_live(page: Watched, site: RelayProcess,
                                            tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path, "live-box")
    assert agent.enroll(site.token()).returncode == 0
    p = page.page
    sign_in(p, "admin", ADMIN_PASSWORD)
    row = p.locator(f"tr[data-agent='{agent.agent_id}']")
    expect(row.locator(".state")).to_have_text("Offline")
    agent.start()
    try:
        expect(row.locator(".state")).to_have_text("Online", timeout=20_000)
        shot(p, "agents-list")
    finally:
        agent.stop()
    expect(row.locator(".state")).to_have_text("Offline", timeout=20_000)
    row.get_by_role("link").click()
    expect(p.get_by_role("heading", name="live-box")).to_be_visible()
    expect(p.locator("dl.facts")).to_contain_text(agent.agent_id)
    shot(p, "agent-page")


def test_enroll_a_real_agent_with_the_command_the_page_shows(page: Watched, site: RelayProcess,
                                                             tmp_path: Path) -> None:
    p = page.page
    sign_in(p, "admin", ADMIN_PASSWORD)
    nav(p, "Admin")
    form = p.get_by_role("form", name="Create an enrollment token")
    form.get_by_label("Uses").fill("1")
    form.get_by_role("button", name="Create token").click()
    command = p.locator("#enroll-command").inner_text().strip()
    argv = shlex.split(command)
    assert argv[:2] == ["backline-agent", "enroll"] and argv[2].startswith("bl1-")
    state = tmp_path / "from-page"
    r = subprocess.run([AGENT, "--state-dir", str(state), *argv[1:], "--hostname", "page-box"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    agent_id = json.loads((state / "enrollment.json").read_text())["agent_id"]
    nav(p, "Agents")
    expect(p.locator(f"tr[data-agent='{agent_id}']")).to_contain_text("page-box")
    nav(p, "Admin")
    from backline.common import enrollment

    token_id = enrollment.parse(argv[2]).secret.split(".", 1)[0]
    row = p.locator("tr", has=p.get_by_role("cell", name=token_id, exact=True))
    expect(row.get_by_role("cell", name="1 / 1")).to_be_visible()
    expect(row).to_contain_text("used up")


def test_technician_sees_only_granted_groups(page: Watched, site: RelayProcess,
                                            tmp_path: Path) -> None:
    site.cli("group", "create", "vip")
    new_user(site, "ted", "technician", "ted's password 12")
    site.cli("group", "grant", "default", "ted")
    plain, vip = AgentProcess(tmp_path, "plain-box"), AgentProcess(tmp_path, "vip-box")
    assert plain.enroll(site.token()).returncode == 0
    assert vip.enroll(site.token("--group", "vip")).returncode == 0
    p = page.page
    sign_in(p, "ted", "ted's password 12")
    expect(p.locator(f"tr[data-agent='{plain.agent_id}']")).to_be_visible()
    expect(p.locator(f"tr[data-agent='{vip.agent_id}']")).to_have_count(0)
    p.goto(f"/#/agent/{vip.agent_id}")
    expect(p.get_by_role("alert")).to_contain_text("not in a group you are granted")


def test_auditor_reads_the_trail_and_cannot_change_anything(page: Watched,
                                                            site: RelayProcess) -> None:
    new_user(site, "ada", "auditor", "ada's password 123")
    p = page.page
    sign_in(p, "ada", "ada's password 123")
    nav(p, "Audit")
    expect(p.locator("table.audit")).to_contain_text("auth.login")
    p.get_by_label("Action").fill("auth.login")
    p.get_by_role("button", name="Apply").click()
    expect(p.locator("table.audit tbody tr").first).to_contain_text("auth.login")
    p.get_by_role("button", name="Verify trail").click()
    expect(p.locator("#verify-result")).to_contain_text("OK:")
    shot(p, "audit-view")
    nav(p, "Admin")
    expect(p.get_by_text("Read-only: your role (auditor)")).to_be_visible()
    expect(p.get_by_role("button", name="Create group")).to_have_count(0)
    expect(p.get_by_role("button", name="Create token")).to_have_count(0)
    # Even with the page's own CSRF token, the relay refuses every change.
    statuses = p.evaluate("""async () => {
        const me = await (await fetch('/api/v1/auth/me')).json();
        const h = {'content-type': 'application/json', 'x-csrf-token': me.csrf_token};
        const tries = [['POST', '/api/v1/groups', {name: 'x'}],
                       ['POST', '/api/v1/enroll-tokens', {group: 'default'}],
                       ['PATCH', '/api/v1/users/1', {disabled: true}]];
        const out = [];
        for (const [method, url, body] of tries) {
            const r = await fetch(url, {method, headers: h, body: JSON.stringify(body)});
            out.push([r.status, (await r.json()).error]);
        }
        return out;
    }""")
    assert statuses == [[403, "forbidden"]] * 3


def test_live_indicator_recovers_after_relay_restart(page: Watched, site: RelayProcess) -> None:
    p = page.page
    sign_in(p, "admin", ADMIN_PASSWORD)
    indicator = p.locator("#live-status")
    expect(indicator).to_have_text("Live")
    site.kill9()
    expect(indicator).to_have_text("Reconnecting…", timeout=10_000)
    site.start()
    expect(indicator).to_have_text("Live", timeout=30_000)


PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(2)</script>",
    "\"><svg onload=alert(3)>",
    "javascript:alert(4)",
    "{{constructor.constructor('alert(5)')()}}",
    "</td></tr><iframe src=javascript:alert(6)>",
]


def enroll_hostile(site: RelayProcess, info: dict[str, str]) -> tuple[str, Any]:
    """Enroll with arbitrary self-reported facts, speaking the protocol directly."""
    from websockets.sync.client import connect

    from backline.common import enrollment, keys, protocol
    from backline.common.tlspin import client_context

    token = enrollment.parse(site.token())
    key = keys.generate()
    public = keys.public_raw(key)
    with connect(site.url.replace("https", "wss") + "/agent/enroll",
                 ssl=client_context()) as ws:
        signature = key.sign(protocol.enroll_payload(token.secret, public, token.fingerprint))
        ws.send(protocol.encode("enroll", token=token.secret, public_key=protocol.b64e(public),
                                signature=protocol.b64e(signature), **info))
        msg = protocol.decode(ws.recv(10))
    assert msg["type"] == "enrolled", msg
    return str(msg["agent_id"]), key


def test_hostile_agent_data_is_shown_as_text(page: Watched, site: RelayProcess) -> None:
    from websockets.sync.client import connect

    from backline.common import protocol
    from backline.common.tlspin import client_context
    from backline.relay.datadir import pem_fingerprint

    info = {name: PAYLOADS[i % len(PAYLOADS)] for i, name in
            enumerate(("hostname", "os", "os_version", "arch", "version"))}
    agent_id, key = enroll_hostile(site, info)
    api = Api(site)
    api.login("admin", ADMIN_PASSWORD)
    assert api.request("PATCH", f"/api/v1/agents/{agent_id}",
                       json={"label": PAYLOADS[5]}).status_code == 200
    api.close()
    fp = pem_fingerprint(site.data_dir / "tls.crt")
    with connect(site.url.replace("https", "wss") + "/agent/connect",
                 ssl=client_context()) as ws:
        ws.send(protocol.answer_challenge(ws.recv(5), agent_id, key, fp, PAYLOADS[1]))
        assert json.loads(ws.recv(5))["type"] == "welcome"
        ws.send(protocol.encode("health", alerts=[
            {"id": PAYLOADS[0], "severity": "critical", "message": PAYLOADS[2]}]))
        p = page.page
        sign_in(p, "admin", ADMIN_PASSWORD)
        row = p.locator(f"tr[data-agent='{agent_id}']")
        expect(row).to_contain_text(PAYLOADS[0])
        expect(row).to_contain_text("Online")
        p.get_by_label("Search").fill("onerror")
        expect(row).to_be_visible()
        row.get_by_role("link").click()
        facts = p.locator("dl.facts")
        for payload in PAYLOADS:
            if payload in info.values() or payload == PAYLOADS[5]:
                expect(facts).to_contain_text(payload)
        expect(p.locator("ul.alerts")).to_contain_text(PAYLOADS[2])
        nav(p, "Audit")
        expect(p.locator("table.audit")).to_contain_text("agent.enroll")
        time.sleep(0.5)  # let any injected handler fire, were there one
    assert p.locator("img[src='x'], iframe, svg[onload]").count() == 0
    assert p.evaluate("document.querySelectorAll('script:not([src])').length") == 0
    page.check()


DIAG_POLICY = '[capabilities]\ninfo = "allow"\ndiagnostics = "allow"\n'


def test_technician_runs_diagnostics_in_a_session(page: Watched, site: RelayProcess,
                                                  tmp_path: Path) -> None:
    """Open a session from the agent page, watch diagnostics arrive section by section,
    read the findings (worst first) before the raw sections, download the report,
    and compare two runs side by side."""
    from tests.harness import free_port, staged_diagnostics

    new_user(site, "sam", "technician", "sam's password 123")
    site.cli("group", "grant", "default", "sam")
    agent = AgentProcess(tmp_path, "diag-box")
    assert agent.enroll(site.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(DIAG_POLICY)
    (agent.state_dir / "agent.toml").write_text(staged_diagnostics(free_port()))
    agent.start()
    try:
        p = page.page
        sign_in(p, "sam", "sam's password 123")
        p.goto(f"/#/agent/{agent.agent_id}")
        expect(p.locator("dl.facts")).to_contain_text("Online", timeout=20_000)
        form = p.get_by_role("form", name="Open a support session")
        form.get_by_label("Reason").fill("slow <b>machine</b>")
        form.get_by_label("Ticket").fill("HD-77")
        form.get_by_role("button", name="Open session").click()
        expect(p.locator("#session-state")).to_have_text("ready")
        expect(p.locator("dl.facts")).to_contain_text("slow <b>machine</b>")
        session_url = p.url

        # Every text #diag-progress shows, as it changes: proof the page updates live.
        p.evaluate("""() => {
            window.__progress = [];
            new MutationObserver(() => {
                const t = document.querySelector('#diag-progress')?.textContent.trim();
                if (t && window.__progress.at(-1) !== t) window.__progress.push(t);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""")
        p.get_by_role("button", name="Run diagnostics").click()
        expect(p.locator("#diag-progress")).to_contain_text("Finished: 14 sections")
        seen = p.evaluate("window.__progress")
        partial = [t for t in seen if " of 14 sections" in t]
        assert partial, seen
        counts = [int(t.split(" of ")[0]) for t in partial]
        assert any(0 < n < 14 for n in counts), seen  # shown while still running
        assert counts == sorted(counts), seen

        findings = p.get_by_role("list", name="Findings")
        for rule in ("dns-lookup-failed", "endpoint-unreachable", "disk-almost-full"):
            expect(findings.locator(f"li[data-rule='{rule}']")).to_be_visible()
        severities = findings.locator("li.finding .badge").all_inner_texts()
        rank = {"critical": 0, "warning": 1, "info": 2}
        assert [rank[s] for s in severities] == sorted(rank[s] for s in severities)
        sections = p.locator(".sections details.section")
        expect(sections).to_have_count(14)
        # Findings first, then the raw sections.
        assert p.evaluate("""() => {
            const f = document.querySelector('ol.findings');
            const s = document.querySelector('.sections');
            return !!(f.compareDocumentPosition(s) & Node.DOCUMENT_POSITION_FOLLOWING);
        }""")
        p.locator("details[data-section='dns'] summary").click()
        expect(p.locator("details[data-section='dns'] pre")).to_contain_text(
            "does-not-exist.invalid")
        expect(p.locator("#report-saved")).to_contain_text("rp_")
        shot(p, "session-diagnostics")

        with p.expect_download() as download:
            p.get_by_role("button", name="Download report").click()
        saved = tmp_path / "report.json"
        download.value.save_as(saved)
        report = json.loads(saved.read_text())
        assert report["schema"] == "backline.diagnostics/1"
        assert len(report["sections"]) == 14
        assert {"dns-lookup-failed", "endpoint-unreachable"} <= {
            f["rule_id"] for f in report["findings"]}
        name = download.value.suggested_filename  # named after the machine's own hostname
        assert name.startswith("backline-report-") and name.endswith(".json"), name

        # A second run, then the two side by side.
        p.get_by_role("button", name="Run diagnostics").click()
        expect(p.locator("#diag-progress")).to_contain_text("Finished: 14 sections")
        p.get_by_role("link", name="Compare reports of this agent").click()
        expect(p.get_by_role("heading", name="Diagnostics reports")).to_be_visible()
        left, right = p.get_by_label("Left"), p.get_by_label("Right")
        expect(left.locator("option")).to_have_count(3)
        values = left.locator("option").evaluate_all("os => os.map(o => o.value)")
        left.select_option(values[2])
        right.select_option(values[1])
        table = p.get_by_role("table", name="Comparison")
        expect(table).to_contain_text("endpoint")
        # One row per section, then one per finding of either report: the second run
        # may find what the first did not (a machine's load, its clock), so count the
        # rule ids of both, as the console does.
        rules = p.evaluate("""async (ids) => {
            const seen = new Set();
            for (const id of ids) {
                const r = await fetch(`/api/v1/reports/${id}`, {credentials: "same-origin"});
                for (const f of (await r.json()).report.findings) seen.add(f.rule_id);
            }
            return seen.size;
        }""", [values[2], values[1]])
        assert rules >= len({f["rule_id"] for f in report["findings"]})
        expect(table.locator("tbody tr")).to_have_count(14 + rules, timeout=15_000)
        shot(p, "reports-compare")

        # The customer's machine goes away: the session page says so by itself.
        p.goto(session_url)
        expect(p.locator("#session-state")).to_have_text("ready")
        agent.stop()
        expect(p.locator("#session-state")).to_have_text("closed", timeout=20_000)
        expect(p.get_by_role("button", name="Run diagnostics")).to_be_disabled()
    finally:
        agent.stop()
