"""Issue 14, acceptance 1, in real Chromium against a real relay and a real agent (whose
``cobrowse`` room is the stand-in of tests/cobrowse_standin.py, its terminal the real
one): an auditor finds a session by a word typed in its terminal, opens its timeline,
replays the terminal and co-browse recordings and sees each digest verified (by the
relay and by the page's own SHA-256); a recording blob altered on the relay's disk is
flagged as such; the auditor can change nothing (no control on the page changes
anything, and the API refuses the auditor's writes).

The session's work is done through the technician's sockets (the protocol clients of
the integration tests), not a second browser: what is under test is the review."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import CHROMIUM_PRESENT, SKIP_REASON, Watched, new_user, shot, sign_in
from tests.harness import (
    Api,
    RelayProcess,
    audit_actions,
    browser_socket,
    free_port,
    staged_diagnostics,
    wait_for,
)
from tests.integration.test_cobrowse_relay import Console, StandInAgent
from tests.integration.test_fix_relay import manifest_toml
from tests.integration.test_fix_relay_e2e import approve
from tests.terminal_client import TerminalClient

pytestmark = pytest.mark.skipif(not CHROMIUM_PRESENT, reason=SKIP_REASON)

if CHROMIUM_PRESENT:
    from playwright.sync_api import expect

TECH, TECH_PASSWORD = "tess", "tess's password 1234"
AUDITOR, AUDITOR_PASSWORD = "audrey", "audrey's password 1234"
POLICY = ('[capabilities]\ninfo = "allow"\ncobrowse = "allow"\nshell = "allow"\n'
          'diagnostics = "allow"\nfix = "allow"\n\n[fix]\ndecision = "allow"\n')
APPROVER, APPROVER_PASSWORD = "abe", "abe's password 1234"
FIX = "tl-clean"
WORD = "zanzibar"
#: What the auditor's pages may offer: looking, replaying, paging. Nothing that writes.
READ_ONLY_BUTTONS = {"Sign out", "Search", "Replay", "Show", "Show more events", "Play",
                     "Pause", "Go", "Go to the end", "Close replay", "Raw event"}


@dataclass
class Done:
    session_id: str
    agent_id: str
    terminal: dict[str, Any]
    cobrowse: dict[str, Any]
    fix_output: dict[str, Any]  # id (the run's), sha256 (the trail's fix.run.ended blob)
    report: dict[str, Any]  # id, sha256 (the trail's diagnostics.report)


def stream(session_id: str, capability: str) -> str:
    return f"/api/v1/sessions/{session_id}/stream/{capability}"


@pytest.fixture(scope="module")
def done(site: RelayProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Done]:
    """One session, worked through: a terminal where WORD is typed, a co-browse, a
    diagnostics run, an approved fix run; closed, its outcome "resolved"."""
    new_user(site, TECH, "technician", TECH_PASSWORD)
    site.cli("group", "grant", "default", TECH)
    new_user(site, AUDITOR, "auditor", AUDITOR_PASSWORD)
    new_user(site, APPROVER, "approver", APPROVER_PASSWORD)
    agent = StandInAgent(tmp_path_factory.mktemp("timeline-agent"), "tl-agent", frames=0)
    assert agent.enroll(site.token()).returncode == 0
    (agent.state_dir / "policy.toml").write_text(POLICY)
    # Findings staged on any machine: a fresh machine may have none of its own.
    (agent.state_dir / "agent.toml").write_text(staged_diagnostics(free_port()))
    agent.start()
    tech = Api(site)
    try:
        assert tech.login(TECH, TECH_PASSWORD).status_code == 200
        wait_for(lambda: tech.get(f"/api/v1/agents/{agent.agent_id}").json().get("online"),
                 20, "the agent online")
        r = tech.post(f"/api/v1/agents/{agent.agent_id}/sessions",
                      json={"reason": "printer jam", "ticket": "HD-77",
                            "capabilities": ["info", "shell", "cobrowse", "diagnostics",
                                             "fix"]})
        assert r.status_code == 201, r.text
        sid = r.json()["id"]
        with browser_socket(site, tech, stream(sid, "shell")) as ws:
            term = TerminalClient(ws)
            term.message("ready")
            # A pause longer than the replay's idle limit (2 s) before a command, then the
            # word: the hit is not at 0:00, and on the player's clock (which shortens that
            # pause) it is earlier than in the recording.
            term.output(b"# ")  # the prompt
            time.sleep(3.5)
            term.type("true\r")
            time.sleep(0.3)
            term.type(f"echo {WORD}-$((6*7))\r")
            term.line(f"{WORD}-42".encode())
            term.type("exit\r")
            terminal = term.message("exit")["recording"]
        with browser_socket(site, tech, stream(sid, "cobrowse")) as ws:
            cb = Console(ws)
            cb.send(type="start", url="https://shop.example.test/cart", reason="HD-77")
            cb.message("ready")
            cb.agent("rrweb")
            cb.agent("rrweb")
            cb.agent("rrweb")
            cb.send(type="end")
            cobrowse = cb.message("exit")["recording"]
        r = tech.post(f"/api/v1/sessions/{sid}/channels/diagnostics")
        assert r.status_code == 200, r.text
        r = tech.post("/api/v1/fixes", json={"manifest_toml": manifest_toml(
            FIX, script="echo cleaned-the-spool")})
        assert r.status_code == 201, r.text
        approver = Api(site)
        try:
            assert approver.login(APPROVER, APPROVER_PASSWORD).status_code == 200
            assert approve(approver, FIX, 1).status_code == 200
        finally:
            approver.close()
        r = tech.post(f"/api/v1/sessions/{sid}/channels/fix", json={"fix": f"{FIX}@1"})
        assert r.status_code == 200, r.text
        assert tech.request("DELETE", f"/api/v1/sessions/{sid}").status_code == 200
        r = tech.post(f"/api/v1/sessions/{sid}/outcome",
                      json={"outcome": "resolved", "note": "spool cleaned"})
        assert r.status_code == 200, r.text
        # What the trail recorded of the two (the test's own reading, not the timeline's).
        trail = audit_actions(site)
        ended = next(e["details"] for e in trail if e["action"] == "fix.run.ended"
                     and e["target"] == f"session:{sid}")
        report = next(e["details"] for e in trail if e["action"] == "diagnostics.report"
                      and e["details"].get("session") == sid)
        assert ended["blob"] and ended["output_ok"], ended
        # The index is built when the recording is stored (off the event loop).
        def indexed() -> bool:
            r = tech.get("/api/v1/session-search", params={"text": WORD})
            assert r.status_code == 200, r.text
            return bool(r.json()["sessions"])

        wait_for(indexed, 20, "the recording indexed")
        yield Done(sid, agent.agent_id, terminal, cobrowse,
                   {"id": ended["run"], "sha256": ended["blob"]},
                   {"id": report["report"], "sha256": report["sha256"]})
    finally:
        tech.close()
        agent.stop()


def auditor_api(site: RelayProcess) -> Api:
    api = Api(site)
    assert api.login(AUDITOR, AUDITOR_PASSWORD).status_code == 200
    return api


def blob_path(site: RelayProcess, sha256: str) -> Path:
    return site.data_dir / "blobs" / sha256[:2] / sha256


def player_second(cast: bytes, at: float, limit: float = 2.0) -> float:
    """Second ``at`` of an asciicast on asciinema-player's clock, which shortens every
    pause longer than ``limit`` to ``limit`` (the console's idle limit)."""
    previous = cut = 0.0
    for line in cast.decode().splitlines()[1:]:
        t = float(json.loads(line)[0])
        if t >= at:
            break
        if t - previous > limit:
            cut += t - previous - limit
        previous = t
    return at - cut


def player_time(p: Any) -> float:
    """The terminal player's current time, in seconds: its progress bar is a Web
    Animation whose ``currentTime`` is the player's time while paused (asciinema-player
    3.18, console/package.json)."""
    ms = p.evaluate("""() => {
      const fill = document.querySelector('#timeline-replay .ap-gutter-full');
      const a = fill && fill.getAnimations()[0];
      return a ? a.currentTime : null;
    }""")
    assert ms is not None, "no player progress bar"
    return float(ms) / 1000


def test_auditor_finds_by_typed_word_replays_and_sees_digests_verified(
        page: Watched, site: RelayProcess, done: Done) -> None:
    p = page.page
    sign_in(p, AUDITOR, AUDITOR_PASSWORD)
    p.get_by_role("navigation", name="Main").get_by_role("link", name="Find sessions").click()
    form = p.get_by_role("search", name="Find sessions")
    form.get_by_label("Typed or printed in a terminal").fill(WORD)
    form.get_by_role("button", name="Search").click()
    row = p.locator(f"#search-results tr[data-session='{done.session_id}']")
    expect(row).to_be_visible()
    expect(p.locator("#search-results tbody tr")).to_have_count(1)
    hit = row.locator(f"a.hit[data-hit='{done.terminal['id']}']").first
    expect(hit).to_contain_text(f"“{WORD}")
    at = float(hit.get_attribute("href").rsplit("/", 1)[1])  # type: ignore[union-attr]
    assert at >= 2.5, at  # the moment it was typed, not the start
    hit.click()
    # The timeline: header, the events in order, the evidence with the trail's digests.
    expect(p.locator("#tl-technician")).to_have_text(TECH)
    expect(p.locator("#tl-reason")).to_have_text("printer jam")
    expect(p.locator("#tl-ticket")).to_have_text("HD-77")
    expect(p.locator("#tl-outcome")).to_contain_text("Resolved")
    expect(p.locator("#tl-outcome")).to_contain_text("spool cleaned")
    events = p.locator("table.timeline tbody tr")
    for action in ("session.open", "session.start", "recording.stored", "cobrowse.consent",
                   "session.channel", "session.end"):
        expect(p.locator("table.timeline")).to_contain_text(action)
    seqs = [int(s) for s in events.evaluate_all("rows => rows.map(r => r.dataset.seq)")]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))
    # Readable fields, linked, and the raw event behind one click.
    opened = p.locator("table.timeline tr", has_text="session.open").first
    expect(opened.locator("[data-field='ticket'] dd")).to_have_text("HD-77")
    expect(opened.locator("a[data-link='session']").first).to_have_attribute(
        "href", f"#/timeline/{done.session_id}")
    opened.get_by_text("Raw event").click()
    # Filled when the <details> opens (its toggle event comes after the click).
    expect(opened.locator("pre.raw-event")).to_contain_text('"action"')
    raw = json.loads(opened.locator("pre.raw-event").inner_text())
    assert raw["action"] == "session.open" and raw["details"]["reason"] == "printer jam"
    # The hit opened the terminal replay at that second, checked by the page too.
    replay = p.locator("#timeline-replay")
    expect(replay).to_have_attribute("data-state", "ready")
    expect(replay).to_have_attribute("data-recording", done.terminal["id"])
    expect(replay.locator("[data-check='verified']")).to_contain_text(done.terminal["sha256"])
    expect(replay.locator(".ap-terminal, .ap-player").first).to_be_visible()
    # ...and the player is at that second: paused there, its screen the hit's moment.
    # The player's own clock (its progress bar's animation, exact while paused) shortens
    # pauses longer than 2 s, so the hit's second in the recording is earlier on it (a
    # pause of 3.5 s came before the word: the conversion is under test).
    expected = player_second(blob_path(site, done.terminal["sha256"]).read_bytes(), at)
    assert expected < at - 0.5, (expected, at)
    expect(replay.locator(".ap-time-elapsed")).to_have_text(f"00:{int(expected):02d}")
    assert abs(player_time(p) - expected) < 0.01, (player_time(p), expected, at)
    # The co-browse recording replays (rrweb), verified too.
    p.locator(f"tr[data-evidence='{done.cobrowse['id']}']").get_by_role(
        "button", name="Replay").click()
    cb = p.locator("#timeline-cobrowse-replay")
    expect(cb).to_have_attribute("data-state", "ready")
    expect(cb.locator("[data-check='verified']")).to_contain_text(done.cobrowse["sha256"])
    p.wait_for_function("""() => {
      const f = document.querySelector('#cobrowse-replay iframe');
      const t = f && f.contentDocument && f.contentDocument.getElementById('title');
      return t && t.textContent === 'Stand-in page';
    }""", timeout=20_000)
    shot(p, "timeline-verified")
    # Nothing on the page changes anything: its only controls look, replay and page.
    # (the players' own controls, inside their hosts, only drive the playback)
    buttons = set(p.evaluate("""() => [...document.querySelectorAll('main button, main summary')]
      .filter((b) => !b.closest('.replay-host, .cobrowse-host'))
      .map((b) => b.innerText.trim() || b.getAttribute('aria-label') || '?')"""))
    assert buttons <= READ_ONLY_BUTTONS, buttons
    assert p.locator("main input:not([name='at']), main textarea").count() == 0
    assert p.locator("main form:not(.inline)").count() == 0
    # Every playback is an audit event.
    played = [e for e in audit_actions(site) if e["action"] == "recording.played"
              and e["actor"] == f"user:{AUDITOR}"]
    assert {e["target"] for e in played} >= {f"recording:{done.terminal['id']}",
                                             f"recording:{done.cobrowse['id']}"}


def test_the_api_refuses_every_write_of_the_auditor(site: RelayProcess, done: Done) -> None:
    api = auditor_api(site)
    try:
        sid = done.session_id
        attempts = [
            ("DELETE", f"/api/v1/sessions/{sid}", None),
            ("POST", f"/api/v1/sessions/{sid}/channels/info", {}),
            ("POST", f"/api/v1/sessions/{sid}/outcome", {"outcome": "resolved", "note": "x"}),
            ("POST", f"/api/v1/agents/{done.agent_id}/sessions", {"reason": "x"}),
            ("PATCH", f"/api/v1/agents/{done.agent_id}", {"label": "x"}),
            # Legal holds are admins' (lifting one lets retention delete what it kept).
            ("POST", "/api/v1/legal-holds",
             {"scope": "session", "subject": sid, "reason": "keep it"}),
            ("POST", "/api/v1/legal-holds/lh_any/lift", {"reason": "done with it"}),
        ]
        for method, path, body in attempts:
            r = api.request(method, path, json=body)
            # Every route exists: the refusal is the permission's (403), nothing else.
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["error"] == "forbidden", r.text
        assert api.get(f"/api/v1/sessions/{sid}/timeline").status_code == 200
    finally:
        api.close()


def test_an_altered_recording_blob_is_flagged(page: Watched, site: RelayProcess,
                                              done: Done) -> None:
    path = blob_path(site, done.terminal["sha256"])
    original = path.read_bytes()
    altered = original.replace(f"{WORD}-42".encode(), b"innocent!!!", 1)
    assert altered != original and len(altered) == len(original)
    path.chmod(0o600)
    path.write_bytes(altered)
    try:
        api = auditor_api(site)
        try:  # the relay's answer is loud and specific: both digests, the trail's event
            r = api.get(f"/api/v1/recordings/{done.terminal['id']}")
            assert r.status_code == 409, r.text
            assert r.json()["error"] == "digest_mismatch"
            assert done.terminal["sha256"] in r.json()["detail"]
            import hashlib
            assert hashlib.sha256(altered).hexdigest() in r.json()["detail"]
            timeline = api.get(f"/api/v1/sessions/{done.session_id}/timeline").json()
        finally:
            api.close()
        refused = [e for e in audit_actions(site) if e["action"] == "recording.refused"
                   and e["details"].get("reason") == "digest_mismatch"]
        assert refused and refused[-1]["details"]["trail_sha256"] == done.terminal["sha256"]
        assert any(e["action"] == "recording.refused" for e in timeline["events"])
        p = page.page
        sign_in(p, AUDITOR, AUDITOR_PASSWORD)
        expect(p.locator("#live-status")).to_be_visible()
        p.goto(f"/#/timeline/{done.session_id}")
        p.locator(f"tr[data-evidence='{done.terminal['id']}']").get_by_role(
            "button", name="Replay").click()
        replay = p.locator("#timeline-replay")
        expect(replay).to_have_attribute("data-state", "failed")
        flag = replay.locator("[data-check='mismatch']")
        expect(flag).to_contain_text("DIGEST MISMATCH")
        expect(flag).to_contain_text(done.terminal["sha256"])
        # The intact co-browse recording is still verified.
        p.locator(f"tr[data-evidence='{done.cobrowse['id']}']").get_by_role(
            "button", name="Replay").click()
        expect(p.locator("#timeline-cobrowse-replay [data-check='verified']")).to_be_visible()
        shot(p, "timeline-altered")
    finally:
        path.write_bytes(original)


def test_search_filters_paging_and_refusals(site: RelayProcess, done: Done) -> None:
    """The API under the pages: each filter narrows, bad queries are refused in words,
    a technician without a grant sees nothing, pages join without gaps, and a row whose
    digest was rewritten is refused as ``row_altered``."""
    api = auditor_api(site)
    try:
        def found(**params: Any) -> list[str]:
            r = api.get("/api/v1/session-search", params=params)
            assert r.status_code == 200, (params, r.text)
            return [s["id"] for s in r.json()["sessions"]]

        sid = done.session_id
        assert found(text=WORD) == [sid]
        assert found(text=f"echo {WORD.upper()}") == [sid]  # every word, any case
        assert found(text=f"{WORD[:5]}*") == [sid]
        assert found(text=f"{WORD} neverprinted") == []
        assert found(ticket="HD-77") == [sid] and found(ticket="HD-78") == []
        assert found(technician=TECH) == [sid] and found(technician="nobody") == []
        assert found(agent=done.agent_id, capability="cobrowse") == [sid]
        assert found(agent=done.agent_id, capability="fix") == [sid]
        assert found(agent=done.agent_id, capability="diagnostics") == [sid]
        assert found(agent=done.agent_id, capability="sftp") == []  # never asked for
        # The outcome the technician set: found by it, and by no other.
        assert found(outcome="resolved") == [sid]
        assert found(outcome="resolved", text=WORD) == [sid]
        assert found(outcome="escalated") == [] and found(outcome="not_resolved") == []
        assert found(agent=done.agent_id, since=str(time.time() + 3600)) == []
        for bad in ({"text": "a"}, {"text": " ".join(f"w{i}x" for i in range(9))},
                    {"limit": "0"}, {"outcome": "bogus"}, {"technician": "Not Valid"},
                    {"since": "yesterday"}, {"text": "x" * 201}):
            r = api.get("/api/v1/session-search", params=bad)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["detail"], r.text
        searches = [e for e in audit_actions(site) if e["action"] == "session.search"]
        assert searches and all(WORD not in json.dumps(e) for e in searches)
        assert any("text" in e["details"]["filters"] and e["details"].get("words") == 2
                   for e in searches)
        # Paging: small pages join into the whole, in order, without a repeat.
        whole = api.get(f"/api/v1/sessions/{sid}/timeline", params={"limit": 1000}).json()
        joined, after = [], 0
        for _ in range(200):
            page = api.get(f"/api/v1/sessions/{sid}/timeline",
                           params={"after": after, "limit": 3}).json()
            joined += [e["seq"] for e in page["events"]]
            if page["next_after"] is None:
                break
            assert page["session"] is None or after == 0
            after = page["next_after"]
        # (later views add their own events at the end)
        assert joined[:len(whole["events"])] == [e["seq"] for e in whole["events"]]
        assert joined == sorted(set(joined))
        assert api.get(f"/api/v1/sessions/{sid}/evidence/fr_nothing").status_code == 404
        # A row rewritten to another digest: refused, both named.
        import sqlite3

        db = sqlite3.connect(site.data_dir / "relay.db", timeout=10)
        try:
            db.execute("UPDATE recordings SET sha256 = ? WHERE id = ?",
                       (done.terminal["sha256"], done.cobrowse["id"]))
            db.commit()
            r = api.get(f"/api/v1/recordings/{done.cobrowse['id']}")
            assert r.status_code == 409 and r.json()["error"] == "row_altered", r.text
            assert done.cobrowse["sha256"] in r.json()["detail"]
            listed = api.get(f"/api/v1/sessions/{sid}/timeline").json()["evidence"]
            ev = next(e for e in listed if e["id"] == done.cobrowse["id"])
            assert ev["row_matches_trail"] is False
            assert ev["trail_sha256"] == done.cobrowse["sha256"]
        finally:
            db.execute("UPDATE recordings SET sha256 = ? WHERE id = ?",
                       (done.cobrowse["sha256"], done.cobrowse["id"]))
            db.commit()
            db.close()
    finally:
        api.close()
    # A technician of no group sees neither the session nor its timeline.
    new_user(site, "nigel", "technician", "nigel's password 1234")
    other = Api(site)
    try:
        assert other.login("nigel", "nigel's password 1234").status_code == 200
        r = other.get("/api/v1/session-search", params={"text": WORD})
        assert r.status_code == 200 and r.json()["sessions"] == []
        assert other.get(f"/api/v1/sessions/{sid}/timeline").status_code == 403
        assert other.get(f"/api/v1/recordings/{done.terminal['id']}").status_code == 404
    finally:
        other.close()


def _alter(path: Path, old: bytes, new: bytes) -> bytes:
    """Rewrite a blob on the relay's disk (same length, another SHA-256); the original."""
    original = path.read_bytes()
    altered = original.replace(old, new, 1)
    assert altered != original and len(altered) == len(original)
    path.chmod(0o600)
    path.write_bytes(altered)
    return original


def test_fix_output_and_report_shown_verified_and_altered_ones_flagged(
        page: Watched, site: RelayProcess, done: Done) -> None:
    """"Show" of a fix run's output and of a diagnostics report: verified by the relay
    and the page when intact; each altered on disk is refused and flagged, naming the
    trail's digest, and the refusals are audited."""
    p = page.page
    sign_in(p, AUDITOR, AUDITOR_PASSWORD)
    expect(p.locator("#live-status")).to_be_visible()
    p.goto(f"/#/timeline/{done.session_id}")
    run, report = done.fix_output["id"], done.report["id"]
    fix_row = p.locator(f"tr[data-evidence='{run}']")
    expect(fix_row).to_have_attribute("data-kind", "fix_output")
    expect(fix_row).to_contain_text(f"{FIX}@1")
    fix_row.get_by_role("button", name="Show").click()
    shown = p.locator(f"[data-shown='{run}']")
    expect(shown.locator("[data-check='verified']")).to_contain_text(done.fix_output["sha256"])
    expect(shown.locator("pre.evidence-text")).to_contain_text("cleaned-the-spool")
    report_row = p.locator(f"tr[data-evidence='{report}']")
    expect(report_row).to_have_attribute("data-kind", "diagnostics")
    report_row.get_by_role("button", name="Show").click()
    shown_report = p.locator(f"[data-shown='{report}']")
    expect(shown_report.locator("[data-check='verified']")).to_contain_text(
        done.report["sha256"])
    expect(shown_report.locator("ol.findings li[data-rule='disk-almost-full']")).to_be_visible()

    fix_path = blob_path(site, done.fix_output["sha256"])
    report_path = blob_path(site, done.report["sha256"])
    fix_original = _alter(fix_path, b"cleaned-the-spool", b"deleted-the-disk!")
    try:
        report_original = _alter(report_path, b'"type"', b'"typX"')
        try:
            p.goto(f"/#/timeline/{done.session_id}")  # a new view: nothing cached
            p.reload()
            p.locator(f"tr[data-evidence='{run}']").get_by_role("button", name="Show").click()
            flag = p.locator(f"[data-shown='{run}'] [data-check='mismatch']")
            expect(flag).to_contain_text("DIGEST MISMATCH")
            expect(flag).to_contain_text("this fix output is not what the audit trail recorded")
            expect(flag).to_contain_text(done.fix_output["sha256"])
            expect(p.locator(f"[data-shown='{run}'] pre")).to_have_count(0)  # not shown
            p.locator(f"tr[data-evidence='{report}']").get_by_role("button", name="Show").click()
            flag = p.locator(f"[data-shown='{report}'] [data-check='mismatch']")
            expect(flag).to_contain_text("this diagnostics report is not what")
            expect(flag).to_contain_text(done.report["sha256"])
            shot(p, "timeline-evidence-altered")
        finally:
            report_path.write_bytes(report_original)
    finally:
        fix_path.write_bytes(fix_original)
    refused = {e["details"]["evidence"]: e["details"] for e in audit_actions(site)
               if e["action"] == "evidence.refused"
               and e["details"].get("reason") == "digest_mismatch"}
    assert refused[run]["trail_sha256"] == done.fix_output["sha256"]
    assert refused[report]["trail_sha256"] == done.report["sha256"]
    viewed = {e["details"]["evidence"] for e in audit_actions(site)
              if e["action"] == "evidence.viewed" and e["actor"] == f"user:{AUDITOR}"}
    assert {run, report} <= viewed


def test_a_deleted_recording_row_is_flagged_and_an_intact_one_stays_verified(
        page: Watched, site: RelayProcess, done: Done) -> None:
    """The terminal recording's row deleted in the relay's database (its blob and its
    ``recording.stored`` event stay): the timeline lists it from the trail, flagged as
    missing; its playback events are still the session's; the co-browse recording still
    replays, verified."""
    import sqlite3

    term = done.terminal["id"]
    api = auditor_api(site)
    try:
        assert api.get(f"/api/v1/recordings/{term}").status_code == 200  # a playback
        before = api.get(f"/api/v1/sessions/{done.session_id}/timeline",
                         params={"limit": 1000}).json()
        played = [e["seq"] for e in before["events"]
                  if e["action"] == "recording.played" and e["target"] == f"recording:{term}"]
        assert played
        db = sqlite3.connect(site.data_dir / "relay.db", timeout=10)
        try:  # (kept aside, to put back for the tests after this one)
            db.execute("CREATE TEMP TABLE kept AS SELECT * FROM recordings WHERE id = ?", (term,))
            db.execute("DELETE FROM recordings WHERE id = ?", (term,))
            db.commit()
            after = api.get(f"/api/v1/sessions/{done.session_id}/timeline",
                            params={"limit": 1000}).json()
            listed = {e["id"]: e for e in after["evidence"]}
            assert listed[term]["state"] == "no_record" and not listed[term]["has_row"]
            assert listed[term]["trail_sha256"] == done.terminal["sha256"]
            assert listed[done.cobrowse["id"]]["state"] == "stored"
            assert set(played) <= {e["seq"] for e in after["events"]}

            p = page.page
            sign_in(p, AUDITOR, AUDITOR_PASSWORD)
            expect(p.locator("#live-status")).to_be_visible()
            p.goto(f"/#/timeline/{done.session_id}")
            gone = p.locator(f"tr[data-evidence='{term}']")
            expect(gone).to_have_attribute("data-state", "no_record")
            expect(gone.locator("[data-flag='no_record']")).to_contain_text(
                "MISSING: in the trail, no record on the relay")
            expect(gone).to_contain_text(done.terminal["sha256"][:16])  # the trail's digest
            expect(gone.get_by_role("button")).to_have_count(0)  # nothing to replay
            expect(p.locator("#evidence-missing")).to_contain_text("1 piece of evidence")
            for seq in played:  # its playbacks are still in the session's events
                expect(p.locator(f"#timeline-event-{seq}")).to_contain_text("recording.played")
            intact = p.locator(f"tr[data-evidence='{done.cobrowse['id']}']")
            expect(intact).to_have_attribute("data-state", "stored")
            expect(intact.locator("[data-flag]")).to_have_count(0)
            intact.get_by_role("button", name="Replay").click()
            expect(p.locator("#timeline-cobrowse-replay [data-check='verified']")).to_contain_text(
                done.cobrowse["sha256"])
            shot(p, "timeline-row-deleted")
        finally:
            if db.execute("SELECT 1 FROM recordings WHERE id = ?", (term,)).fetchone() is None:
                db.execute("INSERT INTO recordings SELECT * FROM kept")
                db.commit()
            db.close()
    finally:
        api.close()
