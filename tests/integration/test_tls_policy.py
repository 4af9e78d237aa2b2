"""Acceptance 6, the relay's side: its TLS policy, against live relay processes.

- sslyze (in its own venv, tests/sslyze_scan.py) finds the relay compliant with
  Mozilla's "intermediate" profile and resuming no TLS 1.2 session by ticket, in both
  TLS engines; a plain client cannot get a CBC suite or a TLS 1.2 ticket either;
- the self-signed certificate is within the profile; a near expiry is reported; a
  rotated pair that does not load is refused and the old one kept.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from backline.common import enrollment, tlspin
from backline.relay import datadir
from tests.harness import RelayProcess, audit_actions, served, wait_for

ROOT = Path(__file__).resolve().parents[2]
SSLYZE_PYTHON = ROOT / ".venv-sslyze" / "bin" / "python"
INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
}


@pytest.mark.parametrize("engine", ["socket", "loop"])
def test_sslyze_finds_mozilla_intermediate_and_no_tls12_tickets(tmp_path: Path,
                                                                engine: str) -> None:
    assert SSLYZE_PYTHON.exists(), "sslyze's venv is missing: run scripts/setup"
    relay = RelayProcess(tmp_path, {"BACKLINE_TLS_ENGINE": engine}).start()
    try:
        # The relay is its own trust anchor (agents trust its key pin): sslyze validates
        # the path against its certificate, then checks everything else as for any site.
        scan = subprocess.run(
            [str(SSLYZE_PYTHON), str(ROOT / "tests" / "sslyze_scan.py"), "127.0.0.1",
             str(relay.port), str(relay.data_dir / "tls.crt")],
            capture_output=True, text=True, timeout=120)
        assert scan.returncode == 0, scan.stdout + scan.stderr[-2000:]
        report = json.loads(scan.stdout)
        assert report["issues"] == {} and report["compliant"] is True, report
        assert report["tls12_ticket_resumption"] == "NOT_SUPPORTED", report
        assert report["tls12_ticket_successes"] == 0
        assert set(report["tls12_ciphers"]) <= INTERMEDIATE_TLS12, report
        assert not [c for c in report["tls12_ciphers"] if "CBC" in c or c.endswith("-SHA")]
        assert set(report["curves"]) <= {"X25519", "secp256r1", "secp384r1"}
        assert "X25519" in report["curves"], "X25519 is the group clients prefer"
        assert report["compression"] is False and report["client_renegotiation"] is False

        # The same without sslyze: a TLS 1.2 client offering only CBC suites is refused,
        # and a TLS 1.2 session gets no ticket.
        cbc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cbc.check_hostname, cbc.verify_mode = False, ssl.CERT_NONE
        cbc.maximum_version = ssl.TLSVersion.TLSv1_2
        cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384:AES128-SHA")
        with socket.create_connection(("127.0.0.1", relay.port), 5) as raw, \
                pytest.raises(ssl.SSLError):
            cbc.wrap_socket(raw).close()
        tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls12.check_hostname, tls12.verify_mode = False, ssl.CERT_NONE
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection(("127.0.0.1", relay.port), 5) as raw, \
                tls12.wrap_socket(raw) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert tls.recv(4096).startswith(b"HTTP/1.1 200")
            assert tls.version() == "TLSv1.2"
            assert tls.session is not None and not tls.session.has_ticket

        # This engine serves a rotated certificate after SIGHUP, under the same policy.
        leaf, pin = served(relay)
        relay.cli("cert", "rotate")
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served(relay)[0] != leaf, 10, "the rotated certificate served")
        assert served(relay)[1] == pin
        with socket.create_connection(("127.0.0.1", relay.port), 5) as raw, \
                pytest.raises(ssl.SSLError):
            cbc.wrap_socket(raw).close()
    finally:
        relay.stop()


def test_self_signed_certificate_within_the_profile(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    relay.cli("init")
    cert = datadir.load_cert(relay.data_dir / "tls.crt")
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span.days <= 365, span
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)




def test_near_expiry_is_reported_and_a_broken_pair_is_not_loaded(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path)
    relay.cli("init")
    key = datadir.load_key(relay.data_dir / "tls.key")
    datadir.write_self_signed(relay.data_dir / "tls.crt", relay.data_dir / "tls.key",
                              ["127.0.0.1"], key=key, days=10)
    relay.start()
    try:
        ready = httpx.get(relay.url + "/readyz", verify=relay.tls(), timeout=5).json()
        assert ready["tls_certificate_expiring"] is True
        assert 9 <= ready["tls_certificate_expires_in_days"] <= 10
        metrics = httpx.get(relay.url + "/metrics", verify=relay.tls(), timeout=5).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith("backline_tls_certificate_expiry_timestamp_seconds "))
        assert float(line.split()[1]) == pytest.approx(time.time() + 10 * 86400, abs=3600)
        assert "expires in 10 days" in relay.log_path.read_text()
        shown = relay.cli("cert", "show").stdout
        assert "in 10 days" in shown and "sha256//" in shown

        # A certificate whose key is not the one on disk: SIGHUP refuses it, audited,
        # and the relay keeps serving the pair it had.
        leaf = served(relay)
        good = (relay.data_dir / "tls.crt").read_bytes()
        other = tmp_path / "other"
        other.mkdir()
        datadir.write_self_signed(other / "tls.crt", other / "tls.key", ["127.0.0.1"])
        (relay.data_dir / "tls.crt").write_bytes((other / "tls.crt").read_bytes())
        assert relay.proc is not None
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "relay.tls_reload.refused" in
                 [e["action"] for e in audit_actions(relay)], 10, "the refused reload")
        assert served(relay) == leaf  # still the pair it had
        # Put right, and renewed for a year by `cert rotate`: no longer expiring.
        (relay.data_dir / "tls.crt").write_bytes(good)
        assert relay.healthy()
        relay.cli("cert", "rotate")
        relay.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: served(relay) != leaf, 10, "the renewed certificate served")
        ready = httpx.get(relay.url + "/readyz", verify=relay.tls(), timeout=5).json()
        assert ready["tls_certificate_expiring"] is False
        assert ready["tls_certificate_expires_in_days"] > 360
    finally:
        relay.stop()


def test_pins_and_tokens_are_validated() -> None:
    pin = "sha256//" + base64.b64encode(b"k" * 32).decode()
    assert tlspin.parse_pin(pin) == pin
    assert tlspin.parse_pin("AB:" * 31 + "AB") == "ab" * 32  # legacy, colons allowed
    for bad in ("sha256//" + base64.b64encode(b"k" * 31).decode(), "sha256//" + "*" * 44,
                "ab" * 31, "", "sha1//" + pin[8:]):
        with pytest.raises(tlspin.BadPin):
            tlspin.parse_pin(bad)
    secret = "et_0123456789abcdef." + "s" * 43

    def token(body: dict[str, object]) -> str:
        raw = json.dumps(body).encode()
        return "bl1-" + base64.urlsafe_b64encode(raw).decode().rstrip("=")

    ok = enrollment.parse(token({"u": "https://r:1", "p": [pin, pin], "s": secret}))
    assert ok.pins == (pin, pin)
    legacy = enrollment.parse(token({"u": "https://r:1", "f": "ab" * 32, "s": secret}))
    assert legacy.pins == ("ab" * 32,)
    for pins in ([], [pin] * 5, ["ab" * 32], [pin, 3], pin):
        with pytest.raises(enrollment.MalformedToken, match="pins are malformed"):
            enrollment.parse(token({"u": "https://r:1", "p": pins, "s": secret}))
    with pytest.raises(enrollment.MalformedToken):
        enrollment.parse(token({"u": "https://r:1", "f": pin, "s": secret}))
    # What the relay writes round-trips, in both forms.
    assert enrollment.parse(ok.encode()) == ok
    assert enrollment.parse(legacy.encode()) == legacy
