"""Serving a piece of evidence (a recording, a fix run's output, a diagnostics report):
its bytes only when they hash to the digest the audit trail recorded, and each fetch
or refusal audited. One path for every endpoint that serves evidence, so none of them
serves what the trail does not vouch for.

The check itself is :func:`backline.relay.timeline.check_blob` (the trail's digest is
read by relay/audit_evidence.py, shared with the offline bundle verifier); this maps
its answer to the API's: **409** ``digest_mismatch`` / ``row_altered`` /
``not_in_trail`` naming both digests, **500** ``damaged`` when the file cannot be read,
each audited with the caller's refusal action (``recording.refused``,
``evidence.refused``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, BinaryIO

from backline.relay import timeline
from backline.relay.state import Relay
from backline.relay.webauth import ApiError, Principal


def checked_bytes(relay: Relay, what: str, row_sha256: str,
                  trail: timeline.TrailDigest | None, *, action: str, target: str,
                  **details: Any) -> bytes:
    """The bytes of ``what`` (words: ``fix run fr_1``) when they are what the trail
    recorded; an audited :class:`ApiError` (``action`` on ``target``, with
    ``details``) otherwise. For evidence its writer bounds (a fix's capped output, a
    diagnostics report); a recording goes through :func:`checked_file`."""
    with _refusals(what, action, target, details):
        return timeline.check_blob(relay.blobs, what, row_sha256, trail)
    raise AssertionError("unreachable")  # pragma: no cover (the with raises or returns)


async def checked_file(relay: Relay, what: str, row_sha256: str,
                       trail: timeline.TrailDigest | None, *, action: str, target: str,
                       **details: Any) -> tuple[BinaryIO, int]:
    """:func:`checked_bytes` for evidence of any size (a recording may be gigabytes):
    the open file and its size, hashed in pieces off the event loop, to be streamed
    from that file (:func:`streamed`), never held whole in memory."""
    with _refusals(what, action, target, details):
        return await asyncio.to_thread(timeline.check_blob_file, relay.blobs, what,
                                       row_sha256, trail)
    raise AssertionError("unreachable")  # pragma: no cover


async def streamed(f: BinaryIO) -> AsyncIterator[bytes]:
    """What :func:`checked_file` checked, from the same open file, a piece at a time
    (read off the event loop); the file is closed at the end or when the client goes."""
    from backline.relay.blobs import CHUNK

    try:
        while chunk := await asyncio.to_thread(f.read, CHUNK):
            yield chunk
    finally:
        f.close()


@contextlib.contextmanager
def _refusals(what: str, action: str, target: str, details: dict[str, Any]) -> Iterator[None]:
    try:
        yield
    except timeline.EvidenceMismatch as exc:
        raise ApiError(409, exc.reason, exc.detail, action=action, target=target,
                       reason=exc.reason, trail_sha256=exc.trail.sha256 if exc.trail else "",
                       actual_sha256=exc.actual, **details) from None
    except OSError as exc:
        raise ApiError(500, "damaged", f"the stored {what} cannot be read: {exc}",
                       action=action, target=target, **details) from None


def viewed(relay: Relay, who: Principal, session_id: str, evidence_id: str, kind: str,
           trail: timeline.TrailDigest, data: bytes) -> None:
    """Audit the serving of a session's fix output or diagnostics report
    (``evidence.viewed``), whichever endpoint served it: the event lands in the
    session's timeline."""
    relay.record(who.actor, "evidence.viewed", f"session:{session_id}", evidence=evidence_id,
                 kind=kind, sha256=trail.sha256, bytes=len(data), address=who.address)
