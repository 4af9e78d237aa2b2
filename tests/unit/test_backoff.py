"""The agent's reconnect backoff: full jitter, capped, and reset by a stable link."""

from __future__ import annotations

from backline.agent.control import Backoff


def test_delays_are_jittered_within_the_doubling_cap() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0)
    for attempt, bound in ((0, 1.0), (3, 8.0), (6, 60.0), (500, 60.0)):
        delays = [b.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= bound for d in delays)
        assert max(delays) > bound / 2  # spread over the range, not pinned low


def test_attempts_count_up_until_a_connection_lasts() -> None:
    b = Backoff(base_s=1.0, cap_s=60.0, stable_s=60.0)
    attempt = 0
    for expected in (1, 2, 3):
        delay, attempt = b.after(attempt, None)  # never connected
        assert attempt == expected
    _, attempt = b.after(attempt, 5.0)  # flapping: keeps counting
    assert attempt == 4
    delay, attempt = b.after(attempt, 3600.0)  # an hour up: back to the start
    assert attempt == 1 and 0 <= delay <= 1.0
