"""The terminal text index (relay/term_index.py): words typed one echo at a time stay one
word, escape sequences never become words, and the moments map to the right seconds."""

from __future__ import annotations

import json
from pathlib import Path

from backline.relay import term_index


def cast(*events: tuple[float, str, str]) -> bytes:
    lines = [json.dumps({"version": 2, "width": 80, "height": 24})]
    lines += [json.dumps(list(e)) for e in events]
    return ("\n".join(lines) + "\n").encode()


def test_a_word_echoed_one_character_per_event_is_one_word() -> None:
    events = [(1.0 + i * 0.1, "o", ch) for i, ch in enumerate("shred -u secret.txt")]
    moments = {m.word: m.at for m in term_index.moments_of(cast(*events))}
    assert moments["shred"] == 1.0
    assert moments["secret.txt"] == 1.0 + 9 * 0.1
    assert moments["secret"] == moments["secret.txt"] and moments["txt"] > moments["secret"]


def test_escape_sequences_and_controls_are_not_words() -> None:
    data = "\x1b[1;31mred\x1b[0m \x1b]0;title-bar\x07 \x1b[38;5;208mword\r\n\x1bMz"
    words = {m.word for m in term_index.moments_of(cast((0.5, "o", data)))}
    assert words == {"red", "word"}  # no "31m", "0m", "title", "bar", "208m"


def test_input_only_when_keystrokes_are_recorded_and_moments_are_bounded() -> None:
    events = [(float(i), "o", "again ") for i in range(50)] + [(60.0, "i", "typed")]
    plain = term_index.moments_of(cast(*events), with_input=False)
    assert [m.at for m in plain if m.word == "again"] == [float(i) for i in
                                                           range(term_index.MOMENTS)]
    assert "typed" not in {m.word for m in plain}
    assert "typed" in {m.word for m in term_index.moments_of(cast(*events))}


def test_a_broken_line_is_skipped_not_fatal() -> None:
    data = cast((1.0, "o", "before ")) + b"[not json\n" + b'[2.0, "o", "after"]\n'
    assert {m.word for m in term_index.moments_of(data)} == {"before", "after"}


def test_query_words_follow_the_index_rules() -> None:
    assert term_index.normalise_query("Shred  secret.txt \x1b[0m") == [
        "shred", "secret.txt", "secret", "txt"]
    assert term_index.normalise_query("a !") == []


def test_hits_need_every_word_and_a_prefix_matches_literally(tmp_path: Path) -> None:
    import sqlalchemy as sa

    from backline.relay.blobs import BlobStore
    from backline.relay.schema import metadata

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    metadata.create_all(engine)
    blobs = BlobStore(tmp_path / "blobs")
    for sid, text in (("s1", "ping printer_1 ok"), ("s2", "ping printers down"),
                      ("s3", "printer% oops")):
        digest = blobs.put(cast((2.0, "o", text)))
        term_index.index_recording(engine, blobs, recording_id=f"r{sid}", session_id=sid,
                                   sha256=digest, keystrokes=False)
    assert set(term_index.hits(engine, ["ping"])) == {"s1", "s2"}
    assert set(term_index.hits(engine, ["ping", "down"])) == {"s2"}
    assert set(term_index.hits(engine, ["print*"])) == {"s1", "s2", "s3"}
    # "_" and "%" in a prefix are themselves, not LIKE's wildcards
    assert set(term_index.hits(engine, ["printer_*"])) == {"s1"}
    assert term_index.hits(engine, ["ping"])["s2"] == [
        {"recording": "rs2", "at": 2.0, "word": "ping"}]
    # indexing again replaces, never duplicates
    digest = blobs.put(cast((3.0, "o", "ping")))
    term_index.index_recording(engine, blobs, recording_id="rs2", session_id="s2",
                               sha256=digest, keystrokes=False)
    assert term_index.hits(engine, ["ping"])["s2"] == [
        {"recording": "rs2", "at": 3.0, "word": "ping"}]
    assert term_index.hits(engine, ["down"]) == {}


def test_a_common_word_in_sessions_one_cannot_see_never_hides_a_visible_one(
        tmp_path: Path, monkeypatch: object) -> None:
    """5,001 sessions of a group the technician may not see hold "ping" 32 times each
    (more rows than any per-word cap, and more sessions than any per-word limit), sorted
    before the one visible session: the search still finds it, and says when more
    sessions matched than it returned."""
    from types import SimpleNamespace

    import pytest
    import sqlalchemy as sa

    from backline.relay.api import timeline as api
    from backline.relay.schema import metadata, recording_words, support_sessions

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    metadata.create_all(engine)

    def session(sid: str, group: int, at: float) -> dict[str, object]:
        return {"id": sid, "mode": "attended", "agent_id": "ag", "group_id": group,
                "technician": "other", "opened_by": "user:other", "reason": "", "ticket": "",
                "capabilities": "shell", "state": "closed", "node": "", "created_at": at}

    hidden = [f"a{i:05d}" for i in range(5001)]
    with engine.begin() as conn:
        conn.execute(support_sessions.insert(),
                     [session(sid, 2, 1000.0 + i) for i, sid in enumerate(hidden)])
        conn.execute(support_sessions.insert(), [session("zvisible", 1, 10.0),
                                                 session("zvisible2", 1, 20.0)])
        conn.execute(recording_words.insert(), [
            {"word": "ping", "recording_id": f"r{sid}-{k // 8}", "session_id": sid,
             "at": float(k)} for sid in hidden for k in range(32)])
        conn.execute(recording_words.insert(), [
            {"word": w, "recording_id": f"r{sid}", "session_id": sid, "at": at}
            for sid in ("zvisible", "zvisible2") for w, at in (("ping", 5.0), ("down", 6.0))])
    relay = SimpleNamespace(engine=engine)
    who = SimpleNamespace(user=SimpleNamespace(username="tech"))
    monkeypatch.setattr(api, "visible_group_ids", lambda relay, who: {1})  # type: ignore[attr-defined]

    out, words, truncated = api.search_sessions(relay, who, api.SearchQuery(text="ping"))
    assert words == ["ping"]
    assert [s["id"] for s in out] == ["zvisible2", "zvisible"] and not truncated
    assert out[0]["hits"] == [{"recording": "rzvisible2", "at": 5.0, "word": "ping"}]
    out, _, truncated = api.search_sessions(relay, who,
                                            api.SearchQuery(text="ping down", limit=1))
    assert [s["id"] for s in out] == ["zvisible2"] and truncated
    # An admin (sees all) gets the newest 50 of 5,003, told there are more; each hidden
    # session's moments are its first 20 (api.HITS), not 32.
    monkeypatch.setattr(api, "visible_group_ids", lambda relay, who: None)  # type: ignore[attr-defined]
    out, _, truncated = api.search_sessions(relay, who, api.SearchQuery(text="pi*"))
    assert len(out) == 50 and truncated and out[0]["id"] == hidden[-1]
    assert [h["at"] for h in out[0]["hits"]] == [float(k) for k in range(api.HITS)]
    with pytest.raises(Exception):
        api.search_sessions(relay, who, api.SearchQuery(text="!"))
