"""``self_service_runs`` keeps the key of every self-service run an agent reported, so
that a report sent again is a ``duplicate`` (relay/fixes/self_service.py). A key is
needed only while a report of its run is still taken (``MAX_AGE_S`` after the run
started, then ``too_old``, by the agent's clock: a year is kept): the relay's
housekeeping forgets older keys, else the table grows by every run ever reported.
On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from backline.relay import config
from backline.relay.fixes import self_service
from backline.relay.schema import self_service_runs
from backline.relay.state import open_relay
from tests.databases import TestDatabase


def test_keys_older_than_a_report_is_taken_are_forgotten(
        tmp_path: Path, database: TestDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    relay = open_relay(config.load(overrides={"data_dir": tmp_path / "r",
                                              "database_url": database.url or None},
                                   environ={}))
    now = 1_900_000_000.0
    monkeypatch.setattr(self_service, "PRUNE_BATCH", 2)  # in several transactions
    ages = {**{f"sr_old_enough_to_forget_{i}": self_service.KEEP_RUN_KEYS_S + 60 + i
               for i in range(5)},
            "sr_still_within_the_age": self_service.KEEP_RUN_KEYS_S - 60,
            "sr_recorded_a_minute_ago": 60}
    try:
        with relay.engine.begin() as db:
            db.execute(self_service_runs.insert(), [
                {"agent_id": "ag_one", "run_id": run, "fix_id": "disk-clean", "version": 1,
                 "recorded_at": now - age} for run, age in ages.items()])
        assert self_service.KEEP_RUN_KEYS_S > 10 * self_service.MAX_AGE_S
        assert self_service.prune(relay.engine, now) == 5
        with relay.engine.connect() as db:
            left = set(db.execute(sa.select(self_service_runs.c.run_id)).scalars())
        assert left == {"sr_still_within_the_age", "sr_recorded_a_minute_ago"}
        assert self_service.prune(relay.engine, now) == 0
    finally:
        relay.engine.dispose()
