"""``backline-agent enroll``: trade a one-time token for a pinned relationship with a relay."""

from __future__ import annotations

import asyncio
import logging

from websockets.exceptions import ConnectionClosed

from backline.agent.facts import gather
from backline.agent.link import open_trusted, ws_url
from backline.agent.state import Enrollment, StateDir
from backline.common import enrollment, keys, protocol
from backline.common.tlspin import Trust, public_ca_name

log = logging.getLogger("backline.agent")

# What each refusal from the relay means for the person at the keyboard.
REFUSALS = {
    "token_expired": "the enrollment token has expired; ask for a new one",
    "token_used_up": "the enrollment token has already been used as often as allowed",
    "token_revoked": "the enrollment token was revoked",
    "token_unknown": "the relay does not know this enrollment token",
    "token_forged": "the enrollment token's secret is wrong (was it altered?)",
    "token_malformed": "the enrollment token is malformed",
    "bad_signature": "the relay could not verify this agent's key",
}


def public_ca_refusal(name: str, refusing: bool = True) -> str:
    """Why a public CA in ``--ca-file`` is refused (or, accepted anyway, a warning)."""
    text = (f"the CA file is a public CA ({name}, in this system's default trust store): "
            "pinning it trusts ANY certificate it issues for the relay's name, to anyone "
            "who can get one")
    if refusing:
        text += ("; pin the relay's key (a token without --ca-file) or a private CA, or "
                 "accept it anyway with --allow-public-ca")
    return text


class EnrollError(Exception):
    """Enrollment failed; ``code`` is stable and the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


async def enroll(token_text: str, state: StateDir, hostname: str | None = None,
                 timeout: float = 15.0, ca_pem: str = "",
                 allow_public_ca: bool = False) -> Enrollment:
    """Enroll with the token; with ``ca_pem`` (``--ca-file``) the relay's chain must
    verify against that CA, whose key's pin the token must carry, and which must not
    be a public CA unless ``allow_public_ca`` (``--allow-public-ca``)."""
    try:
        token = enrollment.parse(token_text)
    except enrollment.MalformedToken as exc:
        raise EnrollError("token_malformed", str(exc)) from None
    trust = Trust.of(token.pins, ca_pem)
    if ca_pem:
        try:
            ca_pin = trust.ca_pin
            public = public_ca_name(ca_pem)
        except ValueError:
            raise EnrollError("ca_malformed", "the CA file is not a PEM certificate") from None
        if public and not allow_public_ca:
            raise EnrollError("ca_public", public_ca_refusal(public))
        if public:
            log.warning("%s; accepted (--allow-public-ca)", public_ca_refusal(public, False))
        if ca_pin not in token.pins:
            raise EnrollError("ca_not_pinned", f"the CA file's key ({ca_pin}) is not one "
                                               "the token pins; is it the relay's CA?")
    key = keys.generate()
    public = keys.public_raw(key)
    info = gather(hostname)
    async with open_trusted(ws_url(token.relay_url, "/agent/enroll"), trust,
                            timeout) as (ws, match):
        signature = key.sign(protocol.enroll_payload(token.secret, public, match.bound))
        await ws.send(protocol.encode("enroll", token=token.secret,
                                      public_key=protocol.b64e(public),
                                      signature=protocol.b64e(signature), **info))
        try:
            frame = await asyncio.wait_for(ws.recv(), timeout)
        except (ConnectionClosed, TimeoutError):
            raise EnrollError("no_answer", "the relay closed the connection without an answer"
                              ) from None
        try:
            msg = protocol.decode(frame, frozenset({"enrolled", "error"}))
        except protocol.ProtocolError as exc:
            raise EnrollError("bad_answer", f"the relay's answer is not one this agent "
                                            f"understands ({exc.message})") from None
    if msg["type"] == "error":
        raise EnrollError(msg["code"], REFUSALS.get(msg["code"], msg["message"]))
    result = Enrollment(
        agent_id=msg["agent_id"], relay_url=token.relay_url,
        # A legacy token's certificate hash is replaced by the key it was seen with.
        pins=[match.spki] if match.legacy else list(token.pins), ca_pem=ca_pem,
        pins_serial=0 if match.legacy else token.serial,
        control_url=msg["control_url"], group=msg["group"],
        ca_public_key=msg["ca_public_key"], audit_public_key=msg["audit_public_key"],
        # A relay from before approved fixes sends no fix keys: fixes are refused until
        # it announces them (GET /agent/fix-trust, agent/fixes/trust.py).
        fix_keys=list(msg.get("fix_keys", [])), heartbeat_s=msg["heartbeat_s"])
    state.save_enrollment(key, result)
    return result
