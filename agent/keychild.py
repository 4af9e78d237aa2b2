"""The running agent's Ed25519 work, done in a short-lived child process.

``backline-agent run`` signs one thing per connection (the relay's challenge,
common/protocol.py) and checks one signature a day (the relay's pin set,
agent/pinsync.py). Both need cryptography, whose Rust extension carries its own
OpenSSL: importing it costs a process about 9 MiB of RSS, and an extension module is
never unloaded, so one signature would keep them for the life of the agent
(docs/benchmarks.md, "Idle agent"). So the long-lived agent does not import it: each
signature or check is one ``python -m backline.agent.keychild`` (about 0.1 s of CPU),
whose memory goes back to the system when it exits.

What the child runs is what the agent ran in its own process before:
:func:`backline.common.keys.load_private` and ``sign`` for the challenge,
:func:`backline.common.pinset.verify` for the pin set; Ed25519 signatures are
deterministic, so the bytes on the wire are the same. The private key never crosses
a pipe: the child reads it from the state directory itself (the same user, the same
0600 file). The request (one JSON line on stdin) and the answer (one on stdout) are
bounded and validated on both sides.

Exit status of the child: 0 answered; 3 the key cannot be used (:class:`KeyUnusable`,
fatal for the agent, as an unreadable key at start always was); anything else (the
child did not start, crashed, timed out) is :class:`KeyChildFailed`, an ``OSError``:
the connection attempt fails and is retried with the usual backoff.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from backline.agent import childproc

#: Bounds of what crosses the pipe: a request carries a challenge payload or a pin
#: set (under 1 KiB either), an answer one signature or one boolean.
MAX_REQUEST = 16 * 1024
MAX_ANSWER = 1024
TIMEOUT_S = 30.0
EXIT_KEY_UNUSABLE = 3

#: What the agent signs with: the bytes to sign in, the signature out.
Signer = Callable[[bytes], Awaitable[bytes]]


class KeyUnusable(Exception):
    """The agent's identity key is missing or not a usable Ed25519 key."""


class KeyChildFailed(OSError):
    """The child process did not answer (it could not start, crashed, timed out)."""


def _b64e(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _b64d(text: object) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_REQUEST:
        raise ValueError("not base64 text")
    return base64.b64decode(text, validate=True)


async def _ask(request: dict[str, Any]) -> dict[str, Any]:
    """One child, one request, its one answer (a JSON object), checked."""
    code, answer = await childproc.ask(
        "backline.agent.keychild", request, max_request=MAX_REQUEST, max_answer=MAX_ANSWER,
        timeout_s=TIMEOUT_S, failed=KeyChildFailed, what="signing process")
    if answer is None:
        raise KeyChildFailed(f"the signing process failed (exit status {code})")
    if code == EXIT_KEY_UNUSABLE and isinstance(answer.get("error"), str):
        raise KeyUnusable(answer["error"][:500])
    if code != 0:
        raise KeyChildFailed(f"the signing process failed (exit status {code})")
    return answer


async def sign(key_path: Path, payload: bytes) -> bytes:
    """``payload`` signed with the Ed25519 key in ``key_path``."""
    answer = await _ask({"op": "sign", "key": str(key_path), "payload": _b64e(payload)})
    try:
        signature = _b64d(answer.get("signature"))
    except (ValueError, binascii.Error):
        signature = b""
    if len(signature) != 64:
        raise KeyChildFailed("the signing process answered no signature")
    return signature


async def check_key(key_path: Path) -> None:
    """Raise :class:`KeyUnusable` unless ``key_path`` loads as the agent's key."""
    answer = await _ask({"op": "check", "key": str(key_path)})
    if answer.get("ok") is not True:
        raise KeyChildFailed("the signing process did not check the key")


async def signer(key_path: Path) -> Signer:
    """A :data:`Signer` for the key in ``key_path``, which is checked first (once, so
    an agent whose key is unusable stops at start, as before)."""
    await check_key(key_path)

    async def _sign(payload: bytes) -> bytes:
        return await sign(key_path, payload)

    return _sign


async def verify_pinset(audit_public: bytes, serial: int, pins: Sequence[str],
                        signature: bytes, bind_leaf: bool) -> bool:
    """:func:`backline.common.pinset.verify`, in a child."""
    answer = await _ask({"op": "pinset", "public": _b64e(audit_public), "serial": serial,
                         "pins": list(pins), "signature": _b64e(signature),
                         "bind_leaf": bind_leaf})
    valid = answer.get("valid")
    if not isinstance(valid, bool):
        raise KeyChildFailed("the signing process answered no verdict")
    return valid


# --- the child ---------------------------------------------------------------------


def _serve(request: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    from backline.common import keys, pinset

    op = request.get("op")
    if op in ("sign", "check"):
        key_path = request.get("key")
        if not isinstance(key_path, str) or not key_path:
            return 2, {"error": "no key path"}
        try:
            key = keys.load_private(Path(key_path))
        except Exception as exc:  # missing, malformed, encrypted, not Ed25519: all fatal
            return EXIT_KEY_UNUSABLE, {"error": f"the identity key {key_path} cannot be "
                                                f"used: {exc}"}
        if op == "check":
            return 0, {"ok": True}
        return 0, {"signature": _b64e(key.sign(_b64d(request.get("payload"))))}
    if op == "pinset":
        serial, pins, bind_leaf = (request.get("serial"), request.get("pins"),
                                   request.get("bind_leaf"))
        if (type(serial) is not int or not isinstance(pins, list)
                or not all(isinstance(p, str) for p in pins) or type(bind_leaf) is not bool):
            return 2, {"error": "malformed pin set"}
        return 0, {"valid": pinset.verify(_b64d(request.get("public")), serial, pins,
                                          _b64d(request.get("signature")), bind_leaf)}
    return 2, {"error": "unknown op"}


def main() -> int:
    """The child: one request on stdin, one answer on stdout."""
    raw = sys.stdin.buffer.read(MAX_REQUEST + 1)
    try:
        if len(raw) > MAX_REQUEST:
            raise ValueError("request too large")
        request = json.loads(raw)
        if not isinstance(request, dict):
            raise ValueError("not an object")
        code, answer = _serve(request)
    except (ValueError, binascii.Error) as exc:
        code, answer = 2, {"error": f"bad request: {exc}"[:200]}
    sys.stdout.write(json.dumps(answer) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
