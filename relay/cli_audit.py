"""``backline-relay audit key|checkpoint|proof|bundle|verify-bundle``: the trail's proofs
(docs/audit-proofs.md).

``verify-bundle`` is the auditor's command: it reads only the bundle (and the pinned
key), never a data directory or a configuration, so it runs on a machine that has never
seen the relay. Without a pinned key it never says OK (exit status 3, UNPINNED): a
bundle checked only against the key it carries proves nothing about who made it.

``bundle`` (like ``audit export``) is audited on the trail it reads, before the file is
written (:meth:`backline.relay.store.Store.record`), with the relay running or stopped.
Everything heavy is imported inside the commands (tests/unit/test_cli_imports.py).
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from backline.relay.store import Store

proof_app = typer.Typer(help="Inclusion and consistency proofs of the audit trail's "
                             "Merkle tree (JSON).", no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="BACKLINE_DATA_DIR",
    help="Where the relay keeps its database, keys and certificate.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="BACKLINE_CONFIG", help="A TOML file of settings.")]


def _store(data_dir: Path | None, config_file: Path | None) -> Store:
    from backline.relay import config as config_mod
    from backline.relay.store import open_store

    try:
        return open_store(config_mod.load(config_file, {"data_dir": data_dir}))
    except config_mod.ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audit_key(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the relay's checkpoint verifier key (origin+hash+base64): give it to auditors
    another way than the bundle, for ``verify-bundle --key``."""
    from backline.relay import audit_note

    store = _store(data_dir, config)
    out.print(audit_note.verifier_key(store.audit.origin, store.audit.public_key),
              markup=False)


def audit_checkpoint(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Sign a checkpoint of every event so far (if the newest does not cover them) and
    print it as a C2SP signed note."""
    note = _store(data_dir, config).audit.checkpoint_now()
    if note is None:
        err.print("the audit trail is empty: no checkpoint")
        raise typer.Exit(1)
    sys.stdout.write(note["note"])


@proof_app.command("inclusion")
def proof_inclusion(
    seq: Annotated[int, typer.Argument(help="The event's seq.", min=1)],
    size: Annotated[int | None, typer.Option(
        help="The tree size to prove against (default: the newest checkpoint's).")] = None,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Prove that event SEQ is in the trail: its leaf hash and the proof's hashes."""
    from backline.relay import audit, audit_tree

    log = _store(data_dir, config).audit
    note = log.note_at(size) if size else log.checkpoint_now()
    if note is None:
        err.print(f"no signed checkpoint of size {size}: `audit proof inclusion` proves "
                  "against a signed checkpoint (see `audit export --checkpoints`)")
        raise typer.Exit(1)
    size = note["size"]
    if seq > size:
        err.print(f"event #{seq} is not in the tree of size {size}")
        raise typer.Exit(1)
    row = log.rows([seq])[0]
    print(json.dumps({"seq": seq, "size": size,
                      "leaf_hash": _b64(audit_tree.leaf_hash(audit.row_body(row))),
                      "proof": [_b64(h) for h in log.inclusion_proof(seq, size)],
                      "checkpoint": note["note"]}, indent=2))


@proof_app.command("consistency")
def proof_consistency(
    size1: Annotated[int, typer.Argument(help="The older tree size.", min=1)],
    size2: Annotated[int, typer.Argument(help="The newer tree size.", min=1)],
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Prove that the tree of SIZE1 events is a prefix of the tree of SIZE2."""
    log = _store(data_dir, config).audit
    if size1 > size2 or size2 > log.size():
        err.print(f"no consistency proof from {size1} to {size2} (the trail has "
                  f"{log.size()} events)")
        raise typer.Exit(1)
    notes = {s: log.note_at(s) for s in (size1, size2)}
    print(json.dumps({"from": size1, "to": size2,
                      "from_root": _b64(log.root(size1)), "to_root": _b64(log.root(size2)),
                      "proof": [_b64(h) for h in log.consistency_proof(size1, size2)],
                      "checkpoints": {str(s): n["note"] for s, n in notes.items() if n}},
                     indent=2))


def audit_bundle(
    session: Annotated[str, typer.Argument(help="The session's id.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="File to write (default: backline-bundle-SESSION.json).")
    ] = None,
    max_evidence_bytes: Annotated[int, typer.Option(
        "--max-evidence-bytes", min=1,
        help="Refuse a bundle whose recordings and outputs are over this many bytes "
             "(built in memory: about 2.4 times this).")] = 2 * 1024 ** 3,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Write one JSON file an auditor checks offline with ``verify-bundle``: the session's
    events and recordings, each event's inclusion proof, the signed checkpoint. The API
    refuses sessions over its limit (``audit_bundle_max_bytes``, 256 MiB): this writes
    them, up to ``--max-evidence-bytes``."""
    from backline.relay import audit_bundle as bundle_mod
    from backline.relay.store import cli_actor

    store = _store(data_dir, config)
    try:
        doc = bundle_mod.build(store, session, max_evidence_bytes)
    except LookupError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1) from None
    except bundle_mod.TooLarge as exc:
        store.record(cli_actor(), "audit.bundle.refused", f"session:{session}",
                     session=session, reason=exc.reason, limit=exc.limit,
                     amount=exc.amount)
        err.print(f"[red]error:[/] {exc}", markup=False)
        raise typer.Exit(1) from None
    # Audited before the file is written (as every export is): never a bundle on disk
    # that the trail does not know of.
    store.record(cli_actor(), "audit.bundle.exported", f"session:{session}",
                 session=session, events=len(doc["events"]), blobs=len(doc["blobs"]),
                 size=int(doc["checkpoint"].split("\n")[1]))
    target = output or Path(f"backline-bundle-{session}.json")
    partial = target.with_name(target.name + ".partial")
    with open(partial, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, ensure_ascii=False)
        fh.flush()
        os.fsync(fh.fileno())
    partial.replace(target)
    absent = doc.get("absent", [])
    err.print(f"wrote {target}: {len(doc['events'])} events, {len(doc['blobs'])} blobs"
              + (f", {len(absent)} absent" if absent else ""), markup=False)
    for item in absent:
        err.print(f"  absent: {item['kind']} {item['id']}: {item['reason']}", markup=False)


def audit_verify_bundle(
    file: Annotated[Path, typer.Argument(help="The bundle (a .json file).")],
    key: Annotated[str | None, typer.Option(
        "--key", help="The relay's key to pin: a file holding it, or the key itself "
                      "(`backline-relay audit key` prints it; raw base64 works too). "
                      "Without it the answer is never OK: UNPINNED, exit status 3.")
    ] = None,
    max_bytes: Annotated[int, typer.Option(
        "--max-bytes", min=1, help="Refuse a bundle file over this many bytes (it is read "
                                   "whole into memory).")] = 3 * 1024 ** 3,
) -> None:
    """Check a bundle offline: needs no relay, no data directory, only the bundle and the
    relay's key to pin (--key). Exit status: 0 OK, the bundle is intact and signed by
    the pinned key; 1 NOT OK, each problem named; 2 the check could not run (a key file
    unreadable, a bad option); 3 UNPINNED: no --key was given, so the bundle was only
    checked against the key it carries itself, which anyone re-signing it can replace:
    it is NOT verified to come from the relay."""
    from backline.relay import audit_bundle as bundle_mod

    pinned = None
    if key is not None:
        candidate = Path(key)
        try:
            pinned = candidate.read_text(encoding="utf-8").strip() if candidate.is_file() \
                else key
        except OSError as exc:
            err.print(f"[red]error:[/] cannot read the key file: {exc}")
            raise typer.Exit(bundle_mod.EXIT_USAGE) from None
    report = bundle_mod.verify_file(file, pinned, max_bytes)
    status = report.exit_status
    (out if status == bundle_mod.EXIT_OK else err).print(report.describe(), markup=False)
    raise typer.Exit(status)


def register(audit_app: typer.Typer) -> None:
    """Add these commands to ``backline-relay audit`` (relay/cli.py)."""
    audit_app.command("key")(audit_key)
    audit_app.command("checkpoint")(audit_checkpoint)
    audit_app.command("bundle")(audit_bundle)
    audit_app.command("verify-bundle")(audit_verify_bundle)
    audit_app.add_typer(proof_app, name="proof")
