"""The running agent signs and checks signatures in a child process (agent/keychild.py),
so that it never imports cryptography: the child's signature is the one the agent
made in its own process before, byte for byte; a missing, garbled or foreign key
stops the agent; a child that cannot start or answers nonsense is an OSError (the
connection is retried); the child refuses what it does not understand."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from backline.agent import keychild
from backline.common import keys, pinset, protocol

PINS = ["sha256//" + "A" * 43 + "=", "sha256//" + "B" * 43 + "="]


def key_file(tmp_path: Path, openssh: bool = True) -> tuple[keys.PrivateKey, Path]:
    key = keys.generate()
    path = tmp_path / "identity_key"
    keys.save_private(key, path, openssh=openssh)
    return key, path


@pytest.mark.parametrize("openssh", [True, False])
def test_the_childs_signature_is_the_in_process_one(tmp_path: Path, openssh: bool) -> None:
    key, path = key_file(tmp_path, openssh)
    relay = protocol.RelayHandshake("cd" * 32)
    challenge = relay.challenge(1.0)
    payload = protocol.challenge_payload(challenge, "ag_" + "x" * 20, "cd" * 32)

    async def go() -> bytes:
        sign = await keychild.signer(path)
        return await sign(payload)

    signature = asyncio.run(go())
    assert signature == key.sign(payload)  # Ed25519 is deterministic
    answer = protocol.auth_answer("ag_" + "x" * 20, signature, "1")
    assert answer == protocol.answer_challenge(challenge, "ag_" + "x" * 20, key, "cd" * 32, "1")
    assert relay.verify(relay.receive_auth(answer), keys.public_raw(key))


def test_the_child_checks_the_pin_set_as_pinset_verify_does(tmp_path: Path) -> None:
    audit, _ = key_file(tmp_path)
    public = keys.public_raw(audit)
    good = pinset.sign(audit, 7, PINS, bind_leaf=True)

    def check(serial: int, pins: list[str], signature: bytes, bind_leaf: bool) -> bool:
        verdict = asyncio.run(keychild.verify_pinset(public, serial, pins, signature,
                                                     bind_leaf))
        assert verdict == pinset.verify(public, serial, pins, signature, bind_leaf)
        return verdict

    assert check(7, PINS, good, True)
    assert not check(7, PINS, good, False)  # the binding is signed
    assert not check(8, PINS, good, True)  # so is the serial
    assert not check(7, PINS[::-1], good, True)  # and the order
    assert not check(7, PINS, bytes(64), True)
    assert not check(7, PINS, good[:10], True)
    assert not check(0, PINS, pinset.sign(audit, 0, PINS), False)  # no serial 0


def test_an_unusable_key_stops_the_agent(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(keychild.KeyUnusable, match="cannot be used"):
        asyncio.run(keychild.signer(missing))
    garbled = tmp_path / "garbled"
    garbled.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n")
    with pytest.raises(keychild.KeyUnusable):
        asyncio.run(keychild.check_key(garbled))
    ecdsa = tmp_path / "ecdsa"
    ecdsa.write_bytes(generate_private_key(SECP256R1()).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    with pytest.raises(keychild.KeyUnusable, match="not an Ed25519"):
        asyncio.run(keychild.sign(ecdsa, b"payload"))
    assert not issubclass(keychild.KeyUnusable, OSError)  # not retried as a lost connection


def test_a_child_that_does_not_answer_is_an_oserror(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = key_file(tmp_path)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    with pytest.raises(keychild.KeyChildFailed, match="could not start"):
        asyncio.run(keychild.sign(path, b"payload"))
    fake = tmp_path / "fake-python"
    for script in ("exit 0", "echo '{\"signature\": \"AAAA\"}'", "echo nonsense; exit 3",
                   "head -c 5000 /dev/zero | tr '\\0' x"):
        fake.write_text(f"#!/bin/sh\ncat >/dev/null\n{script}\n")
        fake.chmod(0o755)
        monkeypatch.setattr(sys, "executable", str(fake))
        with pytest.raises(keychild.KeyChildFailed):
            asyncio.run(keychild.sign(path, b"payload"))
    fake.write_text('#!/bin/sh\ncat >/dev/null\necho \'{"valid": "yes"}\'\n')
    with pytest.raises(keychild.KeyChildFailed, match="no verdict"):
        asyncio.run(keychild.verify_pinset(b"k" * 32, 1, PINS, bytes(64), False))
    fake.write_text("#!/bin/sh\nsleep 30\n")
    monkeypatch.setattr(keychild, "TIMEOUT_S", 0.5)
    with pytest.raises(keychild.KeyChildFailed, match="no answer"):
        asyncio.run(keychild.sign(path, b"payload"))


def child(data: bytes) -> tuple[int, dict[str, object]]:
    r = subprocess.run([sys.executable, "-m", "backline.agent.keychild"], input=data,
                       capture_output=True, timeout=60)
    answer: dict[str, object] = json.loads(r.stdout)
    return r.returncode, answer


def test_the_child_refuses_what_it_does_not_understand(tmp_path: Path) -> None:
    _, path = key_file(tmp_path)
    assert child(b"not json")[0] == 2
    assert child(b"[1, 2]")[0] == 2
    assert child(json.dumps({"op": "decrypt", "key": str(path)}).encode()) == (
        2, {"error": "unknown op"})
    assert child(json.dumps({"op": "sign", "key": ""}).encode())[0] == 2
    assert child(json.dumps({"op": "sign", "key": str(path), "payload": "%%"}).encode())[0] == 2
    code, answer = child(b" " * (keychild.MAX_REQUEST + 1))
    assert code == 2 and "too large" in str(answer["error"])
    assert child(json.dumps({"op": "pinset", "public": "AA==", "serial": "1", "pins": PINS,
                             "signature": "", "bind_leaf": False}).encode())[0] == 2
    code, answer = child(json.dumps({"op": "check", "key": str(path)}).encode())
    assert (code, answer) == (0, {"ok": True})
    with pytest.raises(ValueError, match="over"):
        asyncio.run(keychild.sign(path, b"x" * keychild.MAX_REQUEST))


def test_backline_agent_run_with_an_unusable_key_says_so_and_stops(tmp_path: Path) -> None:
    from backline.agent.state import Enrollment, StateDir

    state = StateDir(tmp_path / "state")
    state.save_enrollment(keys.generate(), Enrollment(
        agent_id="ag_" + "x" * 20, relay_url="https://127.0.0.1:9", group="default",
        control_url="wss://127.0.0.1:9/agent/connect", ca_public_key="",
        audit_public_key="", pins=PINS))
    state.key_path.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----\ngarbled\n")
    agent = Path(sys.executable).parent / "backline-agent"
    r = subprocess.run([str(agent), "--state-dir", str(state.root), "run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 6, r.stderr
    assert "identity key" in r.stderr and "cannot be used" in r.stderr
    assert "enroll --force" in r.stderr and "Traceback" not in r.stderr
    assert state.read_status() is None  # it never went on to connect


def test_the_running_agents_modules_do_not_import_cryptography() -> None:
    """What ``backline-agent run`` imports before its first connection (a fresh
    interpreter, so no other test's imports hide one): no cryptography."""
    probe = ("import sys, backline.agent.cli, backline.agent.control, backline.agent.pinsync;"
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('cryptography', 'asyncssh', 'psutil')))")
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
