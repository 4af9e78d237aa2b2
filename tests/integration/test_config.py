"""The relay's settings: file < environment < flags, and the mistakes refused at start."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from backline.relay import config as relay_config
from tests.harness import RELAY

FP = "AB:" * 31 + "AB"


def test_tls_off_needs_the_pins_agents_trust(tmp_path: Path) -> None:
    env = {"BACKLINE_DATA_DIR": str(tmp_path), "BACKLINE_TLS": "off"}
    with pytest.raises(relay_config.ConfigError, match=r"needs tls_pins .* or tls_ca_file"):
        relay_config.load(environ=env)
    pin = "sha256//" + "A" * 43 + "="
    cfg = relay_config.load(environ={**env, "BACKLINE_TLS_PINS": f"{pin}, {pin[:-2]}B="})
    assert cfg.tls_pins == [pin, pin[:-2] + "B="]
    for bad in ("sha256//short=", FP, "sha256//" + "!" * 43 + "="):
        with pytest.raises(relay_config.ConfigError, match="is not an SPKI pin"):
            relay_config.load(environ={**env, "BACKLINE_TLS_PINS": bad})
    with pytest.raises(relay_config.ConfigError, match="is not a file"):
        relay_config.load(environ={**env, "BACKLINE_TLS_CA_FILE": str(tmp_path / "no.pem")})
    # Legacy: the proxy certificate's hash alone still works.
    with pytest.raises(relay_config.ConfigError, match="64 hex digits"):
        relay_config.load(environ={**env, "BACKLINE_TLS_FINGERPRINT": "abc"})
    cfg = relay_config.load(environ={**env, "BACKLINE_TLS_FINGERPRINT": FP})
    assert cfg.tls == "off"


def test_file_then_environment_then_flags(tmp_path: Path) -> None:
    (tmp_path / "relay.toml").write_text('listen_port = 9000\nheartbeat_s = 20\n')
    env = {"BACKLINE_DATA_DIR": str(tmp_path), "BACKLINE_HEARTBEAT_S": "40"}
    cfg = relay_config.load(environ=env, overrides={"listen_port": 9100})
    assert (cfg.listen_port, cfg.heartbeat_s) == (9100, 40)
    (tmp_path / "relay.toml").write_text('lisen_port = 9000\n')
    with pytest.raises(relay_config.ConfigError, match="unknown setting 'lisen_port'"):
        relay_config.load(environ=env)
    (tmp_path / "relay.toml").write_text('heartbeat_s = 2\n')
    with pytest.raises(relay_config.ConfigError, match="heartbeat_s"):
        relay_config.load(environ=env | {"BACKLINE_HEARTBEAT_S": "2"})


def test_head_revision_is_the_newest_migration(tmp_path: Path) -> None:
    """``migrate`` skips Alembic when the database is at HEAD_REVISION: it must be
    the real head, or a new migration would never run."""
    from alembic.script import ScriptDirectory

    from backline.relay import db

    assert ScriptDirectory.from_config(db.alembic_config()).get_current_head() == \
        db.HEAD_REVISION
    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    assert db.current_revision(engine) is None
    db.migrate(engine)
    assert db.current_revision(engine) == db.HEAD_REVISION
    db.migrate(engine)  # already there: nothing to do
    engine.dispose()


def test_tls_engine_is_socket_or_loop(tmp_path: Path) -> None:
    env = {"BACKLINE_DATA_DIR": str(tmp_path)}
    assert relay_config.load(environ=env).tls_engine == "socket"
    assert relay_config.load(environ=env | {"BACKLINE_TLS_ENGINE": "loop"}).tls_engine == "loop"
    with pytest.raises(relay_config.ConfigError, match="tls_engine must be socket or loop"):
        relay_config.load(environ=env | {"BACKLINE_TLS_ENGINE": "openssl-please"})


def test_log_format_flood_window_and_first_frame_timeout(tmp_path: Path) -> None:
    env = {"BACKLINE_DATA_DIR": str(tmp_path)}
    cfg = relay_config.load(environ=env)
    assert (cfg.log_format, cfg.audit_flood_window_s, cfg.agent_first_frame_timeout_s) == (
        "text", 60.0, 10.0)
    cfg = relay_config.load(environ=env | {"BACKLINE_LOG_FORMAT": "json",
                                           "BACKLINE_AUDIT_FLOOD_WINDOW_S": "2.5",
                                           "BACKLINE_AGENT_FIRST_FRAME_TIMEOUT_S": "1"})
    assert (cfg.log_format, cfg.audit_flood_window_s, cfg.agent_first_frame_timeout_s) == (
        "json", 2.5, 1.0)
    for name, bad, says in (("LOG_FORMAT", "xml", "log_format must be text or json"),
                            ("AUDIT_FLOOD_WINDOW_S", "0", "audit_flood_window_s"),
                            ("AUDIT_FLOOD_WINDOW_S", "7200", "audit_flood_window_s"),
                            ("AGENT_FIRST_FRAME_TIMEOUT_S", "0.5", "agent_first_frame"),
                            ("AGENT_FIRST_FRAME_TIMEOUT_S", "61", "agent_first_frame")):
        with pytest.raises(relay_config.ConfigError, match=says):
            relay_config.load(environ=env | {f"BACKLINE_{name}": bad})


def test_serve_on_a_taken_port_says_so(tmp_path: Path) -> None:
    """The relay binds first of all; a taken port is a one-line error, not a traceback,
    and nothing is initialised."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        env = {**os.environ, "BACKLINE_DATA_DIR": str(tmp_path / "relay"),
               "BACKLINE_LISTEN_PORT": str(taken.getsockname()[1])}
        done = subprocess.run([RELAY, "serve"], env=env, capture_output=True, text=True,
                              timeout=60)
    finally:
        taken.close()
    assert done.returncode == 1
    assert "cannot listen on 127.0.0.1:" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "relay" / "relay.db").exists()


def test_serve_options_for_binding_early() -> None:
    from backline.relay.net.listening import _serve_options

    assert _serve_options([]) == {}
    assert _serve_options(["--port", "9443", "--host=::1"]) == {
        "listen_port": "9443", "listen_host": "::1"}
    assert _serve_options(["--data-dir", "/x", "--config=/y.toml"]) == {
        "data_dir": "/x", "config": "/y.toml"}
    # Anything else, and the launcher does not guess: the normal start binds.
    assert _serve_options(["--help"]) is None
    assert _serve_options(["--prot", "1"]) is None
    assert _serve_options(["--port"]) is None


def test_prebound_sockets_are_taken_only_for_their_address(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from backline.relay.net import listening

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    monkeypatch.setenv("BACKLINE_DATA_DIR", str(tmp_path))
    listening.prebind(["--port", str(port)])
    socks = listening.take("127.0.0.1", port)
    assert socks is not None and socks[0].getsockname() == ("127.0.0.1", port)
    assert listening.take("127.0.0.1", port) is None  # taken once
    for sock in socks:
        sock.close()
    listening.prebind(["--port", str(port)])
    assert listening.take("127.0.0.1", port + 1) is None  # another address: closed
    again = listening.bind("127.0.0.1", port)  # so the port is free again
    for sock in again:
        sock.close()
    listening.prebind(["--port", "not-a-port"])
    assert listening.take("127.0.0.1", port) is None
