"""Enrollment tokens: everything an agent needs to find and trust its relay.

A token is ``bl1-`` followed by base64url JSON ``{"u": relay URL, "f": TLS
fingerprint, "s": secret}``. The secret is ``<id>.<random>``: the relay stores
only the id and a hash of the whole secret, so a database leak enrolls nobody.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

PREFIX = "bl1-"
_SECRET_RE = re.compile(r"^et_[A-Za-z0-9]{8,32}\.[A-Za-z0-9_-]{20,64}$")
_FP_RE = re.compile(r"^[0-9a-f]{64}$")


class MalformedToken(ValueError):
    """The text is not a Backline enrollment token."""


@dataclass(frozen=True)
class EnrollmentToken:
    relay_url: str
    fingerprint: str
    secret: str

    @property
    def token_id(self) -> str:
        return self.secret.split(".", 1)[0]

    def encode(self) -> str:
        body = json.dumps({"u": self.relay_url, "f": self.fingerprint, "s": self.secret},
                          separators=(",", ":"))
        return PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def new_secret() -> tuple[str, str]:
    """Return ``(token_id, secret)`` for a fresh token."""
    token_id = "et_" + secrets.token_hex(8)
    return token_id, f"{token_id}.{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    # The secret carries 256 random bits, so a fast hash is as good as a slow one.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_is_well_formed(secret: str) -> bool:
    return bool(_SECRET_RE.fullmatch(secret))


def parse(text: str) -> EnrollmentToken:
    text = text.strip()
    if not text.startswith(PREFIX) or len(text) > 2048:
        raise MalformedToken("not a Backline enrollment token (it should start with 'bl1-')")
    raw = text[len(PREFIX):]
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise MalformedToken("the enrollment token is damaged (was it copied whole?)") from exc
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in "ufs"):
        raise MalformedToken("the enrollment token is missing its relay URL, fingerprint or secret")
    url = body["u"]
    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss") or not parts.hostname:
        raise MalformedToken("the enrollment token's relay URL must be https://host[:port]")
    if not _FP_RE.fullmatch(body["f"]):
        raise MalformedToken("the enrollment token's TLS fingerprint is malformed")
    if not secret_is_well_formed(body["s"]):
        raise MalformedToken("the enrollment token's secret is malformed")
    return EnrollmentToken(relay_url=url.rstrip("/"), fingerprint=body["f"], secret=body["s"])
