"""Enrollment tokens: everything an agent needs to find and trust its relay.

A token is ``bl1-`` followed by base64url JSON ``{"u": relay URL, "p": [pins],
"s": secret}``: ``p`` holds one to four SPKI pins (``sha256//...``, common/tlspin.py),
the relay's key first. Tokens from before SPKI pins carry ``"f"``, the SHA-256 of
the relay's certificate, instead; they are still accepted, as a legacy pin the agent
replaces with the key's pin at its first connection. ``"n"`` (optional) is the serial
of the relay's signed pin set that ``p`` is (common/pinset.py): the agent records it,
so that an older signed set replayed to it later is not adopted. The secret is
``<id>.<random>``: the relay stores only the id and a hash of the whole secret, so a
database leak enrolls nobody.
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

from backline.common.pinset import MAX_SERIAL
from backline.common.tlspin import MAX_PINS, BadPin, is_spki, parse_pin

PREFIX = "bl1-"
_SECRET_RE = re.compile(r"^et_[A-Za-z0-9]{8,32}\.[A-Za-z0-9_-]{20,64}$")


class MalformedToken(ValueError):
    """The text is not a Backline enrollment token."""


@dataclass(frozen=True)
class EnrollmentToken:
    relay_url: str
    pins: tuple[str, ...]
    secret: str
    #: The serial of the relay's signed pin set these pins are; 0: not known.
    serial: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.pins, str):  # one pin given as text
            object.__setattr__(self, "pins", (self.pins,))

    @property
    def token_id(self) -> str:
        return self.secret.split(".", 1)[0]

    @property
    def fingerprint(self) -> str:
        """The primary pin (the relay's current key, or a legacy certificate hash)."""
        return self.pins[0]

    def encode(self) -> str:
        if all(is_spki(p) for p in self.pins):
            fields: dict[str, object] = {"u": self.relay_url, "p": list(self.pins)}
            if self.serial:
                fields["n"] = self.serial
        else:  # a legacy certificate fingerprint: the format agents before SPKI pins read
            fields = {"u": self.relay_url, "f": self.pins[0]}
        body = json.dumps({**fields, "s": self.secret}, separators=(",", ":"))
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
    if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in "us"):
        raise MalformedToken("the enrollment token is missing its relay URL, pins or secret")
    url = body["u"]
    parts = urlsplit(url)
    if parts.scheme not in ("https", "wss") or not parts.hostname:
        raise MalformedToken("the enrollment token's relay URL must be https://host[:port]")
    if "p" in body:  # this release: SPKI pins
        raw_pins = body["p"]
        if (not isinstance(raw_pins, list) or not 1 <= len(raw_pins) <= MAX_PINS
                or not all(isinstance(p, str) and is_spki(p) for p in raw_pins)):
            raise MalformedToken("the enrollment token's pins are malformed")
    elif isinstance(body.get("f"), str):  # legacy: the certificate's SHA-256
        raw_pins = [body["f"]]
        if is_spki(body["f"]):
            raise MalformedToken("the enrollment token's TLS fingerprint is malformed")
    else:
        raise MalformedToken("the enrollment token is missing its relay URL, pins or secret")
    try:
        pins = tuple(parse_pin(p) for p in raw_pins)
    except BadPin:
        raise MalformedToken("the enrollment token's pins are malformed") from None
    if not secret_is_well_formed(body["s"]):
        raise MalformedToken("the enrollment token's secret is malformed")
    serial = body.get("n", 0)
    if (type(serial) is not int or not 0 <= serial <= MAX_SERIAL
            or ("n" in body and "p" not in body)):
        raise MalformedToken("the enrollment token's pin set serial is malformed")
    return EnrollmentToken(relay_url=url.rstrip("/"), pins=pins, secret=body["s"],
                           serial=serial)
