"""The console's session outcome dialog and "Management reports" page in real Chromium:
closing a session asks its outcome and note, a closed session's outcome can be changed;
the report page shows the numbers, drills down to the session, draws its charts and
prints without the navigation; no CSP violation, no dialog, no script error."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

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
from tests.harness import ADMIN_PASSWORD, AgentProcess, RelayProcess, admin_api
from tests.integration.test_sessions import open_session, start_agent

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import expect


@pytest.fixture(scope="module")
def agent(site: RelayProcess, tmp_path_factory: pytest.TempPathFactory
          ) -> Iterator[AgentProcess]:
    root: Path = tmp_path_factory.mktemp("management-agent")
    api = admin_api(site)
    a = start_agent(root, site, api, "pc-report")
    api.close()
    try:
        yield a
    finally:
        a.stop()


def test_outcome_dialog_and_management_page(page: Watched, site: RelayProcess,
                                            agent: AgentProcess) -> None:
    api = admin_api(site)
    s = open_session(api, agent.agent_id, reason="printer", ticket="T-9")
    api.close()
    p = page.page
    sign_in(p, "admin", ADMIN_PASSWORD)
    p.goto(f"/#/session/{s['id']}")
    p.get_by_role("button", name="Close session").click()
    dialog = p.get_by_role("dialog")
    expect(dialog).to_contain_text("how did it end?")
    dialog.get_by_label("Resolved", exact=True).check()
    dialog.get_by_label("Note").fill("driver reinstalled")
    dialog.get_by_role("button", name="Close and save").click()
    expect(p.locator("#session-state")).to_have_text("closed")
    expect(p.locator("#session-outcome")).to_contain_text("Resolved")
    expect(p.locator("#session-outcome")).to_contain_text("driver reinstalled")

    p.get_by_role("button", name="Change outcome").click()
    p.get_by_role("dialog").get_by_label("Escalated").check()
    p.get_by_role("dialog").get_by_role("button", name="Save outcome").click()
    expect(p.locator("#session-outcome")).to_contain_text("Escalated")

    nav(p, "Management reports")
    metrics = p.locator("#metrics")
    expect(metrics).to_contain_text("Incidents opened")
    opened = p.locator('button[data-metric="incidents_opened"]')
    expect(opened).to_have_text("1")  # ticket T-9, escalated: open
    expect(p.locator('button[data-metric="incidents_resolved"]')).to_have_text("0")
    expect(p.locator('button[data-metric="sessions"]')).to_have_text("1")
    opened.click()
    drill = p.locator("#drill")
    expect(drill).to_contain_text("ticket:T-9")
    expect(drill.locator(f'a[href="#/session/{s["id"]}"]').first).to_be_visible()
    expect(p.locator("figure.chart svg").first).to_be_visible()
    expect(p.locator("#technicians")).to_contain_text("admin")
    shot(p, "management-report")
    p.emulate_media(media="print")
    expect(p.locator("header.top")).to_be_hidden()
    expect(p.locator("form.no-print")).to_be_hidden()
    expect(metrics).to_be_visible()


def test_an_auditor_drills_down_to_the_timeline(page: Watched, site: RelayProcess,
                                                agent: AgentProcess) -> None:
    """An auditor cannot act on a session: the drill-down opens its timeline (the
    read-only evidence view), not the live session page."""
    api = admin_api(site)
    s = open_session(api, agent.agent_id, reason="printer", ticket="T-10")
    assert api.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
    api.close()
    new_user(site, "report-auditor", "auditor", "auditor-password-0123")
    p = page.page
    sign_in(p, "report-auditor", "auditor-password-0123")
    nav(p, "Management reports")
    p.locator('button[data-metric="sessions"]').click()
    drill = p.locator("#drill")
    link = drill.locator(f'a[href="#/timeline/{s["id"]}"]').first
    expect(link).to_be_visible()
    assert drill.locator('a[href^="#/session/"]').count() == 0
    link.click()
    expect(p).to_have_url(re.compile(f"#/timeline/{s['id']}$"))
    expect(p.locator("#timeline-title")).to_contain_text(s["id"])
