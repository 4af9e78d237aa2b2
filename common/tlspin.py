"""Trusting the relay without a public CA: public-key (SPKI) pins, or one pinned CA.

The relay's certificate is self-signed by default, so agents do not ask a public CA
whether to trust it. They pin the SHA-256 of its public key (the DER
SubjectPublicKeyInfo, as HPKP's ``pin-sha256`` and curl's ``--pinnedpubkey``), written
``sha256//`` + base64: a renewed certificate with the same key (``backline-relay cert
rotate``, an ACME renewal on a proxy that keeps its key) still matches. Where the
operator names a CA instead (a proxy with a CA-issued chain), the agent verifies the
chain against that CA only, with the hostname checked, and pins the CA's key.

Until this release agents pinned the SHA-256 of the whole leaf certificate (64 hex
digits). Such pins are still accepted, as "legacy" pins: an agent whose state holds
one records the key's pin at its next connection that matches it (agent/control.py).

Nothing secret is sent before the check has passed.

The usual check (an SPKI pin, no CA) reads the key straight from the certificate's DER
(:func:`raw_spki`), without loading cryptography's X.509 machinery, so an idle agent
does not hold it; anything else (a CA, a legacy pin, no match) takes the full path.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import re
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography import x509

SPKI_PREFIX = "sha256//"
_HEX_RE = re.compile(r"^[0-9a-f]{64}$")
_B64_RE = re.compile(r"^[A-Za-z0-9+/]{43}=$")
MAX_PINS = 4


class BadPin(ValueError):
    """Text that is neither an SPKI pin nor a (legacy) certificate fingerprint."""


class PinMismatch(Exception):
    """The relay presented a key (or chain) other than the pinned one."""

    def __init__(self, expected: Sequence[str], got: str, leaf: str = "") -> None:
        wanted = ", ".join(format_pin(p) for p in expected) or "nothing"
        super().__init__(
            f"the relay's TLS key does not match the pinned key (expected {wanted}, got "
            f"{got}{f'; certificate SHA-256 {format_fingerprint(leaf)}' if leaf else ''}); "
            "refusing to talk to it. If the relay's key was changed on purpose, enroll "
            "this machine again with a new token")
        self.expected = tuple(expected)
        self.got = got
        self.leaf = leaf


def cert_fingerprint(der: bytes) -> str:
    """SHA-256 of a DER certificate, lowercase hex (the legacy pin)."""
    return hashlib.sha256(der).hexdigest()


def spki_pin_of(cert: x509.Certificate) -> str:
    """The ``sha256//`` pin of a certificate's public key."""
    from cryptography.hazmat.primitives import serialization

    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return _pin(spki)


def _pin(spki: bytes) -> str:
    return SPKI_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode()


def spki_pin_der(der: bytes) -> str:
    from cryptography import x509

    return spki_pin_of(x509.load_der_x509_certificate(der))


def _der_item(buf: bytes, pos: int, tag: int) -> tuple[int, int]:
    """The content (start, end) of the DER item at ``pos``, which must carry ``tag``."""
    if pos + 2 > len(buf) or buf[pos] != tag:
        raise ValueError("unexpected DER item")
    length, pos = buf[pos + 1], pos + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or pos + count > len(buf):
            raise ValueError("bad DER length")
        length, pos = int.from_bytes(buf[pos:pos + count], "big"), pos + count
    if pos + length > len(buf):
        raise ValueError("DER item runs past its end")
    return pos, pos + length


def raw_spki(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo of a DER certificate, as its bytes stand (RFC 5280:
    tbsCertificate = [0] version, serial, signature, issuer, validity, subject, SPKI)."""
    start, _ = _der_item(der, 0, 0x30)  # Certificate
    pos, _ = _der_item(der, start, 0x30)  # tbsCertificate
    if pos < len(der) and der[pos] == 0xA0:  # [0] EXPLICIT version
        pos = _der_item(der, pos, 0xA0)[1]
    for tag in (0x02, 0x30, 0x30, 0x30, 0x30):  # serial, signature, issuer, validity, subject
        pos = _der_item(der, pos, tag)[1]
    return der[pos:_der_item(der, pos, 0x30)[1]]


def normalise(fingerprint: str) -> str:
    """Accept ``AB:CD:...`` as well as ``abcd...``; return lowercase hex."""
    return fingerprint.replace(":", "").strip().lower()


def is_spki(pin: str) -> bool:
    return pin.startswith(SPKI_PREFIX)


def parse_pin(text: str) -> str:
    """Canonical form of a pin: ``sha256//<base64 of 32 bytes>``, or a legacy certificate
    fingerprint as 64 lowercase hex digits (colons allowed in the input)."""
    text = text.strip()
    if is_spki(text):
        body = text[len(SPKI_PREFIX):]
        try:
            ok = bool(_B64_RE.fullmatch(body)) and len(base64.b64decode(body)) == 32
        except (binascii.Error, ValueError):
            ok = False
        if not ok:
            raise BadPin("an SPKI pin is sha256// followed by 44 base64 characters")
        return text
    fp = normalise(text)
    if not _HEX_RE.fullmatch(fp):
        raise BadPin("a pin is sha256//<base64> (the relay's public key) or, from older "
                     "relays, the certificate's SHA-256 as 64 hex digits")
    return fp


def format_fingerprint(fingerprint: str) -> str:
    fp = normalise(fingerprint).upper()
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))


def format_pin(pin: str) -> str:
    return pin if is_spki(pin) else f"certificate {format_fingerprint(pin)}"


@dataclass(frozen=True)
class PeerMatch:
    """What the agent saw and which pin it matched."""

    pin: str  # the pin that matched (an SPKI pin, the CA's pin, or a legacy fingerprint)
    spki: str  # the leaf key's pin
    leaf: str  # the leaf certificate's SHA-256
    legacy: bool  # matched by a legacy certificate fingerprint: migrate to ``spki``

    @property
    def bound(self) -> str:
        """What the control and enrollment signatures bind: the leaf certificate where
        the trust came from a legacy pin (as before, so relays of any version accept
        it), else the pin that matched (the key's, or the CA's). A CA-pinned agent whose
        relay said (in its signed pin set) that it ends TLS itself binds ``spki``
        instead (agent/state.py, ``Enrollment.bound``): the CA's pin would let any
        certificate that CA issued for the name relay the handshake."""
        return self.leaf if self.legacy else self.pin


@dataclass(frozen=True)
class Trust:
    """How an agent decides the relay is its relay: ``pins`` (SPKI pins, or legacy
    certificate fingerprints), or, with ``ca_pem``, a chain that verifies against that
    one CA, whose key's pin must be among ``pins``."""

    pins: tuple[str, ...]
    ca_pem: str = ""

    @classmethod
    def of(cls, pins: Sequence[str] | str, ca_pem: str = "") -> Trust:
        items = [pins] if isinstance(pins, str) else list(pins)
        return cls(tuple(parse_pin(p) for p in items), ca_pem)

    @property
    def ca_pin(self) -> str:
        from cryptography import x509

        return spki_pin_of(x509.load_pem_x509_certificate(self.ca_pem.encode()))

    def context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.ca_pem:
            # Only this CA: not the system store, which would trust any public CA.
            ctx.load_verify_locations(cadata=self.ca_pem)
            ctx.check_hostname = True
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pin, checked right after
        return ctx

    def check(self, ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> PeerMatch:
        """Raise :class:`PinMismatch` unless the peer is trusted; say how it was."""
        if ssl_object is None:
            raise PinMismatch(self.pins, "no TLS")
        return self.check_der(ssl_object.getpeercert(binary_form=True) or b"")

    def check_der(self, der: bytes) -> PeerMatch:
        """As :meth:`check`, on the peer's DER certificate (with ``ca_pem``, only after
        OpenSSL verified the chain)."""
        leaf = cert_fingerprint(der)
        if not self.ca_pem:  # the usual case, without loading X.509 (see the docstring)
            try:
                raw = _pin(raw_spki(der))
            except ValueError:
                raw = ""
            for pin in self.pins:
                if raw and is_spki(pin) and hmac.compare_digest(pin, raw):
                    return PeerMatch(pin, raw, leaf, legacy=False)
        try:
            spki = spki_pin_der(der)
        except ValueError:
            raise PinMismatch(self.pins, "an unreadable certificate", leaf) from None
        if self.ca_pem:
            # OpenSSL has verified the chain against the CA (and the hostname).
            ca_pin = self.ca_pin
            if ca_pin not in self.pins:
                raise PinMismatch(self.pins, f"CA {ca_pin}", leaf)
            return PeerMatch(ca_pin, spki, leaf, legacy=False)
        for pin in self.pins:
            if is_spki(pin) and hmac.compare_digest(pin, spki):
                return PeerMatch(pin, spki, leaf, legacy=False)
        for pin in self.pins:
            if not is_spki(pin) and hmac.compare_digest(pin, leaf):
                return PeerMatch(pin, spki, leaf, legacy=True)
        raise PinMismatch(self.pins, spki, leaf)


@functools.cache
def system_trust_pins() -> frozenset[str]:
    """SPKI pins of the CAs this system trusts by default (the store
    ``ssl.create_default_context()`` loads, and the default CA file, which a store
    kept as a hashed directory only loads on demand)."""
    with warnings.catch_warnings():  # some stores hold old certificates cryptography frowns on
        warnings.simplefilter("ignore")
        return _system_trust_pins()


def _system_trust_pins() -> frozenset[str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ders = list(ssl.create_default_context().get_ca_certs(binary_form=True))
    paths = ssl.get_default_verify_paths()
    for name in dict.fromkeys(filter(None, [paths.cafile, paths.openssl_cafile,
                                            os.environ.get(paths.openssl_cafile_env)])):
        try:
            with open(name, "rb") as bundle:
                ders += [c.public_bytes(serialization.Encoding.DER)
                         for c in x509.load_pem_x509_certificates(bundle.read())]
        except (OSError, ValueError):
            continue
    pins = set()
    for der in ders:
        try:
            pins.add(spki_pin_der(der))
        except ValueError:
            continue
    return frozenset(pins)


def public_ca_name(ca_pem: str) -> str:
    """The subject of the CA in ``ca_pem`` if the system trusts it by default (a public
    CA), else ``""``. Pinning a public CA trusts any certificate it issues for the
    relay's name, to anyone able to get one (a domain-validated certificate is
    enough): that is not a pin. Raises ``ValueError`` for text that is no PEM
    certificate."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(ca_pem.encode())
    if spki_pin_of(cert) not in system_trust_pins():
        return ""
    return cert.subject.rfc4514_string() or "an unnamed CA"


def pin_matches(der: bytes, pin: str) -> bool:
    """Whether a DER certificate matches one pin (an SPKI pin, or a certificate hash)."""
    try:
        return Trust.of(pin).check_der(der) is not None
    except (PinMismatch, BadPin):
        return False


def client_context() -> ssl.SSLContext:
    """A TLS client context that leaves trust to a pin check (diagnostics use it)."""
    return Trust(()).context()


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> PeerMatch:
    """Raise :class:`PinMismatch` unless the peer matches the one pin ``expected``."""
    return Trust.of(expected).check(ssl_object)
