"""Flood aggregation: the first few refusals of a source are written, the rest of the
window become one summary; many sources fold into one; nothing is lost on flush."""

from __future__ import annotations

from typing import Any

from backline.relay.audit_floods import FloodAggregator


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**kw: Any) -> tuple[FloodAggregator, list[tuple[str, str, str, dict[str, Any]]],
                             Clock]:
    rows: list[tuple[str, str, str, dict[str, Any]]] = []
    clock = Clock()
    agg = FloodAggregator(lambda a, act, t="", **d: rows.append((a, act, t, d)),
                          clock=clock, wall=clock, **kw)
    return agg, rows, clock


def test_burst_then_one_summary_per_window() -> None:
    agg, rows, clock = make(burst=3, window_s=60)
    for i in range(300):
        agg.record("10.0.0.1", "anonymous@10.0.0.1", "agent.enroll.refused",
                   reason="bad_token" if i % 2 else "bad_json", address="10.0.0.1")
    assert len(rows) == 3 and agg.pending() == 297
    clock.now += 61
    agg.record("10.0.0.1", "anonymous@10.0.0.1", "agent.enroll.refused", reason="x",
               address="10.0.0.1")  # a new window: the old one's summary is written first
    summary = rows[3]
    assert summary[1] == "agent.enroll.refused" and summary[3]["aggregated"] is True
    assert summary[3]["count"] == 297
    assert sum(summary[3]["reasons"].values()) == 297
    assert summary[3]["addresses"] == {"10.0.0.1": 297}
    assert rows[4][3] == {"reason": "x", "address": "10.0.0.1"}


def test_sources_are_separate_and_overflow_folds() -> None:
    agg, rows, _ = make(burst=1, max_keys=4)
    for n in range(100):
        agg.record(f"a{n}", f"anonymous@a{n}", "session.join.refused", address=f"a{n}")
    # four sources had their own window (one row each); the other 96 folded into '*'
    assert len(rows) == 4 and agg.pending() == 96
    agg.flush_all()
    assert rows[-1][3]["count"] == 96 and rows[-1][3]["source"] == "*"
    assert len(rows[-1][3]["addresses"]) == 10  # a bounded sample
    assert agg.pending() == 0


def test_flush_all_writes_every_pending_summary() -> None:
    agg, rows, _ = make(burst=0)
    agg.record("agent:x", "agent:x", "agent.health.alert", "agent:x", reason="critical")
    agg.record("agent:y", "agent:y", "agent.health.alert", "agent:y")
    assert rows == []
    agg.flush_all()
    assert sorted(r[3]["source"] for r in rows) == ["agent:x", "agent:y"]


def test_expired_windows_are_swept_so_new_sources_keep_their_rows() -> None:
    # 100 one-off sources (below the burst: no timer) fill the table; an hour later a
    # new source's refusals must be written on their own, not folded into '*'.
    agg, rows, clock = make(max_keys=100)
    for i in range(100):
        agg.record(f"192.0.2.{i}", f"anonymous@192.0.2.{i}", "request.refused", "/x")
    clock.now += 3600
    rows.clear()
    for _ in range(3):
        assert agg.record("198.51.100.7", "anonymous@198.51.100.7", "auth.login.failed",
                          "user:admin", reason="bad_password") is True
    assert len(rows) == 3 and all(r[0] == "anonymous@198.51.100.7" for r in rows)
    assert len(agg._windows) == 1


def test_overflow_bucket_closes_when_its_window_ends() -> None:
    agg, rows, clock = make(burst=1, max_keys=1)
    agg.record("a", "anonymous@a", "x.refused")
    agg.record("b", "anonymous@b", "x.refused")  # folded into '*'
    assert agg.pending() == 1
    clock.now += 61
    agg.record("c", "anonymous@c", "x.refused")  # sweeps 'a' and '*' first
    assert any(r[3].get("source") == "*" and r[3]["count"] == 1 for r in rows)
    assert rows[-1][0] == "anonymous@c" and agg.pending() == 0


def test_an_ipv6_slash_64_is_one_source() -> None:
    agg, rows, _ = make(burst=5)
    for i in range(50):
        agg.record(f"2001:db8:1:2::{i + 1:x}", f"anonymous@2001:db8:1:2::{i + 1:x}",
                   "agent.enroll.refused", address=f"2001:db8:1:2::{i + 1:x}")
    assert len(rows) == 5 and agg.pending() == 45
    agg.record("agent:abc", "agent:abc", "agent.health.alert")  # not an address
    assert ("agent.health.alert", "agent:abc") in agg._windows
