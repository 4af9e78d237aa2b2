"""Audit details in log lines: secrets masked by name, facts shown as they are."""

from __future__ import annotations

from backline.relay.state import _loggable


def test_secret_names_are_masked_as_whole_words() -> None:
    details = {"password": "p", "new_password": "p", "totp_code": "123456", "code": "1",
               "csrf_token": "t", "token": "t", "cookie_secret": "s", "Signature": "x",
               "session-code": "123"}
    assert set(_loggable(details).values()) == {"***"}


def test_facts_that_only_look_like_secrets_are_shown() -> None:
    details = {"close_code": 4408, "totp": True, "status_code": 500, "reason": "bad_code",
               "codename": "n", "address": "127.0.0.1", "exit_code": 1}
    assert _loggable(details) == details


def test_database_errors_do_not_show_bound_values() -> None:
    import pytest
    import sqlalchemy as sa

    from backline.relay.db import make_engine

    engine = make_engine("sqlite://")
    with engine.connect() as conn:
        conn.execute(sa.text("CREATE TABLE t (v TEXT UNIQUE)"))
        conn.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": "hunter2"})
        with pytest.raises(sa.exc.IntegrityError) as err:
            conn.execute(sa.text("INSERT INTO t VALUES (:v)"), {"v": "hunter2"})
    assert "hunter2" not in str(err.value)
