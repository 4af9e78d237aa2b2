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
- ``blobs``: the recordings and fix outputs, base64, each also digested in a proven
  event (``recording.stored``'s ``sha256``) where the trail has one;
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

from backline.relay import audit_note, audit_tree

FORMAT = "backline-audit-bundle/1"
MANIFEST_HEAD = "backline-audit-bundle/1"
MAX_EVENTS = 100_000
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: The events that record a blob's digest: action -> (blob kind, id field, digest field).
TRAIL_DIGESTS = {"recording.stored": ("recording", "recording", "sha256"),
                 "fix.run.ended": ("fix_output", "run", "output_sha256"),
                 "diagnostics.report": ("diagnostics_report", "report", "sha256")}
TRAIL_KINDS = {kind: action for action, (kind, _, _) in TRAIL_DIGESTS.items()}


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
                  blobs: list[dict[str, Any]]) -> str:
    lines = [MANIFEST_HEAD, origin, f"session {session}", f"checkpoint {size}"]
    lines += [f"event {e['seq']} {e['hash']}" for e in events]
    lines += [f"blob {b['kind']} {b['id']} {b['sha256']}" for b in blobs]
    return "\n".join(lines) + "\n"


# --- building (on the relay's host) ----------------------------------------------------

def build(store: Any, session_id: str) -> dict[str, Any]:
    """The bundle of ``session_id`` from an open :class:`backline.relay.store.Store`.
    Raises LookupError when the trail holds nothing of that session."""
    import sqlalchemy as sa

    from backline.relay.audit import AuditLog
    from backline.relay.blobs import BlobStore
    from backline.relay.schema import audit_events, diagnostics_reports, fix_runs, recordings

    audit: AuditLog = store.audit
    note = audit.checkpoint_now()
    if note is None:
        raise LookupError("the audit trail is empty")
    size = note["size"]
    escaped = json.dumps(session_id).replace("\\", "\\\\").replace("%", "\\%").replace(
        "_", "\\_")
    q = (sa.select(audit_events)
         .where(audit_events.c.seq <= size,
                sa.or_(audit_events.c.target == f"session:{session_id}",
                       audit_events.c.details.like(f'%"session":{escaped}%', escape="\\")))
         .order_by(audit_events.c.seq).limit(MAX_EVENTS))
    with store.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
        recs = conn.execute(sa.select(recordings).where(recordings.c.session_id == session_id)
                            .order_by(recordings.c.started_at)).mappings().all()
        runs = conn.execute(sa.select(fix_runs.c.id, fix_runs.c.output_sha256,
                                      fix_runs.c.kept_bytes)
                            .where(fix_runs.c.session_id == session_id,
                                   fix_runs.c.output_sha256.is_not(None))
                            .order_by(fix_runs.c.started_at)).mappings().all()
        reports = conn.execute(sa.select(diagnostics_reports.c.id, diagnostics_reports.c.sha256)
                               .where(diagnostics_reports.c.session_id == session_id)
                               .order_by(diagnostics_reports.c.created_at)).mappings().all()
    if not rows:
        raise LookupError(f"the audit trail has no event of session {session_id}")
    events = [{"seq": r["seq"], "time": r["time"], "actor": r["actor"],
               "action": r["action"], "target": r["target"], "details": r["details"],
               "prev_hash": r["prev_hash"], "hash": r["hash"],
               "inclusion": [_b64(h) for h in audit.inclusion_proof(r["seq"], size)]}
              for r in rows]
    blob_store = BlobStore(store.datadir.root / "blobs")
    blobs: list[dict[str, Any]] = []
    wanted = [("recording", r["id"], r["sha256"]) for r in recs]
    wanted += [("fix_output", r["id"], r["output_sha256"]) for r in runs]
    wanted += [("diagnostics_report", r["id"], r["sha256"]) for r in reports]
    for kind, ident, digest in wanted:
        try:
            # As stored, unchecked: a damaged blob travels as it is, and the verifier
            # names it (refusing to export it would hide the damage).
            data = blob_store._path(digest).read_bytes()
        except OSError:
            continue  # never kept (fix output not kept), or removed by retention
        blobs.append({"kind": kind, "id": ident, "sha256": digest, "bytes": len(data),
                      "data": _b64(data)})
    origin = audit.origin
    manifest = audit_note.sign(manifest_text(origin, session_id, size, events, blobs),
                               origin, audit.signing_key)
    return {"format": FORMAT, "session": session_id, "created": round(time.time(), 3),
            "origin": origin,
            "verifier_key": audit_note.verifier_key(origin, audit.public_key),
            "checkpoint": note["note"], "manifest": manifest,
            "events": events, "blobs": blobs}


# --- verifying (anywhere) --------------------------------------------------------------

@dataclass
class Report:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    summary: str = ""
    key_pinned: bool = False

    def fail(self, problem: str) -> None:
        self.ok = False
        self.problems.append(problem)

    def describe(self) -> str:
        if self.ok:
            return "OK: " + self.summary
        return "NOT OK:\n" + "\n".join(f"- {p}" for p in self.problems)


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
    for line in lines[4:]:
        parts = line.split(" ")
        if parts[0] == "event" and len(parts) == 3 and parts[1].isdigit():
            listed_events[int(parts[1])] = parts[2]
        elif parts[0] == "blob" and len(parts) == 4:
            listed_blobs[(parts[1], parts[2])] = parts[3]
        else:
            rep.fail("the manifest has a line that is neither an event nor a blob")
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
    # Each blob's digest as the (proven) trail recorded it.
    trail_digest: dict[tuple[str, str], str] = {}
    for ev in seen.values():
        said = TRAIL_DIGESTS.get(str(ev.get("action")))
        if said is None:
            continue
        try:
            details = json.loads(ev["details"])
            trail_digest[(said[0], str(details[said[1]]))] = str(details[said[2]])
        except (ValueError, KeyError, TypeError):
            pass
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
        if key[0] in TRAIL_KINDS:
            recorded = trail_digest.get(key)
            if recorded is None:
                rep.fail(f"{what}: no proven {TRAIL_KINDS[key[0]]} event vouches for it")
            elif recorded != actual:
                rep.fail(f"{what} was altered: its SHA-256 is {actual}, the audit trail "
                         f"recorded {recorded}")
    for key in sorted(set(listed_blobs) - have):
        rep.fail(f"{key[0].replace('_', ' ')} {key[1]} was removed: the signed manifest "
                 "lists it, the bundle does not have it")
    if rep.ok:
        kinds = sum(1 for b in blobs if b.get("kind") == "recording")
        key_text = ("pinned key" if rep.key_pinned else
                    "the key the bundle carries (not pinned: pass --key to check it is "
                    "the relay's)")
        rep.summary = (f"session {session}: {len(seen)} events proven in the trail of "
                       f"{cp.size} events (origin {origin}, root {_b64(cp.root)}), "
                       f"{kinds} recordings and {len(blobs) - kinds} other blobs intact; "
                       f"checkpoint signed by the {key_text}")
    return rep


def verify_file(path: Path, pinned: str | None = None) -> Report:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        rep = Report()
        rep.fail(f"cannot read {path} as a bundle: {exc}")
        return rep
    return verify(doc, pinned)
