"""The long-lived agent's fix-signature checks, done in a short-lived child process.

``backline-agent run`` checks two fix documents while it idles: the relay's fix keys
(``GET /agent/fix-trust``, an Ed25519 signature by the audit key, once a day) and a
pushed revocation list (an SSH signature, whenever one is revoked). Both need
cryptography (and the list asyncssh), whose extension modules stay in a process for
its whole life once imported, which an idle agent should not pay for (the same reason
and the same pattern as agent/keychild.py for the handshake). So each check is one
``python -m backline.agent.fixes.child``: a JSON request on stdin, a JSON answer on
stdout, both bounded; the child runs exactly what the agent would have run itself
(:func:`backline.agent.fixes.trust.verify_document`,
:func:`backline.agent.fixes.revocations.receive`, which also writes the merged list).

A child that cannot start, crashes or times out is :class:`FixChildFailed` (an
``OSError``): the document is not adopted, and the next sync or push tries again.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from backline.agent import childproc

#: A revocation message is at most one 64 KiB control frame; the keys ride along.
MAX_REQUEST = 256 * 1024
MAX_ANSWER = 16 * 1024
TIMEOUT_S = 30.0


class FixChildFailed(OSError):
    """The child process did not answer."""


async def ask(request: dict[str, Any]) -> dict[str, Any]:
    """One child (agent/childproc.py), one request, its answer object."""
    code, answer = await childproc.ask(
        "backline.agent.fixes.child", request, max_request=MAX_REQUEST,
        max_answer=MAX_ANSWER, timeout_s=TIMEOUT_S, failed=FixChildFailed,
        what="checking process")
    if code != 0 or answer is None:
        raise FixChildFailed(f"the checking process failed (exit status {code})")
    return answer


async def verify_fix_trust(answer: Any, audit_public: bytes) -> tuple[int, list[str]]:
    """:func:`trust.verify_document` in a child; ``FixTrustError`` when it refuses."""
    from backline.agent.fixes.trust import FixTrustError

    result = await ask({"op": "fix_trust", "answer": answer,
                        "public": base64.b64encode(audit_public).decode()})
    if isinstance(result.get("error"), str):
        raise FixTrustError(result["error"][:300])
    serial, fix_keys = result.get("serial"), result.get("fix_keys")
    if type(serial) is not int or not isinstance(fix_keys, list) or not all(
            isinstance(k, str) for k in fix_keys):
        raise FixChildFailed("the checking process answered no document")
    return serial, fix_keys


async def receive_revocations(state_root: Path, msg: dict[str, Any],
                              relay_keys: tuple[str, ...]) -> tuple[str, int, str]:
    """:func:`revocations.receive` in a child: ``(outcome, serial, detail)``."""
    result = await ask({"op": "revocations", "state_root": str(state_root),
                        "msg": {k: msg.get(k) for k in ("list_b64", "signature", "serial",
                                                        "sha256") if k in msg},
                        "relay_keys": list(relay_keys)})
    outcome, serial, detail = result.get("outcome"), result.get("serial"), result.get("detail")
    if outcome not in ("adopted", "stale", "refused") or type(serial) is not int or \
            not isinstance(detail, str):
        raise FixChildFailed("the checking process answered no outcome")
    return outcome, serial, detail


# --- the child ---------------------------------------------------------------------


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "fix_trust":
        from backline.agent.fixes.trust import FixTrustError, verify_document

        try:
            public = base64.b64decode(str(request.get("public", "")), validate=True)
            serial, fix_keys = verify_document(request.get("answer"), public)
        except (FixTrustError, ValueError) as exc:
            return {"error": str(exc)[:300]}
        return {"serial": serial, "fix_keys": fix_keys}
    if op == "revocations":
        from backline.agent.fixes.revocations import receive

        root, msg, relay_keys = (request.get("state_root"), request.get("msg"),
                                 request.get("relay_keys"))
        if not isinstance(root, str) or not root or not isinstance(msg, dict) or not (
                isinstance(relay_keys, list) and all(isinstance(k, str) for k in relay_keys)):
            raise ValueError("malformed revocations request")
        got = receive(Path(root), msg, tuple(relay_keys))
        return {"outcome": got.outcome, "serial": got.serial, "detail": got.detail}
    raise ValueError("unknown op")


def main() -> int:
    raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        if len(raw) > MAX_REQUEST:
            raise ValueError("request too large")
        request = json.loads(raw)
        if not isinstance(request, dict):
            raise ValueError("not an object")
        answer = _serve(request)
    except ValueError as exc:
        sys.stdout.write(json.dumps({"error": f"bad request: {exc}"[:200]}) + "\n")
        return 2
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
