"""A public CA is no pin: refused as the relay's ``tls_ca_file`` and as an agent's
``--ca-file`` (``enroll`` and ``join``) unless explicitly allowed, with real relay and
agent processes.

Pinning a CA means trusting every certificate it issues for the relay's name. For a
private CA that is the operator's choice; for one the system trusts by default (ISRG
Root, say) it is anyone able to get a domain-validated certificate for that name. The
CA used here is read from this machine's default trust store.
"""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

from backline.common import enrollment
from backline.common.tlspin import spki_pin_der
from tests.harness import RELAY, AgentProcess, RelayProcess


def one_line(text: str) -> str:
    return " ".join(text.split())


def public_ca(tmp_path: Path) -> tuple[Path, str]:
    ders = ssl.create_default_context().get_ca_certs(binary_form=True)
    assert ders, "this machine's default trust store is empty"
    path = tmp_path / "public-ca.pem"
    path.write_text(ssl.DER_cert_to_PEM_cert(ders[0]))
    return path, spki_pin_der(ders[0])


def test_a_public_ca_is_refused_unless_allowed(tmp_path: Path) -> None:
    ca_file, ca_pin = public_ca(tmp_path)
    env = {"BACKLINE_TLS": "off", "BACKLINE_TLS_CA_FILE": str(ca_file)}
    relay = RelayProcess(tmp_path, env)
    # The relay refuses to serve (or to make tokens) with it.
    served = subprocess.run([RELAY, "serve"], env=relay.env, capture_output=True, text=True,
                            timeout=30)
    assert served.returncode == 2, served.stderr
    assert "is a public CA" in one_line(served.stderr), served.stderr
    assert "tls_ca_allow_public" in one_line(served.stderr)
    refused = relay.cli("token", "create", "-q", check=False)
    assert refused.returncode == 2 and "is a public CA" in one_line(refused.stderr)

    # Explicitly allowed: accepted, loudly.
    relay.env["BACKLINE_TLS_CA_ALLOW_PUBLIC"] = "true"
    init = relay.cli("init", check=False)
    assert init.returncode == 0, init.stderr
    assert "is a PUBLIC CA" in one_line(init.stderr)
    made = relay.cli("token", "create", "-q", check=False)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert ca_pin in enrollment.parse(token).pins

    # The agent refuses it too, before connecting, even in a token that pins it.
    agent = AgentProcess(tmp_path, "agent")
    r = agent.enroll(token, "--ca-file", str(ca_file))
    assert r.returncode == 2 and "is a public CA" in one_line(r.stderr), r.stderr
    assert "--allow-public-ca" in r.stderr and not agent.state_dir.joinpath(
        "enrollment.json").exists()
    # Allowed: it goes on to the relay (which does not answer TLS here).
    r = agent.enroll(token, "--ca-file", str(ca_file), "--allow-public-ca")
    assert r.returncode == 3 and "cannot reach the relay" in r.stderr, r.stderr
    assert "accepted (--allow-public-ca)" in one_line(r.stderr)

    join = ["join", "123-456-789", "--relay", "https://127.0.0.1:9", "--pin", ca_pin,
            "--ca-file", str(ca_file)]
    r = agent.cmd(*join)
    assert r.returncode == 2 and "is a public CA" in one_line(r.stderr), r.stderr
    r = agent.cmd(*join, "--allow-public-ca")
    assert r.returncode == 3, r.stderr  # unreachable: nothing listens there


def test_a_private_ca_is_accepted(tmp_path: Path) -> None:
    from tests.integration.test_tls_pinning import _ca

    _, ca_file = _ca(tmp_path, "private-ca")
    relay = RelayProcess(tmp_path, {"BACKLINE_TLS": "off", "BACKLINE_TLS_CA_FILE": str(ca_file)})
    init = relay.cli("init", check=False)
    assert init.returncode == 0 and "PUBLIC" not in init.stderr, init.stderr
