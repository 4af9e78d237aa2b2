"""The relay CA issues certificates with only what a session needs: asyncssh would
otherwise permit every extension by default."""

from __future__ import annotations

import time
from pathlib import Path

import asyncssh

from backline.common import keys
from backline.relay.sshca import CLOCK_SKEW_S, RelayCA, host_key_from_raw

PERMITS = ("permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding",
           "permit-pty", "permit-user-rc")


def _ca(tmp_path: Path) -> RelayCA:
    keys.save_private(keys.generate(), tmp_path / "ca_key", openssh=True)
    return RelayCA(tmp_path / "ca_key")


def test_session_certificate_names_technician_and_agent_only(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    now = time.time()
    creds = ca.issue("alice", "ag_0123456789abcdef", now, now + 3600)
    cert = asyncssh.import_certificate(creds.certificate.export_certificate())
    assert cert._key_id == "alice"  # asyncssh keeps it private; it is what the wire says
    assert cert.principals == ["ag_0123456789abcdef"]
    assert cert.signing_key.export_public_key().decode().strip() == ca.public_line
    assert creds.valid_after == int(now) - CLOCK_SKEW_S
    assert creds.valid_before == int(now + 3600)
    assert not any(cert.options.get(p) for p in PERMITS), cert.options
    assert "force-command" not in cert.options and "source-address" not in cert.options
    assert creds.serial > 0 and creds.serial != ca.issue("alice", "ag_x", now, now + 1).serial


def test_pty_only_for_a_shell_session(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    now = time.time()
    cert = ca.issue("bob", "ag_0123456789abcdef", now, now + 60, pty=True).certificate
    options = asyncssh.import_certificate(cert.export_certificate()).options
    assert options.get("permit-pty") is True
    assert not any(options.get(p) for p in PERMITS if p != "permit-pty")


def test_host_key_from_the_enrolled_raw_key() -> None:
    key = keys.generate()
    host = host_key_from_raw(keys.public_raw(key))
    assert host.export_public_key().decode().split()[:2] == keys.public_openssh(key).split()[:2]
