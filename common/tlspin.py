"""TLS certificate pinning by SHA-256 fingerprint.

The relay's certificate is self-signed by default, so agents do not ask a public CA
whether to trust it: they compare its fingerprint with the one in their enrollment
token (or the one they pinned at enrollment). Nothing secret is sent before the
comparison has passed.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl


class PinMismatch(Exception):
    """The relay presented a certificate other than the pinned one."""

    def __init__(self, expected: str, got: str) -> None:
        super().__init__(
            "the relay's TLS certificate does not match the pinned fingerprint "
            f"(expected {format_fingerprint(expected)}, got {format_fingerprint(got)}); "
            "refusing to talk to it"
        )
        self.expected = expected
        self.got = got


def cert_fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def normalise(fingerprint: str) -> str:
    """Accept ``AB:CD:...`` as well as ``abcd...``; return lowercase hex."""
    return fingerprint.replace(":", "").strip().lower()


def format_fingerprint(fingerprint: str) -> str:
    fp = normalise(fingerprint).upper()
    return ":".join(fp[i : i + 2] for i in range(0, len(fp), 2))


def client_context() -> ssl.SSLContext:
    """A TLS client context that leaves trust to :func:`check_pin`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # trust comes from the pin, checked right after
    return ctx


def check_pin(ssl_object: ssl.SSLObject | ssl.SSLSocket | None, expected: str) -> str:
    """Raise :class:`PinMismatch` unless the peer's certificate has ``expected``'s hash."""
    if ssl_object is None:
        raise PinMismatch(expected, "no TLS")
    der = ssl_object.getpeercert(binary_form=True)
    got = cert_fingerprint(der or b"")
    if not hmac.compare_digest(got, normalise(expected)):
        raise PinMismatch(expected, got)
    return got
