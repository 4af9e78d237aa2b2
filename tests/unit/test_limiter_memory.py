"""What the attempt tables cost in memory, measured (issue 10, finding 1; review 2).

An entry used to cost about 1 KiB (a dataclass with a ``deque`` in an
``OrderedDict``), and each table allowed 100,000 keys: several tables at their
ceiling were far above the relay's 200 MiB RSS goal. Each table is now sized to what
it can legitimately hold (``auth_limits.limiters``), and an entry is small; both are
measured here with ``tracemalloc``, every entry full (``limit`` failures) and every
key as long as a username may be (64 characters), the worst case.
"""

from __future__ import annotations

import tracemalloc

from backline.relay.auth_limits import MAX_KEYS, limiters
from backline.relay.config import RelayConfig
from backline.relay.ratelimit import OVERFLOW_KEY, AttemptLimiter

MiB = 1024 * 1024


def fill(limiter: AttemptLimiter, keys: int) -> None:
    for i in range(keys):
        key = f"{i:064d}"
        for _ in range(limiter.limit):
            limiter.fail(key)


def measured(limiter: AttemptLimiter, keys: int) -> int:
    """Bytes ``keys`` full entries add to ``limiter``."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(limiter, keys)
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_an_entry_costs_a_few_hundred_bytes() -> None:
    for limit in (5, 10, 20):
        per_entry = measured(AttemptLimiter(limit, 900, max_keys=5_000), 5_000) / 5_000
        # The key (113 bytes at 64 characters) and its dict slot, the slots object,
        # the array, 8 bytes a failure plus the array's growth: 380-520 bytes measured,
        # where the deque + OrderedDict entry cost about 1,000.
        assert per_entry < 400 + 12 * limit, (limit, per_entry)


def test_every_table_at_its_ceiling_together_stays_small() -> None:
    tables = limiters(RelayConfig())
    total, report = 0, {}
    for name, limiter in tables.items():
        used = measured(limiter, limiter.max_keys)
        assert len(limiter) == limiter.max_keys
        report[name] = (limiter.max_keys, used)
        total += used
    # Full: a new key shares the strict overflow entry, it does not evict a live one.
    account = tables["login_account"]
    assert account.reserve("newcomer") == OVERFLOW_KEY
    assert account.reserve(f"{0:064d}") is None
    assert all(n <= MAX_KEYS for n, _ in report.values())
    # The ceilings docs/security.md states for the default settings.
    assert {k: n for k, (n, _) in report.items()} == {
        "login_account": 1_064, "login_address": 1_064, "login_relay": 1,
        "login_device": 10_000, "reauth_user": 10_000, "code_address": 6_564,
        "code_first_tries": 1, "code_repeat": 1}
    assert total < 16 * MiB, report  # 11.3 MiB measured, of the 200 MiB RSS goal


def test_no_setting_makes_a_table_unbounded() -> None:
    tables = limiters(RelayConfig(login_failures_global=10_000_000,
                                  session_code_first_tries_global=10_000_000))
    assert max(t.max_keys for t in tables.values()) == MAX_KEYS


def test_malformed_join_requests_stay_within_the_code_lanes() -> None:
    """Counted like wrong codes, so no more addresses are held than the lanes let
    through: the per-address table's ceiling is never the limit that holds."""
    from backline.relay.auth_limits import JoinCodeLimits

    limits = JoinCodeLimits(RelayConfig(session_code_first_tries_global=30,
                                        session_code_failures_global=10))
    for i in range(5_000):
        limits.fail(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(limits.by_address) == 30  # the first-tries lane's budget, no more
    assert limits.by_address.max_keys > 30
