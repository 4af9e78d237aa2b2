"""Acceptance 6, agents' side: key (SPKI) and CA pinning with real relay and agent
processes.

- a rotated certificate (same key) and a changed key (the announced next one) keep a
  real enrolled agent connected across a reload and a restart;
- an agent holding a legacy certificate pin records the key's pin after one connection;
- a relay with another key is refused by the agent, with a clear message;
- an agent enrolled with a pinned CA keeps trusting a renewed chain with a new leaf
  key, and refuses another CA's.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import signal
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backline.common import enrollment
from backline.common.tlspin import spki_pin_der
from backline.relay import datadir
from tests.harness import (
    AGENT,
    AgentProcess,
    RelayProcess,
    audit_actions,
    free_port,
    served,
    wait_for,
)


def state(agent: AgentProcess) -> dict[str, object]:
    data: dict[str, object] = json.loads((agent.state_dir / "enrollment.json").read_text())
    return data


def status(agent: AgentProcess) -> dict[str, object]:
    try:
        data: dict[str, object] = json.loads((agent.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return {}
    return data


def online_since(agent: AgentProcess, after: float) -> bool:
    s = status(agent)
    return s.get("state") == "online" and float(s.get("since", 0)) > after  # type: ignore[arg-type]


def connects(relay: RelayProcess, agent_id: str) -> int:
    return sum(1 for e in audit_actions(relay)
               if e["action"] == "agent.connect" and e["target"] == f"agent:{agent_id}")


def test_rotated_certificate_and_next_key_keep_an_enrolled_agent(tmp_path: Path,
                                                                 relay: RelayProcess) -> None:
    leaf1, pin1 = served(relay)
    token = enrollment.parse(relay.token())
    assert token.pins[0] == pin1 and len(token.pins) == 2  # the key, then the next key
    agent = AgentProcess(tmp_path, "kept")
    assert agent.enroll(relay.token()).returncode == 0
    assert state(agent)["pins"] == list(token.pins)
    try:
        t0 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t0), 20, "the agent online")

        # Same key: a new certificate, served after SIGHUP, with no restart.
        out = relay.cli("cert", "rotate").stdout
        assert "unchanged: agents keep working" in out
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served(relay)[0] != leaf1, 10, "the rotated certificate served")
        leaf2, pin2 = served(relay)
        assert pin2 == pin1
        span = datadir.load_cert(relay.data_dir / "tls.crt")
        assert span.not_valid_after_utc.timestamp() - time.time() > 360 * 86400
        # Every agent reconnects (the relay restarts): the new certificate is trusted.
        relay.stop()
        t1 = time.time()
        relay.start()
        wait_for(lambda: online_since(agent, t1), 30, "the agent back online", every=0.3)

        # The next key, which the token announced, becomes the key.
        rotated = relay.cli("cert", "rotate", "--new-key", "--yes")
        assert "(changed)" in rotated.stdout, rotated.stdout + rotated.stderr
        relay.stop()
        t2 = time.time()
        relay.start()
        leaf3, pin3 = served(relay)
        assert pin3 == token.pins[1] and leaf3 not in (leaf1, leaf2)
        wait_for(lambda: online_since(agent, t2), 30, "the agent online on the new key",
                 every=0.3)
        assert agent.proc is not None and agent.proc.poll() is None
        # And a token made now announces the new key and a new next one.
        fresh = enrollment.parse(relay.token())
        assert fresh.pins[0] == pin3 and fresh.pins[1] not in token.pins
    finally:
        assert agent.stop() == 0
    actions = [e["action"] for e in audit_actions(relay)]
    assert actions.count("relay.cert_rotate") == 2 and "relay.tls_reload" in actions
    assert connects(relay, agent.agent_id) >= 3
    assert relay.cli("audit", "verify", check=False).returncode == 0


def test_legacy_certificate_pin_migrates_to_the_key_pin(tmp_path: Path,
                                                        relay: RelayProcess) -> None:
    leaf, pin = served(relay)
    # An agent enrolled before SPKI pins: its state holds the certificate's hash only.
    agent = AgentProcess(tmp_path, "old")
    assert agent.enroll(relay.token()).returncode == 0
    legacy = state(agent)
    legacy.pop("pins")
    legacy.pop("ca_pem")
    legacy.pop("pins_serial")
    legacy["fingerprint"] = leaf
    (agent.state_dir / "enrollment.json").write_text(json.dumps(legacy))
    assert "legacy" in agent.cmd("status").stdout
    try:
        t0 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t0), 20, "the legacy agent online")
        # The key's pin replaces the certificate's, then GET /agent/pins adds the
        # relay's next key, which a token from before it existed did not carry.
        relay_pins = list(enrollment.parse(relay.token()).pins)
        assert relay_pins[0] == pin
        wait_for(lambda: state(agent).get("pins") == relay_pins, 10, "the relay's pins")
        assert state(agent)["fingerprint"] == ""
        # From now on it is trusted, and bound, by keys: a new certificate, even for the
        # next key (which it learnt since), does not matter.
        relay.cli("cert", "rotate", "--new-key", "--yes")
        relay.stop()
        t2 = time.time()
        relay.start()
        assert served(relay)[0] != leaf and served(relay)[1] == relay_pins[1]
        wait_for(lambda: online_since(agent, t2), 30, "the migrated agent on the new key",
                 every=0.3)
    finally:
        assert agent.stop() == 0
    log = agent.log_path.read_text()
    assert "now pinning the relay's key" in log and "the relay's pins are now" in log

    # A token in the old format (the certificate's hash as "f") still enrolls, and the
    # agent pins the key it saw.
    new = enrollment.parse(relay.token())
    pin = new.pins[0]
    old_format = enrollment.EnrollmentToken(new.relay_url, served(relay)[0], new.secret)
    assert '"f"' in base64.urlsafe_b64decode(old_format.encode()[4:] + "==").decode()
    second = AgentProcess(tmp_path, "old-token")
    r = second.enroll(old_format.encode())
    assert r.returncode == 0, r.stderr
    assert state(second)["pins"] == [pin] and state(second)["fingerprint"] == ""


def test_agent_refuses_a_relay_with_another_key(tmp_path: Path, relay: RelayProcess) -> None:
    _, pin = served(relay)
    agent = AgentProcess(tmp_path, "wary")
    assert agent.enroll(relay.token()).returncode == 0
    agent_id = agent.agent_id
    try:
        t0 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t0), 20, "the agent online")
        before = connects(relay, agent_id)
        # An impostor at the relay's address: the same data, but other keys (current and
        # next), as a stolen database with a fresh certificate would give.
        relay.stop()
        (relay.data_dir / "tls_next.key").unlink()
        datadir.write_self_signed(relay.data_dir / "tls.crt", relay.data_dir / "tls.key",
                                  ["127.0.0.1"])
        relay.start()
        assert served(relay)[1] != pin
        wait_for(lambda: "does not match the pinned key" in str(status(agent).get(
            "last_error", "")), 30, "the agent to refuse the relay", every=0.3)
        assert status(agent)["state"] == "reconnecting"
        assert pin in str(status(agent)["last_error"])
        time.sleep(1)
        assert connects(relay, agent_id) == before, "the agent authenticated to an impostor"
        assert state(agent)["pins"][0] == pin  # type: ignore[index]
    finally:
        assert agent.stop() == 0
    assert "does not match the pinned key" in agent.log_path.read_text()
    # The attended-session command refuses it the same way, before sending the code.
    join = subprocess.run([AGENT, "join", "--relay", relay.url, "--pin", pin, "123-456-789"],
                          capture_output=True, text=True, timeout=30)
    assert join.returncode == 4 and "does not match the pinned key" in join.stderr
    bad = subprocess.run([AGENT, "join", "--relay", relay.url, "--pin", "sha256//nope",
                          "123-456-789"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "sha256//" in bad.stderr


# --- a CA-issued chain (a proxy's, or tls = "files") -------------------------------------


def _ca(tmp: Path, name: str) -> tuple[Any, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return (key, cert), path


def _issue(ca: Any, cert_path: Path, key_path: Path) -> None:
    """A leaf for 127.0.0.1 under ``ca``, with a key of its own (an ACME renewal that
    does not keep the key), written as the chain file a server serves."""
    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=20))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    datadir.write_key(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                          + ca_cert.public_bytes(serialization.Encoding.PEM))


class CaRelay(RelayProcess):
    """A relay serving a CA-issued chain (``tls = "files"``) and pinning the CA."""

    def __init__(self, root: Path, ca_file: Path, ca_pin: str) -> None:
        self.ca_file = ca_file
        self.cert_file, self.key_file = root / "chain.pem", root / "leaf.key"
        super().__init__(root, {"BACKLINE_TLS": "files",
                                "BACKLINE_TLS_CERT_FILE": str(root / "chain.pem"),
                                "BACKLINE_TLS_KEY_FILE": str(root / "leaf.key"),
                                "BACKLINE_TLS_PINS": ca_pin})

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def test_pinned_ca_survives_a_new_leaf_key_and_refuses_another_ca(tmp_path: Path) -> None:
    ca, ca_file = _ca(tmp_path, "proxy-ca")
    ca_pin = spki_pin_der(ca[1].public_bytes(serialization.Encoding.DER))
    relay = CaRelay(tmp_path, ca_file, ca_pin)
    _issue(ca, relay.cert_file, relay.key_file)
    relay.start()
    agent = AgentProcess(tmp_path, "behind-proxy")
    try:
        token = relay.token()
        assert ca_pin in enrollment.parse(token).pins
        # A CA file whose key the token does not pin is refused before connecting.
        _, stranger_file = _ca(tmp_path, "stranger-ca")
        r = agent.enroll(token, "--ca-file", str(stranger_file))
        assert r.returncode == 5 and "not one the token pins" in r.stderr, r.stderr
        r = agent.enroll(token, "--ca-file", str(ca_file))
        assert r.returncode == 0, r.stderr
        assert state(agent)["ca_pem"] == ca_file.read_text()
        t0 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t0), 20, "the agent online through the CA")

        # The certificate is renewed with a new key by the same CA: reloaded, then every
        # agent reconnects (the relay restarts) and still trusts it.
        _, key1 = served(relay)
        _issue(ca, relay.cert_file, relay.key_file)
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served(relay)[1] != key1, 10, "the renewed chain served")
        relay.stop()
        t1 = time.time()
        relay.start()
        wait_for(lambda: online_since(agent, t1), 30, "the agent online after renewal",
                 every=0.3)

        # Another CA's chain for the same address: refused, and nothing authenticated.
        other, _ = _ca(tmp_path, "other-ca")
        before = connects(relay, agent.agent_id)
        relay.stop()
        _issue(other, relay.cert_file, relay.key_file)
        relay.ca_file = tmp_path / "other-ca.pem"
        relay.start()
        wait_for(lambda: "the pinned CA did not sign" in str(status(agent).get(
            "last_error", "")), 30, "the agent to refuse the other CA", every=0.3)
        assert connects(relay, agent.agent_id) == before
    finally:
        assert agent.stop() == 0
        relay.stop()


def test_announced_pins_are_bounded_and_must_keep_the_trusted_key(tmp_path: Path) -> None:
    """``GET /agent/pins`` answers the agent does not adopt (agent/pinsync.py), from a
    TLS server holding the key the agent pins."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    datadir.write_self_signed(cert, key, ["127.0.0.1"])
    pin = datadir.pem_spki_pin(cert)
    other = "sha256//" + base64.b64encode(b"o" * 32).decode()
    answers = {
        "drops the trusted key": json.dumps({"pins": [other]}).encode(),
        "too many": json.dumps({"pins": [pin, other, other[:-2] + "B=", other[:-2] + "C=",
                                         other[:-2] + "D="]}).encode(),
        "not SPKI": json.dumps({"pins": [pin, "ab" * 32]}).encode(),
        "huge": json.dumps({"pins": [pin], "pad": "x" * 20_000}).encode(),
        "not JSON": b"<html>",
        "404": None,
    }
    from backline.agent import pinsync
    from backline.agent.state import Enrollment, StateDir

    async def scenario() -> dict[str, list[str]]:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        current: list[bytes | None] = [None]

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = current[0]
            head = b"HTTP/1.1 200 OK" if body is not None else b"HTTP/1.1 404 Not Found"
            writer.write(head + b"\r\nConnection: close\r\n\r\n" + (body or b""))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        store = StateDir(tmp_path / "agent")
        store.prepare()
        base = Enrollment(agent_id="ag_" + "a" * 20, relay_url=f"https://127.0.0.1:{port}",
                          control_url="wss://x/agent/connect", group="g", ca_public_key="",
                          audit_public_key="", pins=[pin])
        out = {}
        async with server:
            for name, body in answers.items():
                current[0] = body
                out[name] = (await pinsync.sync(store, base)).pins
            current[0] = json.dumps({"pins": [pin, other]}).encode()
            out["adopted"] = (await pinsync.sync(store, base)).pins
        return out

    result = asyncio.run(scenario())
    for name in answers:
        assert result[name] == [pin], name
    assert result["adopted"] == [pin, other]
    assert json.loads((tmp_path / "agent" / "enrollment.json").read_text())["pins"] == [
        pin, other]


def test_ca_mode_binds_the_served_key_so_another_certificate_of_the_ca_cannot_relay(
        tmp_path: Path) -> None:
    """A relay that ends TLS itself says so in its signed pin set; an agent trusting it
    by a CA then binds the handshake to the key it was served. A server with another
    certificate from the same CA that relays the handshake to the relay is refused."""
    import threading

    from websockets.asyncio.client import connect
    from websockets.asyncio.server import ServerConnection, serve

    ca, ca_file = _ca(tmp_path, "proxy-ca")
    ca_pin = spki_pin_der(ca[1].public_bytes(serialization.Encoding.DER))
    relay = CaRelay(tmp_path, ca_file, ca_pin)
    _issue(ca, relay.cert_file, relay.key_file)
    relay.start()
    agent = AgentProcess(tmp_path, "ca-agent")
    mitm_cert, mitm_key = tmp_path / "mitm.pem", tmp_path / "mitm.key"
    _issue(ca, mitm_cert, mitm_key)  # the same CA, the same name, another key
    try:
        assert agent.enroll(relay.token(), "--ca-file", str(ca_file)).returncode == 0
        t0 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t0) and state(agent).get("bind_leaf") is True,
                 20, "the agent to learn that the relay ends TLS itself")
        agent.stop()
        before = connects(relay, agent.agent_id)

        ready, done = threading.Event(), threading.Event()
        port = free_port()

        async def pipe(ws: ServerConnection) -> None:
            client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
            async with connect(f"wss://127.0.0.1:{relay.port}/agent/connect",
                               ssl=client_ctx) as upstream:
                async def down() -> None:
                    async for m in upstream:
                        await ws.send(m)

                task = asyncio.create_task(down())
                try:
                    async for m in ws:
                        await upstream.send(m)
                finally:
                    task.cancel()

        async def mitm() -> None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(mitm_cert, mitm_key)
            async with serve(pipe, "127.0.0.1", port, ssl=ctx):
                ready.set()
                await asyncio.to_thread(done.wait, 60)

        thread = threading.Thread(target=lambda: asyncio.run(mitm()), daemon=True)
        thread.start()
        assert ready.wait(10)
        moved = state(agent)
        moved["control_url"] = f"wss://127.0.0.1:{port}/agent/connect"
        (agent.state_dir / "enrollment.json").write_text(json.dumps(moved))
        try:
            agent.start()
            wait_for(lambda: sum(1 for e in audit_actions(relay)
                                 if e["action"] == "agent.auth.refused") >= 1, 20,
                     "the relay to refuse the relayed handshake")
        finally:
            agent.stop()
            done.set()
            thread.join(10)
        assert connects(relay, agent.agent_id) == before
    finally:
        agent.stop()
        relay.stop()
