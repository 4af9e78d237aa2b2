"""The offline approver's path, end to end with real processes: ``python -m
backline.common.fixes canonical`` -> ``ssh-keygen -Y sign -n backline-fix`` -> the
agent's rule accepts it; the same from the relay's JSON; and refusals exit non-zero."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from backline.common.fixes import (
    FixTrust,
    canonical_bytes,
    check_signatures,
    digest,
    load_manifest,
    sign,
)
from backline.common.fixes.signing import generate_key

KEYGEN = "/usr/bin/ssh-keygen"
TOML = '''
id = "clear-tmp"
version = 2
title = "Clear old files in a temp folder"
platforms = ["linux"]
interpreter = "sh"
script_file = "clear-tmp.sh"
timeout_s = 60
risk = "medium"
[parameters.DAYS]
type = "integer"
min = 1
max = 365
default = 7
'''


def run(*args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=data, capture_output=True, timeout=60)


def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run(sys.executable, "-m", "backline.common.fixes", *args)


def test_offline_signing_with_ssh_keygen(tmp_path: Path) -> None:
    (tmp_path / "clear-tmp.sh").write_text('find /tmp/x -mtime +"$BACKLINE_PARAM_DAYS" -delete\n')
    manifest = tmp_path / "clear-tmp.toml"
    manifest.write_text(TOML)
    m = load_manifest(manifest)

    done = cli("digest", str(manifest))
    assert done.returncode == 0 and done.stdout.decode().strip() == digest(m)
    canonical = cli("canonical", str(manifest)).stdout
    assert canonical == canonical_bytes(m)

    run(KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "approver", "-f",
        str(tmp_path / "approver"))
    signed = run(KEYGEN, "-Y", "sign", "-n", "backline-fix", "-f", str(tmp_path / "approver"),
                 data=canonical)
    assert signed.returncode == 0, signed.stderr
    (tmp_path / "fix.sig").write_bytes(signed.stdout)
    offline = (tmp_path / "approver.pub").read_text().strip()

    ok = cli("check", str(manifest), str(tmp_path / "fix.sig"), str(tmp_path / "approver.pub"))
    assert ok.returncode == 0 and b"good signature by SHA256:" in ok.stdout

    relay_priv, relay_pub = generate_key("relay")
    trust = FixTrust((relay_pub,), (offline,), 1)
    sigs = [sign(canonical, relay_priv), signed.stdout.decode()]
    assert check_signatures(m, sigs, trust).ok

    # the same from what the relay serves (GET /fixes/{id}/{version})
    served = tmp_path / "served.json"
    served.write_text(json.dumps({"manifest": m.as_dict(), "digest": digest(m)}))
    assert cli("canonical", str(served)).stdout == canonical

    # another version's bytes: the offline signature no longer checks
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**m.as_dict(), "version": 3}))
    bad = cli("check", str(other), str(tmp_path / "fix.sig"), str(tmp_path / "approver.pub"))
    assert bad.returncode == 1 and b"does NOT verify" in bad.stderr


def test_cli_refusals(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('id = "X"\n')
    done = cli("digest", str(tmp_path / "bad.toml"))
    assert done.returncode == 2 and done.stderr.startswith(b"error: version: missing")
    (tmp_path / "bad.json").write_text("{")
    assert cli("digest", str(tmp_path / "bad.json")).returncode == 2
    assert cli("digest", str(tmp_path / "missing.toml")).returncode == 2
