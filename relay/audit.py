"""The audit trail: append-only, hash-chained, with signed checkpoints and a Merkle tree.

Each event carries the hash of the one before it, computed over canonical JSON,
so altering, deleting or reordering any record breaks the chain at that record.
Every ``checkpoint_every`` events (or ``checkpoint_seconds``) the relay signs the
chain head with its Ed25519 audit key, so cutting events off the end is caught
too, as long as a checkpoint beyond the cut survives (export them off-site).

Beside the chain, the same events are the leaves of an RFC 6962 Merkle tree (leaf i
is ``SHA-256(0x00 || body)`` of event ``seq`` i+1, the body being what
:func:`event_hash` hashes), kept in ``audit_tree`` in the append's own transaction,
and every checkpoint is also a C2SP signed note over the tree's root
(relay/audit_note.py). The tree gives what the chain cannot: a proof that one event is
in the trail, or that an old checkpoint is a prefix of a new one, in O(log n) hashes
(docs/audit-proofs.md says why both are kept).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from backline.common import keys
from backline.common.protocol import b64d, b64e
from backline.relay import audit_note, audit_tree
from backline.relay.db import insert_if_absent, storable, writing
from backline.relay.schema import (
    audit_checkpoints,
    audit_events,
    audit_head,
    audit_notes,
)
from backline.relay.schema import (
    audit_tree as tree_table,
)

log = logging.getLogger("backline.relay.audit")

GENESIS = "0" * 64
CHECKPOINT_CONTEXT = b"backline/audit-checkpoint/v1"
MAX_DETAIL_BYTES = 16 * 1024
#: The largest ``seq`` the column holds (INTEGER: 32 bits in PostgreSQL).
SEQ_MAX = 2**31 - 1


def canonical(obj: Any) -> str:
    """Canonical JSON: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_body(seq: int, at: float, actor: str, action: str, target: str, details: str,
               prev_hash: str) -> bytes:
    """What the chain hashes and the tree's leaf is made of: canonical JSON, UTF-8."""
    return canonical({"seq": seq, "time": at, "actor": actor, "action": action,
                      "target": target, "details": details, "prev_hash": prev_hash}).encode()


def event_hash(seq: int, at: float, actor: str, action: str, target: str, details: str,
               prev_hash: str) -> str:
    return hashlib.sha256(
        event_body(seq, at, actor, action, target, details, prev_hash)).hexdigest()


def row_body(r: Any) -> bytes:
    """:func:`event_body` of a stored row (a mapping with the audit_events columns)."""
    return event_body(r["seq"], r["time"], r["actor"], r["action"], r["target"],
                      r["details"], r["prev_hash"])


def tree_size(conn: sa.Connection) -> int:
    """How many leaves the stored tree has (its last level-0 node, by the primary key)."""
    last = conn.execute(sa.select(sa.func.max(tree_table.c.idx))
                        .where(tree_table.c.level == 0)).scalar()
    return 0 if last is None else last + 1


def fetch_nodes(conn: sa.Connection, nodes: set[audit_tree.Node]) -> dict[audit_tree.Node, bytes]:
    """The stored hashes of ``nodes``, in one read per 400 nodes."""
    out: dict[audit_tree.Node, bytes] = {}
    by_level: dict[int, list[int]] = {}
    for level, idx in nodes:
        by_level.setdefault(level, []).append(idx)
    # Per level, ``idx IN (...)``: both databases answer it from the primary key (a
    # row-value IN made SQLite scan the table: an append cost 16 ms at 10,000 events).
    for level, idxs in sorted(by_level.items()):
        idxs.sort()
        for i in range(0, len(idxs), 400):
            q = sa.select(tree_table.c.idx, tree_table.c.hash).where(
                tree_table.c.level == level, tree_table.c.idx.in_(idxs[i:i + 400]))
            for idx, digest in conn.execute(q):
                out[(level, idx)] = bytes(digest)
    return out


class TreeError(LookupError):
    """The stored tree lacks a node a root or proof needs (not built, or tampered with)."""


_INSERT_NODE_QMARK = "INSERT INTO audit_tree (level, idx, hash) VALUES (?, ?, ?)"
_INSERT_NODE_FORMAT = "INSERT INTO audit_tree (level, idx, hash) VALUES (%s, %s, %s)"


class _TreeWriter:
    """The tree's side of one append transaction: the frontier read once, the new
    nodes kept in memory and inserted with the events."""

    def __init__(self, conn: sa.Connection, size: int,
                 cached: tuple[int, dict[audit_tree.Node, bytes]] | None = None) -> None:
        self.conn = conn
        self.new: dict[audit_tree.Node, bytes] = {}
        if cached is not None and cached[0] == size:
            # This process wrote the last append (the head, locked, says so): its
            # frontier is still the tree's, and reading it again is most of the cost.
            self.size, self.known = size, dict(cached[1])
            return
        built = tree_size(conn)
        if built > size:
            raise TreeError(f"the audit tree has {built} leaves but the trail {size} events")
        self.size = built
        self.known = fetch_nodes(conn, set(audit_tree.subtrees(0, built)))
        if built < size:  # a trail from before migration 0008, or a node that lagged
            for row in _event_rows(conn, built, size):
                self.append(audit_tree.leaf_hash(row_body(row)))

    def get(self, node: audit_tree.Node) -> bytes:
        found = self.new.get(node) or self.known.get(node)
        if found is None:
            raise TreeError(f"the audit tree lacks node {node}")
        return found

    def append(self, leaf: bytes) -> None:
        for node, digest in audit_tree.append_leaf(self.size, leaf, self.get):
            self.new[node] = digest
        self.size += 1

    def root(self) -> bytes:
        return audit_tree.range_hash(0, self.size, self.get)

    def frontier(self) -> tuple[int, dict[audit_tree.Node, bytes]]:
        every = {**self.known, **self.new}
        return self.size, {n: every[n] for n in audit_tree.subtrees(0, self.size)}

    def flush(self) -> None:
        if self.new:
            # The driver's own executemany: through SQLAlchemy's per-row parameter
            # processing this insert was most of an append's added cost.
            sql = (_INSERT_NODE_QMARK if self.conn.dialect.paramstyle == "qmark"
                   else _INSERT_NODE_FORMAT)
            self.conn.exec_driver_sql(sql, [(lv, ix, h) for (lv, ix), h in self.new.items()])
            self.known.update(self.new)
            self.new = {}


def _event_rows(conn: sa.Connection, after: int, upto: int) -> Iterator[Any]:
    while after < upto:
        rows = conn.execute(
            sa.select(audit_events).where(audit_events.c.seq > after,
                                          audit_events.c.seq <= upto)
            .order_by(audit_events.c.seq).limit(5000)).mappings().all()
        if not rows:
            return
        yield from rows
        after = rows[-1]["seq"]


def checkpoint_payload(seq: int, head_hash: str) -> bytes:
    return b"\0".join([CHECKPOINT_CONTEXT, str(seq).encode(), head_hash.encode()])


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    events: int
    checkpoint_seq: int | None
    broken_seq: int | None = None
    reason: str = ""
    #: The tree's root over every event (hex), when the walk got to the end.
    root: str = ""
    #: How many checkpoints kept outside the database the trail reproduced.
    external: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "checkpoint_seq": self.checkpoint_seq,
                "broken_seq": self.broken_seq, "reason": self.reason, "root": self.root}

    def describe(self) -> str:
        reached = (f"last signed checkpoint at #{self.checkpoint_seq}"
                   if self.checkpoint_seq else "no signed checkpoint yet")
        if self.ok:
            tree = " and Merkle tree" if self.events else ""
            sinks = (f", {self.external} external checkpoints reproduced"
                     if self.external else "")
            return f"OK: {self.events} events, chain{tree} intact, {reached}{sinks}"
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
                 checkpoint_every: int = 100, checkpoint_seconds: float = 60.0,
                 origin: str = "", sinks: list[Any] | None = None) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.public_key = keys.public_raw(signing_key)
        self.key_id = keys.fingerprint(self.public_key)[:16]
        #: The checkpoints' origin line and signing key name (c2sp.org/tlog-checkpoint).
        self.origin = origin or default_origin(self.public_key)
        #: Where each new checkpoint note is also written (relay/audit_sinks.py).
        self.sinks: list[Any] = list(sinks or [])
        for sink in self.sinks:  # a sink with a thread of its own reports through us
            if hasattr(sink, "on_failure"):
                sink.on_failure = self.sink_failed
        #: Checkpoint sink failures since start (relay/audit_sinks.py).
        self.sink_failures = 0
        #: ``(sink, reason, error)``: the relay audits them (relay/state.py).
        self.on_sink_failure: Callable[[str, str, str], None] | None = None
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_seconds = checkpoint_seconds
        self._lock = threading.Lock()
        self._last_checkpoint_time = time.time()
        #: (tree size, its frontier) as this process last committed it.
        self._frontier: tuple[int, dict[audit_tree.Node, bytes]] | None = None
        self.listeners: list[Callable[[dict[str, Any]], None]] = []

    # --- writing -------------------------------------------------------------------

    def append(self, actor: str, action: str, target: str = "",
               details: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.append_many([(actor, action, target, details)])[0]

    def append_many(self, items: list[tuple[str, str, str, dict[str, Any] | None]],
                    claim: Callable[[sa.Connection], bool] | None = None
                    ) -> list[dict[str, Any]]:
        """Append events in one transaction: one commit for a burst (a reconnect storm,
        an import) instead of one per event. Checkpoints fall where they are due.

        ``claim`` runs first in that transaction (the head locked): it writes a row that
        says "this was recorded" and returns False when that row was there already; then
        nothing is appended (``[]``). The row and the events commit together or not at
        all, so something reported again after a crash or a lost answer is recorded
        exactly once (a self-service fix run: relay/fixes/self_service.py)."""
        rows = []
        notes: list[str] = []
        with self._lock, writing(self.engine) as conn:
            head = _lock_head(conn)
            if claim is not None and not claim(conn):
                return []
            seq, digest = head.seq, head.hash
            tree = _TreeWriter(conn, seq, self._frontier) if items else None
            self._frontier = None  # until this transaction commits
            for actor, action, target, details in items:
                assert tree is not None
                detail_text = storable(canonical(details or {}))
                if len(detail_text.encode()) > MAX_DETAIL_BYTES:
                    detail_text = canonical({"truncated": True, "preview": detail_text[:1024]})
                prev_hash, seq, at = digest, seq + 1, round(time.time(), 6)
                row = {"seq": seq, "time": at, "actor": _clip(actor),
                       "action": _clip(action, 128), "target": _clip(target),
                       "details": detail_text, "prev_hash": prev_hash}
                body = event_body(seq, at, row["actor"], row["action"], row["target"],
                                  detail_text, prev_hash)
                digest = row["hash"] = hashlib.sha256(body).hexdigest()
                tree.append(audit_tree.leaf_hash(body))
                rows.append(row)
                if seq % self.checkpoint_every == 0:
                    notes.append(self._write_checkpoint(conn, seq, digest, tree.root()))
            if not rows or tree is None:
                return []
            conn.execute(audit_events.insert(), rows)
            tree.flush()
            conn.execute(audit_head.update().where(audit_head.c.id == 1)
                         .values(seq=seq, hash=digest))
            if (seq % self.checkpoint_every
                    and time.time() - self._last_checkpoint_time >= self.checkpoint_seconds):
                notes.append(self._write_checkpoint(conn, seq, digest, tree.root()))
            frontier = tree.frontier()
        self._frontier = frontier
        self._to_sinks(notes)
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
        note = ""
        with self._lock, writing(self.engine) as conn:
            head = conn.execute(sa.select(audit_head).with_for_update()).first()
            if head is None or head.seq == 0:
                return None
            last = conn.execute(sa.select(sa.func.max(audit_notes.c.size))).scalar()
            if last == head.seq:
                self._last_checkpoint_time = time.time()
                return head.seq
            # A trail from before migration 0008 may have the chain's checkpoint at the
            # head already: then only the note is added.
            legacy = conn.execute(sa.select(audit_checkpoints.c.seq)
                                  .where(audit_checkpoints.c.seq == head.seq)).first()
            tree = _TreeWriter(conn, head.seq)
            tree.flush()
            note = self._write_checkpoint(conn, head.seq, head.hash, tree.root(),
                                          chain=legacy is None)
        self._to_sinks([note])
        return head.seq

    def _write_checkpoint(self, conn: sa.Connection, seq: int, digest: str,
                          root: bytes, chain: bool = True) -> str:
        """Sign the chain head (the checkpoint ``audit verify`` has always read; unless
        ``chain`` is false) and the tree's root as a C2SP checkpoint note; returns the
        note."""
        now = time.time()
        if chain:
            signature = self.signing_key.sign(checkpoint_payload(seq, digest))
            conn.execute(audit_checkpoints.insert().values(
                seq=seq, hash=digest, time=now, key_id=self.key_id,
                signature=b64e(signature)))
        note = audit_note.sign(audit_note.checkpoint_text(self.origin, seq, root),
                               self.origin, self.signing_key)
        conn.execute(audit_notes.insert().values(size=seq, root=root.hex(),
                                                 origin=self.origin, note=note, time=now))
        self._last_checkpoint_time = now
        return note

    def _to_sinks(self, notes: list[str]) -> None:
        """After the commit: a sink that fails is logged, never fails the append (the
        checkpoint is in the database; the next one goes to the sink again)."""
        for note in notes:
            for sink in self.sinks:
                try:
                    sink.write(note)
                except Exception as exc:
                    self.sink_failed(str(sink), "write_failed", exc)

    def sink_failed(self, sink: str, reason: str, exc: BaseException | str) -> None:
        """A checkpoint sink failed (here, or in a sink's own thread): logged, counted
        (:attr:`sink_failures`, the metric ``backline_audit_sink_failures``) and handed
        to :attr:`on_sink_failure`, which the running relay sets to audit it
        (``audit.sink.failed``, aggregated). Never raises: the append has committed."""
        log.error("audit checkpoint sink %s failed: %s", sink, exc)
        self.sink_failures += 1
        if self.on_sink_failure is not None:
            try:
                self.on_sink_failure(sink, reason, str(exc)[:500])
            except Exception:
                log.exception("audit checkpoint sink failure could not be reported")

    def ensure_tree(self, progress: Callable[[int, int], None] | None = None,
                    chunk: int = 20000) -> int:
        """Build the tree of events appended before it existed (migration 0008), in
        transactions of ``chunk`` events so that other writers wait at most one chunk;
        ``progress(done, total)`` after each. Returns how many leaves were added."""
        added = 0
        while True:
            with self._lock, writing(self.engine) as conn:
                head = conn.execute(sa.select(audit_head.c.seq)).scalar() or 0
                built = tree_size(conn)
                if built >= head:
                    return added
                upto = min(head, built + chunk)
                tree = _TreeWriter(conn, built)
                for row in _event_rows(conn, built, upto):
                    tree.append(audit_tree.leaf_hash(row_body(row)))
                tree.flush()
                added += upto - built
            if progress:
                progress(upto, head)

    # --- proofs ----------------------------------------------------------------------

    def size(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(audit_head.c.seq)).scalar() or 0

    def _hashes(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        with self.engine.connect() as conn:
            have = fetch_nodes(conn, audit_tree.needed(ranges))

        def get(node: audit_tree.Node) -> bytes:
            if node not in have:
                raise TreeError(f"the audit tree lacks node {node}")
            return have[node]

        return [audit_tree.range_hash(lo, hi, get) for lo, hi in ranges]

    def root(self, size: int) -> bytes:
        return self._hashes([(0, size)])[0] if size else audit_tree.EMPTY_ROOT

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """The hashes proving event ``seq`` is leaf ``seq - 1`` of the tree of ``size``."""
        return self._hashes(audit_tree.inclusion_ranges(seq - 1, size))

    def consistency_proof(self, size1: int, size2: int) -> list[bytes]:
        return self._hashes(audit_tree.consistency_ranges(size1, size2))

    def latest_note(self, at_most: int | None = None) -> dict[str, Any] | None:
        """The newest signed checkpoint note (of size ``at_most`` or less)."""
        q = sa.select(audit_notes).order_by(audit_notes.c.size.desc()).limit(1)
        if at_most is not None:
            q = q.where(audit_notes.c.size <= at_most)
        with self.engine.connect() as conn:
            r = conn.execute(q).mappings().first()
        return None if r is None else dict(r)

    def note_at(self, size: int) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(audit_notes).where(audit_notes.c.size == size)
                             ).mappings().first()
        return None if r is None else dict(r)

    def checkpoint_now(self) -> dict[str, Any] | None:
        """A signed note covering every event so far (signed now if the newest is older).

        The note is the one of the size :meth:`checkpoint` signed (or found): reading the
        head again would name a size an event appended meanwhile made, which has no
        note yet (the caller would answer "the trail is empty")."""
        seq = self.checkpoint()
        return self.note_at(seq) if seq else None

    def rows(self, seqs: list[int]) -> list[dict[str, Any]]:
        """The stored rows of ``seqs`` (oldest first), with their hashes."""
        out: list[dict[str, Any]] = []
        for i in range(0, len(seqs), 500):
            with self.engine.connect() as conn:
                out.extend(dict(r) for r in conn.execute(
                    sa.select(audit_events).where(audit_events.c.seq.in_(seqs[i:i + 500]))
                    .order_by(audit_events.c.seq)).mappings())
        return out

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

    def verify(self, public_key: bytes | None = None,
               against: list[str] | None = None) -> VerifyResult:
        """The chain, the tree and the checkpoints; ``against``: checkpoint notes kept
        outside the database (a sink's file) that the trail must reproduce."""
        return verify_chain(self.engine, public_key or self.public_key, self.origin,
                            against or [])


def default_origin(public_key: bytes) -> str:
    return f"backline-relay/{keys.fingerprint(public_key)[:16]}"


def row_to_event(r: Any) -> dict[str, Any]:
    return {"seq": r["seq"], "time": r["time"], "actor": r["actor"], "action": r["action"],
            "target": r["target"], "details": json.loads(r["details"])}


def _note_checkpoint(note: str, public_key: bytes) -> audit_note.Checkpoint:
    """The checkpoint of ``note`` if ``public_key`` signed it (its key name is its origin)."""
    text, _ = audit_note.split(note)
    origin = text.split("\n", 1)[0]
    return audit_note.parse_checkpoint(audit_note.open_note(note, origin, public_key))


def verify_chain(engine: sa.Engine, public_key: bytes, origin: str = "",
                 against: list[str] | None = None) -> VerifyResult:
    """Walk the whole trail; name the first record that does not hold. The walk also
    rebuilds the Merkle tree from the events: every stored node must be the one the
    events make, and every signed checkpoint note (the database's, and ``against``:
    notes kept outside it) must be the tree's root at its size."""
    with engine.connect() as conn:
        checkpoints = conn.execute(
            sa.select(audit_checkpoints).order_by(audit_checkpoints.c.seq)).mappings().all()
        notes = conn.execute(sa.select(audit_notes).order_by(audit_notes.c.size)
                             ).mappings().all()
        head = conn.execute(sa.select(audit_head)).mappings().first()
        stored_leaves = tree_size(conn)
    for cp in checkpoints:
        try:
            good = keys.verify(public_key, b64d(cp["signature"]),
                               checkpoint_payload(cp["seq"], cp["hash"]))
        except ValueError:
            good = False
        if not good:
            return VerifyResult(False, 0, None, cp["seq"],
                                f"checkpoint at #{cp['seq']} has a bad signature")
    wanted: dict[int, list[tuple[str, bytes]]] = {}
    for n in notes:
        try:
            cp_note = _note_checkpoint(n["note"], public_key)
        except audit_note.NoteError as exc:
            return VerifyResult(False, 0, None, n["size"],
                                f"the checkpoint note of size {n['size']}: {exc}")
        if cp_note.size != n["size"] or cp_note.root.hex() != n["root"]:
            return VerifyResult(False, 0, None, n["size"],
                                f"the checkpoint note of size {n['size']} says otherwise "
                                "than its row")
        wanted.setdefault(cp_note.size, []).append(("the checkpoint note", cp_note.root))
    for i, note in enumerate(against or [], 1):
        try:
            cp_sink = _note_checkpoint(note, public_key)
        except audit_note.NoteError as exc:
            return VerifyResult(False, 0, None, None,
                                f"the external checkpoint #{i} is not this relay's: {exc}")
        wanted.setdefault(cp_sink.size, []).append(
            (f"the external checkpoint #{i} (size {cp_sink.size})", cp_sink.root))
    by_seq = {cp["seq"]: cp for cp in checkpoints}
    prev_hash, expected_seq, count, reached = GENESIS, 1, 0, None
    frontier = audit_tree.Frontier()
    after = 0
    while True:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_events).where(audit_events.c.seq > after)
                .order_by(audit_events.c.seq).limit(5000)).mappings().all()
        if not rows:
            break
        made: dict[audit_tree.Node, tuple[int, bytes]] = {}
        for r in rows:
            seq = r["seq"]
            if seq != expected_seq:
                return VerifyResult(False, count, reached, expected_seq,
                                    f"record #{expected_seq} is missing (next is #{seq})")
            if r["prev_hash"] != prev_hash:
                return VerifyResult(False, count, reached, seq,
                                    "its prev_hash does not match the record before it")
            body = row_body(r)
            digest = hashlib.sha256(body).hexdigest()
            if digest != r["hash"]:
                return VerifyResult(False, count, reached, seq,
                                    "its contents do not match its hash (altered)")
            cp = by_seq.get(seq)
            if cp is not None:
                if cp["hash"] != digest:
                    return VerifyResult(False, count, reached, seq,
                                        "it differs from the signed checkpoint")
                reached = seq
            for node, h in frontier.append(audit_tree.leaf_hash(body)):
                made[node] = (seq, h)
            for what, root in wanted.get(seq, []):
                if frontier.root() != root:
                    return VerifyResult(False, count, reached, seq,
                                        f"{what} is not the root of the events up to it: "
                                        "the trail was rewritten")
            prev_hash, expected_seq, count = digest, seq + 1, count + 1
        with engine.connect() as conn:
            stored = fetch_nodes(conn, set(made))
        for node, (seq, h) in sorted(made.items(), key=lambda item: item[1][0]):
            if stored.get(node) != h:
                state = "is missing" if node not in stored else "differs from the events"
                return VerifyResult(False, count, reached, seq,
                                    f"the Merkle tree's node {node} {state} "
                                    "(run the relay once to build it, or it was altered)")
        after = rows[-1]["seq"]
    last_seq = expected_seq - 1
    beyond = [cp["seq"] for cp in checkpoints if cp["seq"] > last_seq]
    beyond += [size for size in wanted if size > last_seq]
    if beyond:
        return VerifyResult(False, count, reached, last_seq + 1,
                            f"events were cut off: the trail ends at #{last_seq} but a signed "
                            f"checkpoint vouches for #{max(beyond)}")
    if head is not None and (head["seq"] != last_seq or head["hash"] != prev_hash):
        return VerifyResult(False, count, reached, last_seq + 1,
                            f"events were cut off: the chain head says #{head['seq']} "
                            f"but the trail ends at #{last_seq}")
    if stored_leaves > last_seq:
        return VerifyResult(False, count, reached, last_seq + 1,
                            f"the Merkle tree has {stored_leaves} leaves but the trail "
                            f"{last_seq} events: events were cut off")
    return VerifyResult(True, count, reached, root=frontier.root().hex() if count else "",
                        external=len(against or []))
