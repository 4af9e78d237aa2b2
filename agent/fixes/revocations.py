"""The revocation list this agent keeps (``fix_revocations.json`` in its state dir).

The relay pushes its signed list on the control socket (``fix_revocations``, after
``welcome`` and whenever a fix is revoked). The agent adopts one only when a relay fix
key it pinned signed it and its serial is greater than the one it kept; the entries are
then UNIONED with what it kept (common/fixes/revocation.py), so no list, however new,
ever lifts a revocation. The merged list is the agent's own record (not re-signed),
written atomically (temp file and rename, 0600): a crash leaves the old list or the new.

Every run, from the relay or from ``backline-agent fix run``, checks it first. A kept
file that cannot be read fails closed: no fix runs until it is repaired or removed by
the machine's administrator (:class:`KeptListError`).

A pushed list whose serial is not greater than the kept one is dropped before its
signature is checked: the same list, pushed at every reconnection, costs nothing (no
SSH-signature machinery is loaded into an idle agent for it).

A list no pinned key verifies is kept aside (``fix_revocations.pending.json``, the
latest one only, bounded like the control frame it came in): an agent enrolled before
its relay had a fix key learns that key from ``GET /agent/fix-trust`` only after the
relay's first push, and then tries the pending list again (:func:`retry_pending`)
instead of missing revocations until the next one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backline.agent.activity import ActivityLog
from backline.common import keys

log = logging.getLogger("backline.agent.fixes")

FILE_NAME = "fix_revocations.json"
PENDING_NAME = "fix_revocations.pending.json"
MAX_PENDING_BYTES = 64 * 1024
CONTEXT = b"backline fix revocations v1\n"


class KeptListError(Exception):
    """The kept revocation list cannot be read: nothing runs (fail closed)."""


@dataclass(frozen=True)
class Received:
    """What became of one pushed list: ``adopted``, ``stale``, or refused with a reason."""

    outcome: str  # adopted | stale | refused
    serial: int
    detail: str = ""


def path_in(state_root: Path) -> Path:
    return state_root / FILE_NAME


def load(state_root: Path | None) -> Any:
    """The kept :class:`RevocationList` (empty when none was ever adopted)."""
    from backline.common.fixes.revocation import EMPTY, RevocationError, list_from_dict

    if state_root is None:
        return EMPTY
    path = path_in(state_root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return EMPTY
    except OSError as exc:
        raise KeptListError(f"{path}: {exc.strerror or exc}") from None
    try:
        return list_from_dict(json.loads(text))
    except (ValueError, RevocationError, TypeError) as exc:
        raise KeptListError(f"{path} is not a revocation list ({exc}); no fix runs until "
                            "it is repaired or removed") from None


def kept_serial(state_root: Path) -> int:
    """The kept list's serial, read without the fixes machinery (0: none or unreadable)."""
    try:
        serial = json.loads(path_in(state_root).read_text(encoding="utf-8"))["serial"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return serial if type(serial) is int else 0


def save(state_root: Path, rl: Any) -> None:
    data = json.dumps(rl.as_dict(), sort_keys=True, indent=1) + "\n"
    keys.write_private_file(path_in(state_root), data.encode())


def _peek_serial(list_b64: str) -> int | None:
    """The serial a pushed list claims (unverified), or None if it is not readable."""
    try:
        data = base64.b64decode(list_b64, validate=True)
    except (binascii.Error, ValueError):
        return None
    if not data.startswith(CONTEXT):
        return None
    try:
        serial = json.loads(data[len(CONTEXT):])["serial"]
    except (ValueError, KeyError, TypeError):
        return None
    return serial if type(serial) is int else None


def _stale(state_root: Path, msg: dict[str, Any]) -> int | None:
    """The claimed serial when it is not above the kept one (unverified: enough to drop
    it, never to adopt it)."""
    claimed = _peek_serial(msg.get("list_b64", ""))
    if claimed is not None and claimed <= kept_serial(state_root) and path_in(
            state_root).exists():
        return claimed
    return None


_tasks: set[asyncio.Task[Received]] = set()


def schedule(state_root: Path, msg: dict[str, Any], relay_keys: tuple[str, ...],
             activity: ActivityLog | None = None) -> asyncio.Task[Received] | None:
    """From the control loop (``backline-agent run``): a stale list is dropped at once;
    another is checked and merged in a child process (agent/fixes/child.py), in the
    background, so the long-lived agent loads no signature machinery."""
    if _stale(state_root, msg) is not None:
        return None
    task = asyncio.ensure_future(receive_in_child(state_root, msg, relay_keys, activity))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def receive_in_child(state_root: Path, msg: dict[str, Any],
                           relay_keys: tuple[str, ...],
                           activity: ActivityLog | None = None) -> Received:
    """:func:`receive`, run by a child process; the outcome is logged here."""
    from backline.agent.fixes.child import FixChildFailed, receive_revocations

    try:
        outcome, serial, detail = await receive_revocations(state_root, msg, relay_keys)
    except (FixChildFailed, ValueError) as exc:
        log.warning("a revocation list from the relay could not be checked: %s", exc)
        return Received("refused", 0, str(exc)[:300])
    if activity is not None and outcome == "adopted":
        activity.record("fix.revocations.adopted", serial=serial)
    elif activity is not None and outcome == "refused":
        activity.record("fix.revocations.refused", serial=serial or None, detail=detail)
    if outcome == "refused":
        log.warning("a revocation list from the relay was refused: %s", detail)
    return Received(outcome, serial, detail)


def receive(state_root: Path, msg: dict[str, Any], relay_keys: tuple[str, ...],
            activity: ActivityLog | None = None) -> Received:
    """Merge a pushed ``fix_revocations`` message into the kept list; log the outcome."""
    claimed = _stale(state_root, msg)
    if claimed is not None:
        return Received("stale", claimed)
    from backline.common.fixes.revocation import (
        RevocationError,
        check_update,
        decode_message,
        merge,
    )
    from backline.common.fixes.signing import SigningError

    def refused(detail: str, serial: int = 0) -> Received:
        log.warning("a revocation list from the relay was refused: %s", detail)
        if activity is not None:
            activity.record("fix.revocations.refused", serial=serial or None, detail=detail)
        return Received("refused", serial, detail)

    try:
        new, signature = decode_message({**msg, "type": "fix_revocations"})
    except RevocationError as exc:
        return refused(str(exc)[:300])
    try:
        kept = load(state_root)
    except KeptListError as exc:
        return refused(str(exc)[:300], new.serial)
    try:
        why = check_update(kept, new, signature, relay_keys)
    except (SigningError, ValueError) as exc:
        return refused(f"bad_signature ({str(exc)[:200]})", new.serial)
    if why == "stale_serial":
        return Received("stale", new.serial)
    if why is not None:
        _keep_pending(state_root, msg)
        return refused(f"{why}: not signed by a relay fix key this agent pinned", new.serial)
    merged = merge(kept, new, signature, relay_keys)
    try:
        save(state_root, merged)
    except OSError as exc:
        return refused(f"cannot write {path_in(state_root)}: {exc.strerror or exc}",
                       new.serial)
    with contextlib.suppress(OSError):
        (state_root / PENDING_NAME).unlink(missing_ok=True)
    if activity is not None:
        activity.record("fix.revocations.adopted", serial=merged.serial,
                        entries=len(merged.entries))
    log.info("revocation list serial %d adopted (%d revoked versions)", merged.serial,
             len(merged.entries))
    return Received("adopted", merged.serial)


def _keep_pending(state_root: Path, msg: dict[str, Any]) -> None:
    body = {"list_b64": msg.get("list_b64"), "signature": msg.get("signature")}
    data = json.dumps(body).encode()
    if len(data) <= MAX_PENDING_BYTES:
        with contextlib.suppress(OSError):
            keys.write_private_file(state_root / PENDING_NAME, data)


def _pending(state_root: Path) -> dict[str, Any] | None:
    path = state_root / PENDING_NAME
    try:
        if path.stat().st_size > MAX_PENDING_BYTES:
            path.unlink()
            return None
        msg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return msg if isinstance(msg, dict) else None


async def retry_pending_in_child(state_root: Path, relay_keys: tuple[str, ...],
                                 activity: ActivityLog | None = None) -> Received | None:
    """After the relay's fix keys changed (``backline-agent run``): the list kept
    aside, tried again in a child."""
    msg = _pending(state_root)
    if msg is None:
        return None
    if _stale(state_root, msg) is not None:
        with contextlib.suppress(OSError):
            (state_root / PENDING_NAME).unlink(missing_ok=True)
        return Received("stale", 0)
    return await receive_in_child(state_root, msg, relay_keys, activity)


def retry_pending(state_root: Path, relay_keys: tuple[str, ...],
                  activity: ActivityLog | None = None) -> Received | None:
    """After the relay's fix keys changed: the list kept aside, tried again."""
    path = state_root / PENDING_NAME
    msg = _pending(state_root)
    if msg is None:
        return None
    result = receive(state_root, msg, relay_keys, activity)
    if result.outcome != "refused":
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
    return result
