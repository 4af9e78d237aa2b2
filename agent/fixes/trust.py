"""Which keys this agent trusts to approve a fix, and how it learns the relay's.

Two sources, kept apart on purpose:

* the **relay's fix keys** (its online approval key): pinned at enrollment from
  ``enrolled``'s ``fix_keys``, or, for an agent enrolled before the relay had one (or
  when the relay rotates it), from ``GET /agent/fix-trust``: a document signed by the
  relay's **audit key**, which this agent pinned at enrollment, with a serial that must
  be greater than the one the agent holds (a replayed older document, however
  genuine, is ignored). The connection it is read over proves nothing by itself (as
  for the pin set, agent/pinsync.py); the signature does;
* the **offline approver keys** and how many of them must have signed
  (``required_offline``): only from the local policy's ``[fix]`` section, which the
  relay cannot change, so a compromised relay holding only its own key cannot reach
  an agent whose policy asks for offline signatures.

The signed document (agreed with the relay's side, fix-relay)::

    {"payload_b64": base64(payload), "signature_b64": base64(Ed25519 signature)}
    payload = b"backline fix trust v1\\n" + compact sorted-key JSON of
              {"fix_keys": [OpenSSH public key lines], "relay": audit key fingerprint,
               "serial": N}

Either base64 alphabet is read (standard or URL-safe, padded or not).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backline.agent.policy import SSH_KEY_RE, Policy
from backline.agent.state import Enrollment, StateDir
from backline.common import __version__, keys, protocol
from backline.common.tlspin import PinMismatch, Trust

log = logging.getLogger("backline.agent.fixes")

PATH = "/agent/fix-trust"
CONTEXT = b"backline fix trust v1\n"
MAX_ANSWER = 64 * 1024
MAX_FIX_KEYS = 16
MAX_SERIAL = 2**53 - 1
TIMEOUT_S = 10.0


class FixTrustError(Exception):
    """The relay's fix-trust answer is unusable; the message says why."""


def b64any(text: str) -> bytes:
    """Standard or URL-safe base64, with or without padding; ``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64") from exc


def payload(audit_public: bytes, serial: int, fix_keys: Sequence[str]) -> bytes:
    """The bytes the relay signs with its audit key to announce its fix keys."""
    body = {"fix_keys": list(fix_keys), "relay": keys.fingerprint(audit_public),
            "serial": serial}
    return CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(audit_key: keys.PrivateKey, serial: int, fix_keys: Sequence[str]) -> dict[str, str]:
    """The answer a relay serves (tests and a relay side that wants it)."""
    data = payload(keys.public_raw(audit_key), serial, fix_keys)
    return {"payload_b64": base64.b64encode(data).decode(),
            "signature_b64": base64.b64encode(audit_key.sign(data)).decode()}


def audit_key(enrollment: Enrollment) -> bytes:
    """The relay's audit public key this agent pinned at enrollment; empty if none."""
    try:
        raw = protocol.b64d(enrollment.audit_public_key) if enrollment.audit_public_key else b""
    except protocol.ProtocolError:
        return b""
    return raw if len(raw) == 32 else b""


def verify_document(answer: Any, audit_public: bytes) -> tuple[int, list[str]]:
    """``(serial, fix_keys)`` of a document the pinned audit key signed; else
    :class:`FixTrustError`."""
    if not isinstance(answer, dict) or set(answer) - {"payload_b64", "signature_b64"}:
        raise FixTrustError("not {payload_b64, signature_b64}")
    try:
        data = b64any(answer["payload_b64"])
        signature = b64any(answer["signature_b64"])
    except (KeyError, ValueError) as exc:
        raise FixTrustError(f"malformed ({exc})") from None
    if len(audit_public) != 32 or not keys.verify(audit_public, signature, data):
        raise FixTrustError("not signed by the relay's audit key this agent pinned")
    if not data.startswith(CONTEXT):
        raise FixTrustError("not a fix-trust document")
    try:
        body = json.loads(data[len(CONTEXT):])
        serial, fix_keys = body["serial"], body["fix_keys"]
        if set(body) != {"fix_keys", "relay", "serial"}:
            raise ValueError("unexpected fields")
    except (ValueError, KeyError, TypeError) as exc:
        raise FixTrustError(f"malformed payload ({exc})") from None
    if type(serial) is not int or not 1 <= serial <= MAX_SERIAL:
        raise FixTrustError("a malformed serial")
    if (not isinstance(fix_keys, list) or not 1 <= len(fix_keys) <= MAX_FIX_KEYS
            or not all(isinstance(k, str) and SSH_KEY_RE.fullmatch(k) for k in fix_keys)):
        raise FixTrustError("fix_keys must be 1-16 OpenSSH public key lines")
    if body["relay"] != keys.fingerprint(audit_public):
        raise FixTrustError("the document names another relay")
    if payload(audit_public, serial, fix_keys) != data:
        raise FixTrustError("the payload is not in canonical form")
    return serial, fix_keys


async def fetch(relay_url: str, trust: Trust) -> Any:
    """The relay's answer to ``GET /agent/fix-trust`` (parsed JSON), bounded in size and
    time, over a connection trusted by the pins this agent holds."""
    parts = urlsplit(relay_url)
    host = parts.hostname or ""
    port = parts.port or 443
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(host, port, ssl=trust.context(),
                                                       server_hostname=host)
        try:
            trust.check(writer.get_extra_info("ssl_object"))
            netloc = parts.netloc.rsplit("@", 1)[-1]
            writer.write((f"GET {PATH} HTTP/1.1\r\nHost: {netloc}\r\n"
                          f"User-Agent: backline-agent/{__version__}\r\n"
                          "Accept: application/json\r\nConnection: close\r\n\r\n").encode())
            await writer.drain()
            data = b""
            while len(data) <= MAX_ANSWER:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.transport.abort()
    if len(data) > MAX_ANSWER:
        raise FixTrustError(f"answer over {MAX_ANSWER} bytes")
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise FixTrustError(f"HTTP {status[1].decode('latin-1') if len(status) > 1 else '?'}")
    try:
        return json.loads(body)
    except ValueError:
        raise FixTrustError("the answer is not JSON") from None


async def sync(state: StateDir, enrollment: Enrollment) -> Enrollment:
    """Ask the relay for its fix keys and adopt them when validly signed with a greater
    serial; never raises for a relay that does not answer or answers badly (an old
    relay answers 404: logged at debug level, retried with the pin sync)."""
    try:
        answer = await fetch(enrollment.relay_url, enrollment.trust)
    except (OSError, TimeoutError, PinMismatch, FixTrustError, ValueError) as exc:
        log.debug("could not learn the relay's fix keys: %s", exc)
        return enrollment
    audit_public = audit_key(enrollment)
    try:
        serial, fix_keys = verify_document(answer, audit_public)
    except FixTrustError as exc:
        log.warning("the relay's fix-trust answer is ignored: %s", exc)
        return enrollment
    if serial <= enrollment.fix_keys_serial:
        if serial < enrollment.fix_keys_serial:
            log.warning("the relay announced older fix keys (serial %d, this agent holds "
                        "%d): ignored, as a replay would be", serial,
                        enrollment.fix_keys_serial)
        return enrollment
    try:
        updated = state.update_fix_keys(enrollment, fix_keys, serial)
    except OSError as exc:
        log.warning("could not record the relay's fix keys: %s", exc)
        return enrollment
    log.info("the relay's fix keys are now %s (serial %d)",
             ", ".join(k.split()[1][-12:] for k in fix_keys), serial)
    return updated


def relay_fix_keys(state_root: Path | None) -> tuple[str, ...]:
    """The relay fix keys this agent pinned (none when not enrolled: ``join``)."""
    if state_root is None:
        return ()
    state = StateDir(state_root)
    if not state.enrollment_path.exists():
        return ()
    try:
        return tuple(state.load_enrollment().fix_keys)
    except (OSError, ValueError, TypeError):
        return ()


def load_trust(state_root: Path | None, policy: Policy) -> Any:
    """The :class:`FixTrust` every check uses: pinned relay keys + the policy's offline
    keys and ``required_offline``."""
    from backline.common.fixes.signing import FixTrust

    return FixTrust(relay_keys=relay_fix_keys(state_root),
                    offline_keys=tuple(policy.fix.offline_keys),
                    required_offline=policy.fix.required_offline)
