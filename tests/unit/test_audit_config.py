"""The proofs' settings (relay/config.py): a bad origin or sink is refused at load, named."""

from __future__ import annotations

from pathlib import Path

import pytest

from backline.relay import config


def load(tmp_path: Path, **overrides: object) -> config.RelayConfig:
    return config.load(overrides={"data_dir": tmp_path, **overrides}, environ={})


def test_good_settings_load(tmp_path: Path) -> None:
    cfg = load(tmp_path, audit_origin="example.org/backline",
               audit_checkpoint_sinks=[f"file:{tmp_path}/c.jsonl", "syslog+tls://h:6514"])
    assert cfg.audit_origin == "example.org/backline"
    env = config.load(overrides={"data_dir": tmp_path}, environ={
        "BACKLINE_AUDIT_CHECKPOINT_SINKS": f"file:{tmp_path}/a.jsonl,syslog+tcp://h:514"})
    assert env.audit_checkpoint_sinks == [f"file:{tmp_path}/a.jsonl", "syslog+tcp://h:514"]


@pytest.mark.parametrize(("setting", "value", "says"), [
    ("audit_origin", "two words", "without spaces or '+'"),
    ("audit_origin", "a+b", "without spaces or '+'"),
    ("audit_origin", "x" * 201, "1 to 200 characters"),
    ("audit_checkpoint_sinks", ["ftp://h/x"], "is not file:/path"),
    ("audit_checkpoint_sinks", ["file:relative.jsonl"], "must be absolute"),
])
def test_bad_settings_are_named(tmp_path: Path, setting: str, value: object, says: str) -> None:
    with pytest.raises(config.ConfigError, match=f".*{setting}.*") as caught:
        load(tmp_path, **{setting: value})
    assert says in str(caught.value)
