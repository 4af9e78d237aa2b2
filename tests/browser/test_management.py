"""The console's session outcome dialog and "Management reports" page in real Chromium:
closing a session asks its outcome and note, a closed session's outcome can be changed;
the report page shows the numbers, drills down to the session, draws its charts and
prints without the navigation; every bar of the charts (and every number of the trend,
its time to resolve and fixes) lists exactly the incidents, sessions and events that
make it up, by mouse and keyboard; no CSP violation, no dialog, no script error.

Weeks pass on the relay's trail clock only (relay/reports/clock.py): the last test
moves it forward two and three weeks, so it runs after the others, which count "now"."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    AgentProcess,
    Api,
    RelayProcess,
    admin_api,
    audit_actions,
    wait_for,
)
from tests.integration.test_management_reports import CRITICAL, WARNING
from tests.integration.test_sessions import open_session, start_agent

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import expect


DAY = 86400.0
WEEK = 7 * DAY
MONDAY = 4 * DAY  # 1970-01-05, a Monday: weeks start on Mondays, in UTC (docs/reports.md)


@pytest.fixture(scope="module")
def clock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trail clock's offset, in seconds (0 until the last test moves it forward)."""
    path: Path = tmp_path_factory.mktemp("trail-clock") / "offset"
    path.write_text("0")
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, clock: Path) -> Iterator[RelayProcess]:
    """As tests/browser/conftest.py's, with the trail clock seam on."""
    relay = RelayProcess(tmp_path_factory.mktemp("console"),
                         extra_env={"BACKLINE_TEST_CLOCK_FILE": str(clock)}).start()
    admin_api(relay).close()
    try:
        yield relay
    finally:
        relay.stop()


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


def _week(at: float) -> str:
    """The key of the week ``at`` falls in: its Monday 00:00 UTC, as the API names it."""
    return str(int(MONDAY + ((at - MONDAY) // WEEK) * WEEK))


def _day(key: str) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(int(key)))


def _ticket(api: Api, agent_id: str, ticket: str, outcome: str) -> dict[str, Any]:
    """A session on the ticket, closed with ``outcome``; its id and its events' seqs."""
    s = open_session(api, agent_id, reason="report chart", ticket=ticket)
    assert api.request("DELETE", f"/api/v1/sessions/{s['id']}").status_code == 200
    r = api.post(f"/api/v1/sessions/{s['id']}/outcome", json={"outcome": outcome})
    assert r.status_code == 200, r.text
    return {"id": s["id"], "ticket": ticket}


def _drilled(p: Any) -> dict[str, Any]:
    """What the drill-down lists: incident ids, session ids and event seqs."""
    drill = p.locator("#drill")
    incidents = drill.locator("table tbody tr td:first-child code").all_inner_texts()
    hrefs = drill.locator('a[href^="#/session/"]').evaluate_all(
        "links => links.map((a) => a.getAttribute('href'))")
    seqs = [b.strip() for b in drill.locator("button.link").all_inner_texts()]
    return {"incidents": set(incidents), "sessions": {h.rsplit("/", 1)[1] for h in hrefs},
            "events": {int(b[1:]) for b in seqs if b.startswith("#")}}


def test_every_bar_and_trend_number_lists_what_makes_it_up(
        page: Watched, site: RelayProcess, agent: AgentProcess, clock: Path,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """Two weeks, two and three weeks on (trail clock): an alert on pc-health that clears
    by itself and ticket W-A resolved in the first; W-B1 (escalated) and W-B2 (resolved)
    in the second. The test keeps its own record (from the trail's events) and each bar
    it opens, by mouse or keyboard, lists exactly that."""
    root: Path = tmp_path_factory.mktemp("health-agent")
    api = admin_api(site)
    health = AgentProcess(root, "pc-health")
    health.state_dir.mkdir(parents=True, exist_ok=True)
    (health.state_dir / "agent.toml").write_text(WARNING)
    start_agent(root, site, api, "pc-health", agent=health)
    start = time.time()

    def trail_event(action: str, target: str, after: int) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in audit_actions(site) if e["action"] == action
                         and e["target"] == target and e["seq"] > after), None)
        event: dict[str, Any] = wait_for(found, 30, f"{action} of {target}")
        return event

    try:
        clock.write_text(str(14 * DAY))
        head = audit_actions(site)[-1]["seq"]
        (health.state_dir / "agent.toml").write_text(CRITICAL)
        alert = trail_event("agent.health.alert", f"agent:{health.agent_id}", head)
        wa = _ticket(api, agent.agent_id, "W-A", "resolved")
        (health.state_dir / "agent.toml").write_text(WARNING)
        cleared = trail_event("agent.health.cleared", f"agent:{health.agent_id}", alert["seq"])
        clock.write_text(str(21 * DAY))
        wb1 = _ticket(api, agent.agent_id, "W-B1", "escalated")
        wb2 = _ticket(api, agent.agent_id, "W-B2", "resolved")
    finally:
        health.stop()
        api.close()

    # The test's own record, from the trail: each incident's opening, resolution and
    # events (docs/reports.md: a ticket's events are its sessions' session.open and
    # session.outcome; an alert episode's, its alerts and the clearing).
    trail = audit_actions(site)
    episode = f"alert:{health.agent_id}:{alert['seq']}"
    incidents: dict[str, dict[str, Any]] = {episode: {
        "opened": alert["time"], "resolved": cleared["time"], "sessions": set(),
        "events": {e["seq"] for e in trail if e["target"] == f"agent:{health.agent_id}"
                   and e["action"] in ("agent.health.alert", "agent.health.cleared")
                   and alert["seq"] <= e["seq"] <= cleared["seq"]}}}
    for s in (wa, wb1, wb2):
        mine = [e for e in trail if e["target"] == f"session:{s['id']}"
                and e["action"] in ("session.open", "session.outcome")]
        outcome = next(e for e in mine if e["action"] == "session.outcome")
        incidents[f"ticket:{s['ticket']}"] = {
            "opened": mine[0]["time"], "sessions": {s["id"]},
            "resolved": outcome["time"] if outcome["details"]["outcome"] == "resolved"
            else None, "events": {e["seq"] for e in mine}}
    findings = set(alert["details"]["critical"])
    assert findings, alert
    week_a, week_b = _week(alert["time"]), _week(incidents["ticket:W-B1"]["opened"])
    assert week_a != week_b

    def members(ids: set[str]) -> dict[str, Any]:
        return {"incidents": ids,
                "sessions": set().union(*(incidents[i]["sessions"] for i in ids)),
                "events": set().union(*(incidents[i]["events"] for i in ids))}

    def in_week(key: str, field: str) -> set[str]:
        return {i for i, x in incidents.items() if x[field] and _week(x[field]) == key}

    p = page.page
    sign_in(p, "admin", ADMIN_PASSWORD)
    nav(p, "Management reports")
    form = p.get_by_role("form", name="Report period")
    form.get_by_label("From").fill(_day(str(int(start + 10 * DAY))))
    form.get_by_label("To").fill(_day(str(int(start + 28 * DAY))))
    form.get_by_role("button", name="Show").click()
    chart = p.locator("#trend-chart")
    bar = chart.locator(f'g.bar-link[data-metric="trend.incidents_opened"][data-key="{week_b}"]')
    expect(bar).to_have_attribute("aria-label", re.compile(r": 2$"))

    # A click on the second week's "opened" bar: exactly W-B1 and W-B2.
    bar.click()
    expect(p.locator("#drill-title")).to_have_text(
        f"Incidents opened, week of {_day(week_b)}: 2")
    assert _drilled(p) == members(in_week(week_b, "opened")) == members(
        {"ticket:W-B1", "ticket:W-B2"})

    # By keyboard: from the first week's "opened" bar, Tab reaches its "resolved" bar,
    # Enter opens it: the alert episode and W-A (both resolved that week).
    chart.locator(f'g.bar-link[data-metric="trend.incidents_opened"][data-key="{week_a}"]'
                  ).focus()
    p.keyboard.press("Tab")
    focused = p.evaluate("() => [document.activeElement.dataset.metric, "
                         "document.activeElement.dataset.key]")
    assert focused == ["trend.incidents_resolved", week_a], focused
    p.keyboard.press("Enter")
    expect(p.locator("#drill-title")).to_have_text(
        f"Incidents resolved, week of {_day(week_a)}: 2")
    assert _drilled(p) == members(in_week(week_a, "resolved")) == members(
        {episode, "ticket:W-A"})

    # A week with nothing: its bars have no height, and still open (to nothing).
    empty = _week(start + 10 * DAY)
    assert empty not in (week_a, week_b)
    zero = chart.locator(f'g.bar-link[data-metric="trend.incidents_opened"][data-key="{empty}"]')
    zero.focus()
    p.keyboard.press(" ")
    expect(p.locator("#drill-title")).to_have_text(
        f"Incidents opened, week of {_day(empty)}: 0")
    assert _drilled(p) == {"incidents": set(), "sessions": set(), "events": set()}

    # Findings by kind: each bar, the alert episode that had it.
    for name in sorted(findings):
        p.locator(f'#findings-chart g.bar-link[data-metric="finding"][data-key="{name}"]').click()
        expect(p.locator("#drill-title")).to_have_text(
            f"Incidents with the finding {name}: 1")
        assert _drilled(p) == members({episode})

    # The trend's numbers the bars do not show: its mean time to resolve and its fixes.
    table = p.locator("#trend")
    expect(table.locator("thead")).to_contain_text("Mean time to resolve")
    expect(table.locator("thead")).to_contain_text("Fixes run")
    mttr = table.locator(f'button[data-metric="trend.mttr_mean_s"][data-key="{week_a}"]')
    durations = [x["resolved"] - x["opened"] for i, x in incidents.items()
                 if i in in_week(week_a, "resolved")]
    mean = sum(durations) / len(durations)
    assert mean < 120  # shown in seconds
    expect(mttr).to_have_text(f"{math.floor(mean + 0.5)} s")
    mttr.click()
    expect(p.locator("#drill-title")).to_have_text(
        f"Mean time to resolve, week of {_day(week_a)}: {math.floor(mean + 0.5)} s")
    assert _drilled(p) == members({episode, "ticket:W-A"})
    for key in (week_a, week_b):
        fixes = table.locator(f'button[data-metric="trend.fixes_run"][data-key="{key}"]')
        expect(fixes).to_have_text("0")  # no fix was run
    fixes.click()
    expect(p.locator("#drill-title")).to_have_text(f"Fixes run, week of {_day(week_b)}: 0")
    assert _drilled(p)["events"] == set()
    shot(p, "management-charts-drill")
