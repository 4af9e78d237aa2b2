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

The signed document is common/fixes/trustdoc.py's (one format for the relay and the
agent): ``{"payload_b64", "signature_b64"}``, the payload
``b"backline fix trust v1\\n"`` + compact sorted-key JSON of ``{"fix_keys": [...],
"relay": <audit key fingerprint>, "serial": N}``, Ed25519-signed by the audit key.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from backline.agent import relayget
from backline.agent.pinsync import audit_key
from backline.agent.policy import Policy
from backline.agent.state import Enrollment, StateDir
from backline.common import keys
from backline.common.tlspin import PinMismatch, Trust

if TYPE_CHECKING:
    from backline.common.fixes.signing import FixTrust

log = logging.getLogger("backline.agent.fixes")

PATH = "/agent/fix-trust"
MAX_ANSWER = 64 * 1024
TIMEOUT_S = 10.0


class FixTrustError(Exception):
    """The relay's fix-trust answer is unusable; the message says why."""


def sign(key: keys.PrivateKey, serial: int, fix_keys: Sequence[str]) -> dict[str, str]:
    """The answer a relay serves (common/fixes/trustdoc.py; tests use it)."""
    from backline.common.fixes.trustdoc import document

    return document(key, serial, fix_keys)


def verify_document(answer: object, audit_public: bytes) -> tuple[int, list[str]]:
    """``(serial, fix_keys)`` of a document the pinned audit key signed
    (:func:`backline.common.fixes.trustdoc.read`); else :class:`FixTrustError`. Loads
    asyncssh: the running agent calls it in a child (agent/fixes/child.py)."""
    from backline.common.fixes.trustdoc import TrustDocError, read

    if len(audit_public) != 32:
        raise FixTrustError("this agent pinned no audit key to check it with")
    try:
        doc = read(answer, audit_public)
    except (TrustDocError, TypeError) as exc:
        raise FixTrustError(str(exc)) from None
    return doc.serial, list(doc.fix_keys)


async def fetch(relay_url: str, trust: Trust) -> object:
    """The relay's answer to ``GET /agent/fix-trust`` (parsed JSON), bounded in size and
    time, over a connection trusted by the pins this agent holds."""
    try:
        body, _ = await relayget.get_ok(relay_url, trust, PATH, MAX_ANSWER, TIMEOUT_S)
    except relayget.RelayAnswerError as exc:
        raise FixTrustError(str(exc)) from None
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
    from backline.agent.fixes.child import FixChildFailed, verify_fix_trust

    try:  # the signature is checked in a child: the idle agent loads no cryptography
        serial, fix_keys = await verify_fix_trust(answer, audit_public)
    except FixTrustError as exc:
        log.warning("the relay's fix-trust answer is ignored: %s", exc)
        return enrollment
    except (FixChildFailed, ValueError) as exc:
        log.warning("the relay's fix-trust answer could not be checked: %s", exc)
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


def load_trust(state_root: Path | None, policy: Policy) -> FixTrust:
    """The :class:`FixTrust` every check uses: pinned relay keys + the policy's offline
    keys and ``required_offline``. A pinned relay key this agent cannot read refuses
    ``unpinned_key``; an unusable ``[fix]`` section of the local policy ``policy``
    (both :class:`~backline.agent.fixes.checks.Refusal`)."""
    from backline.agent.fixes.checks import Refusal
    from backline.common.fixes.signing import FixTrust, SigningError

    relay_keys = relay_fix_keys(state_root)
    try:
        FixTrust(relay_keys=relay_keys, offline_keys=(), required_offline=0)
    except SigningError as exc:
        raise Refusal("unpinned_key", f"the pinned relay fix keys are unusable: {exc}"
                      ) from None
    try:
        return FixTrust(relay_keys=relay_keys, offline_keys=tuple(policy.fix.offline_keys),
                        required_offline=policy.fix.required_offline)
    except SigningError as exc:
        raise Refusal("policy", f"this machine's [fix] policy is unusable: {exc}") from None
