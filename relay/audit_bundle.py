"""Evidence bundles: one session's audit events and recordings, with the proofs that
they are in the relay's tamper-evident trail, checkable offline by someone without an
account (docs/audit-proofs.md).

A bundle is one JSON document (``backline-audit-bundle/1``):

- ``checkpoint``: a C2SP signed note over the tree of every event so far (size, root);
- ``manifest``: a signed note of the same key listing the session's events (seq and
  hash) and blobs (kind, id, SHA-256), so that a removed event or recording is named,
  not just missing;
- ``events``: the stored rows (the fields :func:`backline.relay.audit.event_body`
  hashes) each with its RFC 6962 inclusion proof against the checkpoint;
- ``blobs``: the recordings, fix outputs and diagnostics reports, base64, each also
  digested in a proven event (relay/audit_evidence.py) where the trail has one;
- ``absent``: the evidence the events or tables name that the bundle cannot hold, each
  with why (deleted by retention, not kept, missing from the blob store); also in the
  manifest. The verifier fails for evidence a proven event recorded that is neither a
  blob nor deleted by a proven ``retention.deleted``;
- ``verifier_key``: the relay's key (``origin+hash+base64``), informational: an auditor
  pins the key received another way with ``verify-bundle --key``.

:func:`verify` needs the document only (and optionally the pinned key): no database,
no data directory, no network. It is pure, so it runs where the relay is not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backline.relay import audit_evidence, audit_note, audit_tree

FORMAT = "backline-audit-bundle/1"
MANIFEST_HEAD = "backline-audit-bundle/1"
#: A session with more events is refused (never cut: a cut bundle would verify OK while
#: missing events).
MAX_EVENTS = 100_000
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The evidence (blob bytes, before base64) one bundle may hold when the API builds it
#: in the relay's memory (the default of the ``audit_bundle_max_bytes`` setting); over
#: it the API answers 413 and names ``backline-relay audit bundle`` (on the relay's
#: host), whose limit is :data:`MAX_CLI_EVIDENCE_BYTES` (``--max-evidence-bytes``).
MAX_API_EVIDENCE_BYTES = 256 * 1024 * 1024
MAX_CLI_EVIDENCE_BYTES = 2 * 1024 * 1024 * 1024
#: The largest bundle file ``verify-bundle`` reads (base64 is 4/3 of the evidence).
MAX_FILE_BYTES = 3 * 1024 ** 3


class TooLarge(ValueError):
    """The bundle would be over a limit: the message names it and what to do; ``reason``
    is which (``too_many_events`` or ``too_much_evidence``, as audited)."""

    def __init__(self, message: str, limit: int, amount: int,
                 reason: str = "too_much_evidence") -> None:
        super().__init__(message)
        self.limit = limit
        self.amount = amount
        self.reason = reason


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def event_body(ev: dict[str, Any]) -> bytes:
    """As relay/audit.py ``event_body`` (copied so the verifier imports no database code)."""
    return _canonical({"seq": ev["seq"], "time": ev["time"], "actor": ev["actor"],
                       "action": ev["action"], "target": ev["target"],
                       "details": ev["details"], "prev_hash": ev["prev_hash"]}).encode()


def manifest_text(origin: str, session: str, size: int, events: list[dict[str, Any]],
                  blobs: list[dict[str, Any]],
                  absent: list[dict[str, Any]] | None = None) -> str:
    lines = [MANIFEST_HEAD, origin, f"session {session}", f"checkpoint {size}"]
    lines += [f"event {e['seq']} {e['hash']}" for e in events]
    lines += [f"blob {b['kind']} {b['id']} {b['sha256']}" for b in blobs]
    lines += [f"absent {a['kind']} {a['id']} {a['sha256'] or '-'} "
              f"{' '.join(str(a['reason']).split())}" for a in absent or []]
    return "\n".join(lines) + "\n"


# --- building (on the relay's host) ----------------------------------------------------

def build(store: Any, session_id: str,
          max_evidence_bytes: int = MAX_API_EVIDENCE_BYTES) -> dict[str, Any]:
    """The bundle of ``session_id`` from an open :class:`backline.relay.store.Store` (or
    the relay). Raises LookupError when the trail holds nothing of that session,
    :class:`TooLarge` over :data:`MAX_EVENTS` events or ``max_evidence_bytes``.

    Every piece of evidence a bundled event names (and every one the tables list) is in
    the bundle: as a blob, or in ``absent`` with why (deleted by retention, not kept,
    missing from the blob store), so that a removed file is named, never skipped."""
    import sqlalchemy as sa

    from backline.relay.audit import AuditLog
    from backline.relay.blobs import BlobStore
    from backline.relay.schema import (
        audit_events,
        diagnostics_reports,
        fix_runs,
        recordings,
        support_sessions,
    )
    from backline.relay.timeline import events_condition

    audit: AuditLog = store.audit
    note = audit.checkpoint_now()
    if note is None:
        raise LookupError("the audit trail is empty")
    size = note["size"]
    with store.engine.connect() as conn:
        agent = conn.execute(sa.select(support_sessions.c.agent_id)
                             .where(support_sessions.c.id == session_id)).scalar()
        q = (sa.select(audit_events)
             .where(audit_events.c.seq <= size,
                    events_condition(conn, {"id": session_id, "agent_id": agent}))
             .order_by(audit_events.c.seq).limit(MAX_EVENTS + 1))
        rows = [dict(r) for r in conn.execute(q).mappings()]
        recs = conn.execute(sa.select(recordings).where(recordings.c.session_id == session_id)
                            .order_by(recordings.c.started_at)).mappings().all()
        runs = conn.execute(sa.select(fix_runs.c.id, fix_runs.c.output_sha256)
                            .where(fix_runs.c.session_id == session_id,
                                   fix_runs.c.output_sha256.is_not(None))
                            .order_by(fix_runs.c.started_at)).mappings().all()
        reports = conn.execute(sa.select(diagnostics_reports.c.id, diagnostics_reports.c.sha256)
                               .where(diagnostics_reports.c.session_id == session_id)
                               .order_by(diagnostics_reports.c.created_at)).mappings().all()
    if not rows:
        raise LookupError(f"the audit trail has no event of session {session_id}")
    if len(rows) > MAX_EVENTS:
        raise TooLarge(f"session {session_id} has more than {MAX_EVENTS} audit events, the "
                       "most one bundle holds: it is refused rather than cut", MAX_EVENTS,
                       len(rows), "too_many_events")
    events = [{"seq": r["seq"], "time": r["time"], "actor": r["actor"],
               "action": r["action"], "target": r["target"], "details": r["details"],
               "prev_hash": r["prev_hash"], "hash": r["hash"],
               "inclusion": [_b64(h) for h in audit.inclusion_proof(r["seq"], size)]}
              for r in rows]
    # What the trail names first (its digest is the one that counts), then what only
    # the tables list (the verifier says no proven event vouches for it).
    wanted: dict[tuple[str, str], tuple[str, bool]] = {}
    gone: dict[tuple[str, str], int] = {}
    for r in rows:
        details = json.loads(r["details"])
        said = audit_evidence.recorded(r["action"], details)
        if said is not None:
            wanted.setdefault((said.kind, said.id), (said.sha256, said.kept))
        deleted = audit_evidence.deleted(r["action"], details)
        if deleted is not None:
            gone[deleted] = r["seq"]
    table = [("recording", r["id"], r["sha256"]) for r in recs]
    table += [("fix_output", r["id"], r["output_sha256"]) for r in runs]
    table += [("diagnostics_report", r["id"], r["sha256"]) for r in reports]
    for kind, ident, digest in table:
        wanted.setdefault((kind, ident), (digest, True))
    blob_store = BlobStore(store.datadir.root / "blobs")
    blobs: list[dict[str, Any]] = []
    absent: list[dict[str, Any]] = []
    total = 0
    for (kind, ident), (digest, kept) in wanted.items():
        reason = ""
        if not kept:
            reason = "not kept: the relay could not store it (its event says so)"
        elif (kind, ident) in gone:
            reason = f"deleted by retention (event #{gone[(kind, ident)]})"
        else:
            try:
                path = blob_store._path(digest)
                total += path.stat().st_size
                if total > max_evidence_bytes:
                    raise TooLarge(
                        f"session {session_id}'s evidence is over {max_evidence_bytes} "
                        f"bytes, the most one bundle holds here; on the relay's host, "
                        f"`backline-relay audit bundle {session_id}` writes it to a file "
                        f"(up to {MAX_CLI_EVIDENCE_BYTES} bytes, --max-evidence-bytes)",
                        max_evidence_bytes, total)
                # As stored, unchecked: a damaged blob travels as it is, and the
                # verifier names it (refusing to export it would hide the damage).
                data = path.read_bytes()
            except TooLarge:
                raise
            except ValueError as exc:  # not a digest the store can name
                reason = f"missing: {exc}"
            except OSError as exc:
                reason = f"missing from the relay's blob store ({exc.strerror or exc})"
            else:
                blobs.append({"kind": kind, "id": ident, "sha256": digest,
                              "bytes": len(data), "data": _b64(data)})
                continue
        absent.append({"kind": kind, "id": ident, "sha256": digest, "reason": reason})
    origin = audit.origin
    manifest = audit_note.sign(manifest_text(origin, session_id, size, events, blobs, absent),
                               origin, audit.signing_key)
    return {"format": FORMAT, "session": session_id, "created": round(time.time(), 3),
            "origin": origin,
            "verifier_key": audit_note.verifier_key(origin, audit.public_key),
            "checkpoint": note["note"], "manifest": manifest,
            "events": events, "blobs": blobs, "absent": absent}


# --- verifying (anywhere) --------------------------------------------------------------

#: ``verify-bundle``'s exit statuses (docs/audit-proofs.md, and its --help).
EXIT_OK = 0  #: intact, and signed by the pinned key
EXIT_NOT_OK = 1  #: a problem found (each one named)
EXIT_USAGE = 2  #: the command could not run: a key file unreadable, a bad option
EXIT_UNPINNED = 3  #: intact against the key the bundle carries; who signed it not checked


@dataclass
class Report:
    """What :func:`verify` found. ``ok``: no problem (integrity); ``key_pinned``: the
    signatures were checked against a key the auditor gave, not the bundle's own.
    Only both together are an authentic bundle (:attr:`exit_status` 0)."""

    ok: bool = True
    problems: list[str] = field(default_factory=list)
    summary: str = ""
    key_pinned: bool = False
    #: The key the signatures were checked against (``name+hash``, or the raw key's hash).
    signer: str = ""

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    @property
    def exit_status(self) -> int:
        if not self.ok:
            return EXIT_NOT_OK
        return EXIT_OK if self.key_pinned else EXIT_UNPINNED

    def describe(self) -> str:
        if not self.ok:
            return "NOT OK:\n" + "\n".join(f"- {p}" for p in self.problems)
        if self.key_pinned:
            return "OK: " + self.summary
        # Never "OK": anyone who alters a bundle can re-sign it with a key of their own
        # and carry that key in it; without a pinned key every check below still passes.
        return ("UNPINNED: NOT VERIFIED that this bundle comes from the relay: no --key was "
                f"given (exit status {EXIT_UNPINNED}).\n"
                f"- checked: {self.summary}; its checkpoint and manifest are signed by the "
                f"key the bundle itself carries ({self.signer})\n"
                "- NOT checked: that this key is the relay's. Anyone can alter a bundle, "
                "re-sign it with a key of their own and carry that key in it: it passes "
                "every check above.\n"
                "- to check it: verify-bundle FILE --key KEY, with the relay's key received "
                "another way than the bundle (`backline-relay audit key` prints it on the "
                "relay's host)")


def parse_key(text: str) -> tuple[str | None, bytes]:
    """A pinned key: a verifier key (``name+hash+base64``, what ``backline-relay audit
    key`` prints) or the raw Ed25519 public key in base64."""
    text = text.strip()
    try:
        name, public = audit_note.parse_verifier_key(text)
        return name, public
    except audit_note.NoteError:
        pass
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise audit_note.NoteError("the key is neither a verifier key nor base64") from None
    if len(raw) != 32:
        raise audit_note.NoteError("the key is not a 32-byte Ed25519 public key")
    return None, raw


def _decode_proof(items: Any) -> list[bytes]:
    if not isinstance(items, list) or len(items) > 64:
        raise ValueError("not a list of at most 64 hashes")
    out = [base64.b64decode(x, validate=True) for x in items]
    if any(len(h) != 32 for h in out):
        raise ValueError("a hash is not 32 bytes")
    return out


def verify(doc: Any, pinned: str | None = None) -> Report:
    """Check a bundle; every problem is named (the first that makes the rest moot ends it)."""
    rep = Report()
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        rep.fail(f"not a Backline audit bundle (format {FORMAT} expected)")
        return rep
    try:
        if pinned is not None:
            name, public = parse_key(pinned)
            rep.key_pinned = True
        else:
            name, public = audit_note.parse_verifier_key(str(doc.get("verifier_key", "")))
    except audit_note.NoteError as exc:
        rep.fail(f"the {'pinned' if pinned else 'bundled'} key: {exc}")
        return rep
    note = doc.get("checkpoint")
    if not isinstance(note, str):
        rep.fail("the bundle has no checkpoint")
        return rep
    try:
        text, sigs = audit_note.split(note)
    except audit_note.NoteError as exc:
        rep.fail(f"the checkpoint: {exc}")
        return rep
    origin = text.split("\n", 1)[0]
    signer = audit_note.key_hash(name if name is not None else origin, public).hex()
    rep.signer = (f"{name}+{signer}" if name is not None else
                  f"raw public key {_b64(public)}, as {origin}+{signer}")
    if name is not None and origin != name:
        rep.fail(f"the bundle is from another relay: its checkpoint's origin is {origin!r}, "
                 f"the pinned key is relay {name!r}'s")
        return rep
    try:
        cp = audit_note.parse_checkpoint(audit_note.open_note(note, origin, public))
    except audit_note.NoteError as exc:
        whose = "the pinned key" if rep.key_pinned else "the key the bundle carries"
        if "not signed by the expected key" in str(exc):
            signers = ", ".join(f"{s.name}+{s.hash.hex()}" for s in sigs)
            rep.fail(f"the checkpoint is signed by another key ({signers}), not by {whose} "
                     f"({origin}+{audit_note.key_hash(origin, public).hex()})")
        else:
            rep.fail(f"the checkpoint: {exc}")
        return rep
    try:
        manifest = audit_note.open_note(str(doc.get("manifest", "")), origin, public,
                                        max_bytes=MAX_MANIFEST_BYTES)
    except audit_note.NoteError as exc:
        rep.fail(f"the bundle's manifest (its list of events and recordings): {exc}")
        return rep
    lines = manifest.rstrip("\n").split("\n")
    session = str(doc.get("session", ""))
    if (len(lines) < 4 or lines[0] != MANIFEST_HEAD or lines[1] != origin
            or lines[2] != f"session {session}" or lines[3] != f"checkpoint {cp.size}"):
        rep.fail("the manifest is not this bundle's (session, origin or checkpoint differ)")
        return rep
    listed_events: dict[int, str] = {}
    listed_blobs: dict[tuple[str, str], str] = {}
    listed_absent: dict[tuple[str, str], str] = {}
    for line in lines[4:]:
        parts = line.split(" ")
        if parts[0] == "event" and len(parts) == 3 and parts[1].isdigit():
            listed_events[int(parts[1])] = parts[2]
        elif parts[0] == "blob" and len(parts) == 4:
            listed_blobs[(parts[1], parts[2])] = parts[3]
        elif parts[0] == "absent" and len(parts) >= 4:
            listed_absent[(parts[1], parts[2])] = " ".join(parts[4:])
        else:
            rep.fail("the manifest has a line that is neither an event, a blob nor an "
                     "absent blob")
            return rep
    events = doc.get("events")
    blobs = doc.get("blobs")
    if not isinstance(events, list) or not isinstance(blobs, list):
        rep.fail("the bundle's events or blobs are not lists")
        return rep
    seen: dict[int, dict[str, Any]] = {}
    for ev in events:
        try:
            seq = int(ev["seq"])
            body = event_body(ev)
            proof = _decode_proof(ev.get("inclusion"))
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            rep.fail(f"an event is malformed ({exc})")
            continue
        seen[seq] = ev
        digest = hashlib.sha256(body).hexdigest()
        if seq not in listed_events:
            rep.fail(f"event #{seq} is not in the signed manifest (added to the bundle)")
        elif listed_events[seq] != digest:
            rep.fail(f"event #{seq} was altered: its contents do not match the hash the "
                     "signed manifest lists")
        if digest != ev.get("hash"):
            rep.fail(f"event #{seq} was altered: its contents do not match its hash")
        try:
            audit_tree.verify_inclusion(seq - 1, cp.size, audit_tree.leaf_hash(body), proof,
                                        cp.root)
        except audit_tree.ProofError as exc:
            rep.fail(f"event #{seq} is not proven in the signed trail of {cp.size} events "
                     f"({exc})")
    for seq in sorted(set(listed_events) - set(seen)):
        rep.fail(f"event #{seq} was removed: the signed manifest lists it, the bundle "
                 "does not have it")
    # Each piece of evidence the proven events name, with the digest the trail recorded
    # (relay/audit_evidence.py, the reading the relay shares), and what retention deleted.
    trail: dict[tuple[str, str], tuple[audit_evidence.Recorded, int, str]] = {}
    gone: dict[tuple[str, str], int] = {}
    for seq, ev in sorted(seen.items()):
        try:
            details = json.loads(ev["details"])
        except (ValueError, KeyError, TypeError):
            continue
        action = str(ev.get("action"))
        said = audit_evidence.recorded(action, details)
        if said is not None:
            trail.setdefault((said.kind, said.id), (said, seq, action))
        deleted = audit_evidence.deleted(action, details)
        if deleted is not None:
            gone[deleted] = seq
    have: set[tuple[str, str]] = set()
    for blob in blobs:
        try:
            key = (str(blob["kind"]), str(blob["id"]))
            data = base64.b64decode(blob["data"], validate=True)
        except (KeyError, TypeError, ValueError, binascii.Error):
            rep.fail("a blob is malformed")
            continue
        have.add(key)
        what = f"{key[0].replace('_', ' ')} {key[1]}"
        actual = hashlib.sha256(data).hexdigest()
        if key not in listed_blobs:
            rep.fail(f"{what} is not in the signed manifest (added to the bundle)")
            continue
        if actual != listed_blobs[key]:
            rep.fail(f"{what} was altered: its SHA-256 is {actual}, the signed manifest "
                     f"says {listed_blobs[key]}")
        if key[0] in audit_evidence.KIND_ACTION:
            vouched = trail.get(key)
            if vouched is None:
                rep.fail(f"{what}: no proven {audit_evidence.KIND_ACTION[key[0]]} event "
                         "vouches for it")
            elif vouched[0].sha256 != actual:
                rep.fail(f"{what} was altered: its SHA-256 is {actual}, the audit trail "
                         f"recorded {vouched[0].sha256} (event #{vouched[1]})")
    for key in sorted(set(listed_blobs) - have):
        rep.fail(f"{key[0].replace('_', ' ')} {key[1]} was removed: the signed manifest "
                 "lists it, the bundle does not have it")
    # Evidence the proven trail recorded must travel, unless retention (proven) deleted
    # it or the trail itself says the relay kept none: a deleted file is named.
    retained = 0
    for key, (said, seq, action) in sorted(trail.items()):
        if key in have or key in listed_blobs or not said.kept:
            continue
        if key in gone:
            retained += 1
            continue
        why = listed_absent.get(key)
        rep.fail(f"{key[0].replace('_', ' ')} {key[1]} is missing: the proven {action} "
                 f"(event #{seq}) recorded SHA-256 {said.sha256}, the bundle has no blob "
                 f"and no proven retention.deleted names it"
                 + (f" (the relay said: {why})" if why else ""))
    extra = doc.get("absent", [])
    if not isinstance(extra, list) or any(
            not isinstance(a, dict) or (str(a.get("kind")), str(a.get("id")))
            not in listed_absent for a in extra):
        rep.fail("the bundle's list of absent evidence is not the signed manifest's")
    if rep.ok:
        kinds = sum(1 for b in blobs if b.get("kind") == "recording")
        rep.summary = (f"session {session}: {len(seen)} events proven in the trail of "
                       f"{cp.size} events (origin {origin}, root {_b64(cp.root)}), "
                       f"{kinds} recordings and {len(blobs) - kinds} other blobs intact"
                       + (f", {retained} deleted by retention (proven)" if retained else "")
                       + (f", {len(listed_absent) - retained} not kept" if
                          len(listed_absent) > retained else ""))
        if rep.key_pinned:
            rep.summary += (f"; checkpoint and manifest signed by the pinned key "
                            f"({rep.signer})")
    return rep


def verify_file(path: Path, pinned: str | None = None,
                max_bytes: int = MAX_FILE_BYTES) -> Report:
    """:func:`verify` of a file, refused over ``max_bytes`` (read whole in memory)."""
    try:
        if path.stat().st_size > max_bytes:
            rep = Report()
            rep.fail(f"{path} is {path.stat().st_size} bytes, over the {max_bytes} bytes "
                     "verify-bundle reads (--max-bytes raises it)")
            return rep
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep = Report()
        rep.fail(f"cannot read {path} as a bundle: {exc}")
        return rep
    return verify(doc, pinned)
