"""The audit trail: append-only, hash-chained, with signed checkpoints.

Each event carries the hash of the one before it, computed over canonical JSON,
so altering, deleting or reordering any record breaks the chain at that record.
Every ``checkpoint_every`` events (or ``checkpoint_seconds``) the relay signs the
chain head with its Ed25519 audit key, so cutting events off the end is caught
too, as long as a checkpoint beyond the cut survives (export them off-site).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.common import keys
from backline.common.protocol import b64d, b64e
from backline.relay.db import insert_if_absent, storable, writing
from backline.relay.schema import audit_checkpoints, audit_events, audit_head

GENESIS = "0" * 64
CHECKPOINT_CONTEXT = b"backline/audit-checkpoint/v1"
MAX_DETAIL_BYTES = 16 * 1024
#: The largest ``seq`` the column holds (INTEGER: 32 bits in PostgreSQL).
SEQ_MAX = 2**31 - 1


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_hash(seq: int, at: float, actor: str, action: str, target: str, details: str,
               prev_hash: str) -> str:
    body = canonical({"seq": seq, "time": at, "actor": actor, "action": action,
                      "target": target, "details": details, "prev_hash": prev_hash})
    return hashlib.sha256(body.encode()).hexdigest()


def checkpoint_payload(seq: int, head_hash: str) -> bytes:
    return b"\0".join([CHECKPOINT_CONTEXT, str(seq).encode(), head_hash.encode()])


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    checkpoint_seq: int | None
    broken_seq: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "checkpoint_seq": self.checkpoint_seq,
                "broken_seq": self.broken_seq, "reason": self.reason}

    def describe(self) -> str:
        reached = (f"last signed checkpoint at #{self.checkpoint_seq}"
                   if self.checkpoint_seq else "no signed checkpoint yet")
        if self.ok:
            return f"OK: {self.events} events, chain intact, {reached}"
        return f"BROKEN at record #{self.broken_seq}: {self.reason} ({reached})"


def _clip(text: str, limit: int = 256) -> str:
    """``text`` as its column stores it (:func:`storable`, at most ``limit`` characters):
    the hash is over what is stored, or ``audit verify`` would call it altered."""
    text = storable(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _lock_head(conn: sa.Connection) -> Any:
    """The chain head, locked until the commit (``FOR UPDATE``; SQLite's writers are
    serialised by ``BEGIN IMMEDIATE`` already). The first append creates the row: two
    PostgreSQL writers (nodes, or a command and the server) can both find it missing,
    so it is inserted with ``ON CONFLICT DO NOTHING`` and then locked, rather than
    inserted with the first event, which made the second writer's insert fail."""
    locked = (sa.select(audit_head.c.seq, audit_head.c.hash)
              .where(audit_head.c.id == 1).with_for_update())
    head = conn.execute(locked).first()
    if head is None:
        conn.execute(insert_if_absent(conn, audit_head).values(id=1, seq=0, hash=GENESIS))
        head = conn.execute(locked).first()
    return head


class AuditLog:
    """Appends events and verifies the chain. Safe to share across threads."""

    def __init__(self, engine: sa.Engine, signing_key: keys.PrivateKey,
                 checkpoint_every: int = 100, checkpoint_seconds: float = 60.0) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.public_key = keys.public_raw(signing_key)
        self.key_id = keys.fingerprint(self.public_key)[:16]
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = threading.Lock()
        self._last_checkpoint_time = time.time()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    # --- writing -------------------------------------------------------------------

    def append(self, actor: str, action: str, target: str = "",
               details: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.append_many([(actor, action, target, details)])[0]

    def append_many(self, items: list[tuple[str, str, str, dict[str, Any] | None]]
                    ) -> list[dict[str, Any]]:
        """Append events in one transaction: one commit for a burst (a reconnect storm,
        an import) instead of one per event. Checkpoints fall where they are due."""
        rows = []
        with self._lock, writing(self.engine) as conn:
            head = _lock_head(conn)
            seq, digest = head.seq, head.hash
            for actor, action, target, details in items:
                detail_text = storable(canonical(details or {}))
                if len(detail_text.encode()) > MAX_DETAIL_BYTES:
                    detail_text = canonical({"truncated": True, "preview": detail_text[:1024]})
                prev_hash, seq, at = digest, seq + 1, round(time.time(), 6)
                row = {"seq": seq, "time": at, "actor": _clip(actor),
                       "action": _clip(action, 128), "target": _clip(target),
                       "details": detail_text, "prev_hash": prev_hash}
                digest = row["hash"] = event_hash(
                    seq, at, row["actor"], row["action"], row["target"], detail_text, prev_hash)
                rows.append(row)
                if seq % self.checkpoint_every == 0:
                    self._write_checkpoint(conn, seq, digest)
            if not rows:
                return []
            conn.execute(audit_events.insert(), rows)
            conn.execute(audit_head.update().where(audit_head.c.id == 1)
                         .values(seq=seq, hash=digest))
            if (seq % self.checkpoint_every
                    and time.time() - self._last_checkpoint_time >= self.checkpoint_seconds):
                self._write_checkpoint(conn, seq, digest)
        events = [{"seq": r["seq"], "time": r["time"], "actor": r["actor"],
                   "action": r["action"], "target": r["target"],
                   "details": json.loads(r["details"])} for r in rows]
        for event in events:
            for listener in list(self.listeners):
                listener(event)
        return events

    def checkpoint_if_due(self) -> None:
        """Called periodically: sign the head if events arrived since the last checkpoint."""
        if time.time() - self._last_checkpoint_time < self.checkpoint_seconds:
            return
        self.checkpoint()

    def checkpoint(self) -> int | None:
        with self._lock, writing(self.engine) as conn:
            head = conn.execute(sa.select(audit_head).with_for_update()).first()
            if head is None or head.seq == 0:
                return None
            last = conn.execute(sa.select(sa.func.max(audit_checkpoints.c.seq))).scalar()
            if last == head.seq:
                self._last_checkpoint_time = time.time()
                return head.seq
            self._write_checkpoint(conn, head.seq, head.hash)
            return head.seq

    def _write_checkpoint(self, conn: sa.Connection, seq: int, digest: str) -> None:
        signature = self.signing_key.sign(checkpoint_payload(seq, digest))
        conn.execute(audit_checkpoints.insert().values(
            seq=seq, hash=digest, time=time.time(), key_id=self.key_id,
            signature=b64e(signature)))
        self._last_checkpoint_time = time.time()

    # --- reading -------------------------------------------------------------------

    def query(self, *, actor: str | None = None, action: str | None = None,
              target: str | None = None, since: float | None = None,
              until: float | None = None, before_seq: int | None = None,
              limit: int = 50) -> list[dict[str, Any]]:
        """Newest first, keyset-paged by ``before_seq`` so page 10,000 costs what page 1 does."""
        q = sa.select(audit_events).order_by(audit_events.c.seq.desc()).limit(limit)
        if actor:
            q = q.where(audit_events.c.actor == actor)
        if action:
            # A prefix, case-sensitive in both databases: SQLite's LIKE ignores ASCII
            # case ("AUTH." matched "auth.login" there and nothing in PostgreSQL).
            q = q.where(sa.func.substr(audit_events.c.action, 1, len(action)) == action)
        if target:
            q = q.where(audit_events.c.target == target)
        if since is not None:
            q = q.where(audit_events.c.time >= since)
        if until is not None:
            q = q.where(audit_events.c.time < until)
        if before_seq is not None and before_seq <= SEQ_MAX:
            # Beyond the INTEGER column every seq is before it (and PostgreSQL refused
            # the comparison: integer out of range, a 500 where SQLite answered).
            q = q.where(audit_events.c.seq < before_seq)
        with self.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        return [row_to_event(r) for r in rows]

    def export(self, since: float | None = None) -> Iterator[dict[str, Any]]:
        """Every event (oldest first) with its hashes, streamed in chunks."""
        after = 0
        while True:
            q = (sa.select(audit_events).where(audit_events.c.seq > after)
                 .order_by(audit_events.c.seq).limit(1000))
            if since is not None:
                q = q.where(audit_events.c.time >= since)
            with self.engine.connect() as conn:
                rows = conn.execute(q).mappings().all()
            if not rows:
                return
            for r in rows:
                yield {**row_to_event(r), "prev_hash": r["prev_hash"], "hash": r["hash"]}
            after = rows[-1]["seq"]

    def export_checkpoints(self) -> Iterator[dict[str, Any]]:
        """Every signed checkpoint (oldest first): kept off-site, they let ``audit
        verify`` elsewhere prove the trail was not cut short after them."""
        q = sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq)
        with self.engine.connect() as conn:
            for r in conn.execute(q).mappings():
                yield {"seq": r["seq"], "hash": r["hash"], "time": r["time"],
                       "key_id": r["key_id"], "signature": r["signature"]}

    def verify(self, public_key: bytes | None = None) -> VerifyResult:
        return verify_chain(self.engine, public_key or self.public_key)


def row_to_event(r: Any) -> dict[str, Any]:
    return {"seq": r["seq"], "time": r["time"], "actor": r["actor"], "action": r["action"],
            "target": r["target"], "details": json.loads(r["details"])}


def verify_chain(engine: sa.Engine, public_key: bytes) -> VerifyResult:
    """Walk the whole trail; name the first record that does not hold."""
    with engine.connect() as conn:
        checkpoints = conn.execute(
            sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).mappings().all()
        head = conn.execute(sa.select(audit_head)).mappings().first()
    for cp in checkpoints:
        try:
            good = keys.verify(public_key, b64d(cp["signature"]),
                               checkpoint_payload(cp["seq"], cp["hash"]))
        except ValueError:
            good = False
        if not good:
            return VerifyResult(False, 0, None, cp["seq"],
                                f"checkpoint at #{cp['seq']} has a bad signature")
    by_seq = {cp["seq"]: cp for cp in checkpoints}
    prev_hash, expected_seq, count, reached = GENESIS, 1, 0, None
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_events).where(audit_events.c.seq > after)
                .order_by(audit_events.c.seq).limit(5000)).mappings().all()
        if not rows:
            break
        for r in rows:
            seq = r["seq"]
            if seq != expected_seq:
                return VerifyResult(False, count, reached, expected_seq,
                                    f"record #{expected_seq} is missing (next is #{seq})")
            if r["prev_hash"] != prev_hash:
                return VerifyResult(False, count, reached, seq,
                                    "its prev_hash does not match the record before it")
            digest = event_hash(seq, r["time"], r["actor"], r["action"], r["target"],
                                r["details"], r["prev_hash"])
            if digest != r["hash"]:
                return VerifyResult(False, count, reached, seq,
                                    "its contents do not match its hash (altered)")
            cp = by_seq.get(seq)
            if cp is not None:
                if cp["hash"] != digest:
                    return VerifyResult(False, count, reached, seq,
                                        "it differs from the signed checkpoint")
                reached = seq
            prev_hash, expected_seq, count = digest, seq + 1, count + 1
        after = rows[-1]["seq"]
    last_seq = expected_seq - 1
    beyond = [cp["seq"] for cp in checkpoints if cp["seq"] > last_seq]
    if beyond:
        return VerifyResult(False, count, reached, last_seq + 1,
                            f"events were cut off: the trail ends at #{last_seq} but a signed "
                            f"checkpoint vouches for #{beyond[-1]}")
    if head is not None and (head["seq"] != last_seq or head["hash"] != prev_hash):
        return VerifyResult(False, count, reached, last_seq + 1,
                            f"events were cut off: the chain head says #{head['seq']} "
                            f"but the trail ends at #{last_seq}")
    return VerifyResult(True, count, reached)
