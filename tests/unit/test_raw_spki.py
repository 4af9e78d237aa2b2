"""The pin check's fast path reads the SubjectPublicKeyInfo straight from the DER: for
every kind of key a relay may serve it must give exactly the bytes cryptography gives,
and anything malformed must be an error (which then takes the full path)."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from backline.common.tlspin import Trust, raw_spki, spki_pin_der


def certificate(key: object, long_name: bool = False) -> bytes:
    oids = [NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME, NameOID.ORGANIZATIONAL_UNIT_NAME,
            NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME]
    name = x509.Name([x509.NameAttribute(oid, "relay" + "x" * 55)
                      for oid in (oids if long_name else oids[:1])])  # > 255 bytes: long form
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key())  # type: ignore[attr-defined]
               .serial_number(x509.random_serial_number()).not_valid_before(now)
               .not_valid_after(now + dt.timedelta(days=1)))
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    cert = builder.sign(key, algorithm)  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.DER)


KEYS = [ed25519.Ed25519PrivateKey.generate(), ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)]


@pytest.mark.parametrize("key", KEYS, ids=["ed25519", "p256", "p384", "rsa2048"])
@pytest.mark.parametrize("long_name", [False, True])
def test_raw_spki_is_what_cryptography_reads(key: object, long_name: bool) -> None:
    der = certificate(key, long_name)
    expected = key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert raw_spki(der) == expected
    pin = spki_pin_der(der)
    assert Trust.of(pin).check_der(der).bound == pin


@pytest.mark.parametrize("cut", [0, 1, 5, 40, -1])
def test_malformed_certificates_are_errors(cut: int) -> None:
    der = certificate(KEYS[0])
    with pytest.raises(ValueError):
        raw_spki(der[:cut] if cut >= 0 else b"\x31" + der[1:])
