"""Learning the relay's next key before it is used: ``GET /agent/pins``.

Tokens carry the relay's current key and its next one (``tls_next.key``), but an agent
enrolled before the next key existed, or migrated from a certificate pin, knows only
the current key, and ``backline-relay cert rotate --new-key`` would cut it off. So a
running agent asks the relay for its pins, over a connection trusted by the pins it
already holds, at its first connection and then once a day, and records the answer.

Why a separate HTTPS request and not a field in ``welcome``: agents from before refuse
any field they do not know, so the relay could not add one. Old relays answer 404,
which is simply ignored.

The answer is bounded (8 KiB, 10 s) and must be 1-4 SPKI pins. The connection it is
read over proves little: any one of the pins the agent holds opens it, and some of
those keys live elsewhere than the relay (a proxy's, a backup in ``tls_pins``, an old
one). So the set is adopted only when the relay's audit key, pinned at enrollment,
signed it (common/pinset.py) with a serial greater than the last one this agent
adopted; that serial is recorded with the pins in one atomic write. An unsigned,
badly signed or stale answer is ignored. Only an agent that holds no audit key (none
enrolled through ``backline-agent enroll`` lacks one) falls back to the rule from
before signatures, narrowed: it may add pins, never remove one, and only from a set
that keeps the key this connection was trusted by.
"""

from __future__ import annotations

import binascii
import json
import logging
from dataclasses import dataclass

from backline.agent import keychild, relayget
from backline.agent.state import Enrollment, StateDir
from backline.common import pinset, protocol
from backline.common.tlspin import MAX_PINS, BadPin, PinMismatch, Trust, is_spki, parse_pin

log = logging.getLogger("backline.agent")

PATH = "/agent/pins"
MAX_ANSWER = 8 * 1024
TIMEOUT_S = 10.0
EVERY_S = 24 * 3600.0


class PinAnswerError(Exception):
    """The relay's answer is not a usable pin set; the message says why."""


@dataclass(frozen=True)
class Announced:
    """One answer: the pins, their serial and signature (0 and empty: unsigned), and
    the pin this connection matched."""

    pins: list[str]
    serial: int
    signature: bytes
    matched: str
    bind_leaf: bool = False

    async def signed_by(self, audit_public: bytes) -> bool:
        """:func:`pinset.verify`, run in a child process (agent/keychild.py), so that
        the long-lived agent does not hold cryptography for one check a day."""
        return bool(self.serial) and await keychild.verify_pinset(
            audit_public, self.serial, self.pins, self.signature, self.bind_leaf)


def audit_key(enrollment: Enrollment) -> bytes:
    """The relay's audit public key this agent pinned at enrollment; empty if none
    (also what agent/fixes/trust.py checks the fix-trust document with)."""
    try:
        raw = protocol.b64d(enrollment.audit_public_key) if enrollment.audit_public_key else b""
    except protocol.ProtocolError:
        return b""
    return raw if len(raw) == 32 else b""


async def fetch(relay_url: str, trust: Trust) -> Announced:
    """The relay's announced pin set, and the pin this connection matched."""
    try:
        body, match = await relayget.get_ok(relay_url, trust, PATH, MAX_ANSWER, TIMEOUT_S)
    except relayget.RelayAnswerError as exc:
        raise PinAnswerError(str(exc)) from None
    try:
        answer = json.loads(body)
        pins = answer["pins"]
        if (not isinstance(pins, list) or not 1 <= len(pins) <= MAX_PINS
                or not all(isinstance(p, str) and is_spki(parse_pin(p)) for p in pins)
                or len(set(pins)) != len(pins)):
            raise ValueError("not 1-4 distinct SPKI pins")
        serial, signature = answer.get("serial", 0), answer.get("signature", "")
        if (type(serial) is not int or not 0 <= serial <= pinset.MAX_SERIAL
                or not isinstance(signature, str) or len(signature) > 128):
            raise ValueError("a malformed serial or signature")
        raw_signature = protocol.b64d(signature) if signature else b""
        bind = answer.get("bind", "")
        if bind not in ("", "leaf"):
            raise ValueError("an unknown binding")
    except (ValueError, KeyError, TypeError, BadPin, binascii.Error,
            protocol.ProtocolError) as exc:
        raise PinAnswerError(f"malformed pin set ({exc})") from None
    return Announced(pins, serial, raw_signature, match.pin, bind == "leaf")


async def sync(state: StateDir, enrollment: Enrollment) -> Enrollment:
    """Ask the relay for its pins and record them if they differ; never raises for a
    relay that does not answer or answers badly (that is logged, and retried later)."""
    try:
        announced = await fetch(enrollment.relay_url, enrollment.trust)
    except (OSError, TimeoutError, PinMismatch, PinAnswerError, ValueError) as exc:
        log.debug("could not learn the relay's pins: %s", exc)
        return enrollment
    audit_public = audit_key(enrollment)
    pins, serial, bind_leaf = announced.pins, announced.serial, announced.bind_leaf
    if audit_public:
        try:
            signed = await announced.signed_by(audit_public)
        except OSError as exc:  # keychild.KeyChildFailed: no verdict, so nothing adopted
            log.warning("could not check the signature of the relay's pin set: %s", exc)
            return enrollment
        if not signed:
            if pins != enrollment.pins:
                log.warning("the relay announced pins %s without a valid signature of its "
                            "audit key: ignored (a relay older than this agent does not "
                            "sign them; anyone else holding one of the pinned keys cannot)",
                            ", ".join(pins))
            return enrollment
        if serial == enrollment.pins_serial and pins == enrollment.pins and \
                bind_leaf != enrollment.bind_leaf:
            pass  # the set the token carried (one serial is one set): learn its binding
        elif serial <= enrollment.pins_serial:
            if serial < enrollment.pins_serial:
                log.warning("the relay announced an older pin set (serial %d, this agent "
                            "holds %d): ignored, as a replay would be", serial,
                            enrollment.pins_serial)
            return enrollment
    else:
        # No audit key to check a signature with: add pins only, never drop one.
        if announced.matched not in pins:
            log.warning("the relay announced pins %s without the key it was trusted by "
                        "(%s): ignored", ", ".join(pins), announced.matched)
            return enrollment
        pins = [*enrollment.pins, *(p for p in pins if p not in enrollment.pins)]
        if pins == enrollment.pins:
            return enrollment
        if len(pins) > 2 * MAX_PINS:
            log.warning("the relay announced more new pins than this agent keeps: ignored")
            return enrollment
        serial, bind_leaf = enrollment.pins_serial, enrollment.bind_leaf
    try:
        updated = state.update_pins(enrollment, pins, serial, bind_leaf)
    except OSError as exc:
        log.warning("could not record the relay's pins: %s", exc)
        return enrollment
    log.info("the relay's pins are now %s (serial %d)", ", ".join(pins), serial)
    return updated
