"""The revocation list this agent keeps (``fix_revocations.json`` in its state dir).

The relay pushes its signed list on the control socket (``fix_revocations``, after
``welcome`` and whenever a fix is revoked). The agent takes one only when a relay fix
key it pinned signed it; its entries are then UNIONED with what it kept, and the kept
serial becomes the greater of the two. The serial orders lists, it does not gate
revocations: a validly signed list whose serial is not above the kept one (a serial the
relay reused, after a restore, before its serials only grew) still adds every entry
the agent lacked, so no revocation is ever lost to a serial, and none, however new the
list, is ever lifted. The merged list is the agent's own record (not re-signed),
written atomically (temp file and rename, 0600): a crash leaves the old list or the new.
Merges are serialized (a lock file in the state dir, held while the kept list is read,
merged and written, and one child at a time in the running agent): two lists pushed
at once cannot both start from the same kept list and lose one's entries.

A list too large for one control message is not pushed whole: the relay sends the same
message with an empty ``list_b64`` and ``signature`` (an announcement), and the agent
fetches the list from ``GET /agent/fix-revocations`` over the TLS pins it holds
(agent/relayget.py, bounded in size and time), then merges it by the same rule.

Every run, from the relay or from ``backline-agent fix run``, checks it first. A kept
file that cannot be read fails closed: no fix runs until it is repaired or removed by
the machine's administrator (:class:`KeptListError`).

A pushed list that can add nothing (its serial not above the kept one and every entry
already kept, read without checking its signature) is dropped before its signature is
checked: the same list, pushed at every reconnection, costs nothing (no SSH-signature
machinery is loaded into an idle agent for it).

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
import inspect
import json
import logging
import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.agent.activity import ActivityLog
from backline.common import keys

if TYPE_CHECKING:
    from backline.common.fixes.revocation import RevocationList

log = logging.getLogger("backline.agent.fixes")

FILE_NAME = "fix_revocations.json"
PENDING_NAME = "fix_revocations.pending.json"
#: The serial and SHA-256 of the last announced list fetched and merged: the same
#: announcement again (every welcome repeats it) is not fetched again.
FETCHED_NAME = "fix_revocations.fetched.json"
LOCK_NAME = "fix_revocations.lock"
MAX_PENDING_BYTES = 64 * 1024
CONTEXT = b"backline fix revocations v1\n"
#: Where a list too large for a control message is fetched (fixround-relay's wire
#: shape; common/fixes/revocation.py names them where it has them).
FETCH_PATH = "/agent/fix-revocations"
MAX_FETCH_ANSWER = 9 * 1024 * 1024
MAX_FETCHED_LIST_BYTES = 6 * 1024 * 1024
FETCH_TIMEOUT_S = 10.0


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


def load(state_root: Path | None) -> RevocationList:
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


def save(state_root: Path, rl: RevocationList) -> None:
    """Write ``rl`` as the kept list, atomically (0600)."""
    data = json.dumps(rl.as_dict(), sort_keys=True, indent=1) + "\n"
    keys.write_private_file(path_in(state_root), data.encode())


def is_announcement(msg: dict[str, Any]) -> bool:
    """An empty ``list_b64`` and ``signature``: the list is to be fetched."""
    return msg.get("list_b64") == "" and msg.get("signature") == ""


def _keys_of(entries: object) -> set[tuple[object, object, object]] | None:
    if not isinstance(entries, list):
        return None
    found = set()
    for e in entries:
        if not isinstance(e, dict):
            return None
        found.add((e.get("id"), e.get("version"), e.get("digest")))
    return found


def _peek(list_b64: object) -> tuple[int, set[tuple[object, object, object]]] | None:
    """The serial and entry keys a pushed list claims (unverified), or None."""
    if not isinstance(list_b64, str):
        return None
    try:
        data = base64.b64decode(list_b64, validate=True)
        if not data.startswith(CONTEXT):
            return None
        body = json.loads(data[len(CONTEXT):])
        serial, entries = body["serial"], _keys_of(body["entries"])
    except (binascii.Error, ValueError, KeyError, TypeError):
        return None
    return (serial, entries) if type(serial) is int and entries is not None else None


def _nothing_new(state_root: Path, msg: dict[str, Any]) -> int | None:
    """The claimed serial when the pushed list can add nothing to the kept one: not a
    greater serial, no entry the kept list lacks (unverified: enough to drop it, never
    to adopt it); else None."""
    claimed = _peek(msg.get("list_b64"))
    if claimed is None:
        return None
    try:
        kept = json.loads(path_in(state_root).read_text(encoding="utf-8"))
        kept_serial, kept_keys = kept["serial"], _keys_of(kept["entries"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if type(kept_serial) is not int or kept_keys is None:
        return None
    serial, entries = claimed
    return serial if serial <= kept_serial and entries <= kept_keys else None


@contextlib.contextmanager
def _locked(state_root: Path) -> Iterator[None]:
    """The kept list's lock (``flock`` on a file beside it; where there is no
    ``fcntl`` the in-process lock of :func:`receive_in_child` is all there is)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    fd = os.open(state_root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_tasks: set[asyncio.Task[Received]] = set()


#: Per state dir: the merge running now, and the newest list pushed meanwhile.
_busy: dict[str, asyncio.Task[Received]] = {}
_next: dict[str, tuple[dict[str, Any], tuple[str, ...], ActivityLog | None]] = {}


def _announced(msg: dict[str, Any]) -> tuple[int, str] | None:
    """(serial, sha256) an announcement names (relays since review 12b), or None."""
    serial, sha = msg.get("serial"), msg.get("sha256")
    if type(serial) is int and serial > 0 and isinstance(sha, str) and len(sha) == 64:
        return serial, sha
    return None


def fetched_already(state_root: Path, msg: dict[str, Any]) -> bool:
    """Whether ``msg`` announces the very list last fetched and merged here (same
    serial and SHA-256, and the kept list has at least that serial)."""
    named = _announced(msg) if is_announcement(msg) else None
    if named is None:
        return False
    try:
        noted = json.loads((state_root / FETCHED_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(noted, dict) and (noted.get("serial"), noted.get("sha256")) == named \
        and kept_serial(state_root) >= named[0]


def _note_fetched(state_root: Path, msg: dict[str, Any], merged_serial: int) -> None:
    named = _announced(msg)
    if named is not None and merged_serial >= named[0]:
        with contextlib.suppress(OSError):
            keys.write_private_file(state_root / FETCHED_NAME, json.dumps(
                {"serial": named[0], "sha256": named[1]}).encode())


def schedule(state_root: Path, msg: dict[str, Any], relay_keys: tuple[str, ...],
             activity: ActivityLog | None = None) -> asyncio.Task[Received] | None:
    """From the control loop (``backline-agent run``): a list that can add nothing is
    dropped at once; another is checked and merged in a child process
    (agent/fixes/child.py), in the background, so the long-lived agent loads no
    signature machinery. One merge at a time: lists pushed while one runs are
    coalesced, the newest waiting for its turn (the relay's list is its whole history,
    so the newest holds every earlier one; the entries are unioned anyway), so a burst
    of revocations costs a few children, not one each."""
    if not is_announcement(msg) and _nothing_new(state_root, msg) is not None:
        return None
    if fetched_already(state_root, msg):
        return None
    key = str(state_root)
    running = _busy.get(key)
    if running is not None and not running.done():
        _next[key] = (msg, relay_keys, activity)
        return running
    task = asyncio.ensure_future(_merge_in_turn(key, state_root, msg, relay_keys, activity))
    _busy[key] = task
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
    return task


async def _merge_in_turn(key: str, state_root: Path, msg: dict[str, Any],
                         relay_keys: tuple[str, ...], activity: ActivityLog | None
                         ) -> Received:
    try:
        result = await receive_in_child(state_root, msg, relay_keys, activity)
        while key in _next:
            msg, relay_keys, activity = _next.pop(key)
            if is_announcement(msg) or _nothing_new(state_root, msg) is None:
                result = await receive_in_child(state_root, msg, relay_keys, activity)
        return result
    finally:
        _busy.pop(key, None)
        _next.pop(key, None)


_merging: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary())


def _merge_lock() -> asyncio.Lock:
    """This event loop's lock: one merging child at a time."""
    return _merging.setdefault(asyncio.get_running_loop(), asyncio.Lock())


async def receive_in_child(state_root: Path, msg: dict[str, Any],
                           relay_keys: tuple[str, ...],
                           activity: ActivityLog | None = None) -> Received:
    """:func:`receive`, run by a child process; the outcome is logged here."""
    from backline.agent.fixes.child import FixChildFailed, receive_revocations

    try:
        async with _merge_lock():  # one child at a time (each also takes the file lock)
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
    """Merge a pushed ``fix_revocations`` message (or, for an announcement, the list
    fetched from the relay) into the kept list, under the lock; log the outcome."""
    fetched = is_announcement(msg)
    if not fetched:
        claimed = _nothing_new(state_root, msg)
        if claimed is not None:
            return Received("stale", claimed)

    def refused(detail: str, serial: int = 0) -> Received:
        log.warning("a revocation list from the relay was refused: %s", detail)
        if activity is not None:
            activity.record("fix.revocations.refused", serial=serial or None, detail=detail)
        return Received("refused", serial, detail)

    if fetched:
        if fetched_already(state_root, msg):
            return Received("stale", kept_serial(state_root), "fetched already")
        try:
            got = asyncio.run(fetch(state_root))
        except Exception as exc:  # unreachable, refused, malformed: said, retried later
            return refused(f"the announced list could not be fetched: {str(exc)[:200]}")
        if got is None:
            return Received("stale", 0, "the relay has nothing revoked")
        announced, msg = msg, got
    with _locked(state_root):
        result = _merge_locked(state_root, msg, relay_keys, activity, refused, fetched)
    if fetched and result.outcome != "refused":
        _note_fetched(state_root, announced, kept_serial(state_root))
    return result


def _decode(msg: dict[str, Any], fetched: bool) -> tuple[RevocationList, str]:
    from backline.common.fixes.revocation import decode_message

    body = {**msg, "type": "fix_revocations"}
    if fetched and "max_bytes" in inspect.signature(decode_message).parameters:
        limit = MAX_FETCHED_LIST_BYTES
        from backline.common.fixes import revocation

        limit = getattr(revocation, "MAX_FETCHED_LIST_BYTES", limit)
        return decode_message(body, max_bytes=limit)  # type: ignore[call-arg]
    return decode_message(body)


def _merge_locked(state_root: Path, msg: dict[str, Any], relay_keys: tuple[str, ...],
                  activity: ActivityLog | None, refused: Callable[[str, int], Received],
                  fetched: bool) -> Received:
    from backline.common.fixes.revocation import RevocationError, make, verify
    from backline.common.fixes.signing import SigningError

    try:
        new, signature = _decode(msg, fetched)
    except RevocationError as exc:
        return refused(str(exc)[:300], 0)
    try:
        kept = load(state_root)
    except KeptListError as exc:
        return refused(str(exc)[:300], new.serial)
    try:
        signer = verify(new, signature, relay_keys)
    except (SigningError, ValueError) as exc:
        return refused(f"bad_signature ({str(exc)[:200]})", new.serial)
    if signer is None:
        if not fetched:
            _keep_pending(state_root, msg)
        return refused("bad_signature: not signed by a relay fix key this agent pinned",
                       new.serial)
    try:
        merged = make(max(kept.serial, new.serial), (*kept.entries, *new.entries))
    except RevocationError as exc:  # more entries than a list holds: keep what is kept
        return refused(f"cannot merge: {exc}", new.serial)
    if merged == kept:
        return Received("stale", new.serial)
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


async def fetch(state_root: Path) -> dict[str, Any] | None:
    """The relay's whole list, ``GET /agent/fix-revocations`` over the pinned TLS of
    this agent's enrollment, bounded (``None``: HTTP 404, nothing is revoked)."""
    from backline.agent import relayget
    from backline.agent.state import StateDir
    from backline.common.fixes import revocation

    enrollment = StateDir(state_root).load_enrollment()
    limit = getattr(revocation, "MAX_FETCH_ANSWER", MAX_FETCH_ANSWER)
    code, body, _ = await relayget.get(enrollment.relay_url, enrollment.trust,
                                       getattr(revocation, "FETCH_PATH", FETCH_PATH), limit,
                                       FETCH_TIMEOUT_S)
    if code == 404:
        return None
    if code != 200:
        raise relayget.RelayAnswerError(f"HTTP {code}")
    answer = json.loads(body)
    if not isinstance(answer, dict) or set(answer) - {"type", "list_b64", "signature"}:
        raise ValueError("the answer is not a fix_revocations object")
    if is_announcement(answer):
        raise ValueError("the relay answered an announcement, not a list")
    return answer


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
    if _nothing_new(state_root, msg) is not None:
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
