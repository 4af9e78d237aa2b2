"""``backline-relay fix``: the fix catalogue from the relay's own machine.

``import FILE|DIR`` (or ``--library``: the starter library shipped with the relay,
relay/fixes/library/*.toml) submits versions; ``list``, ``show ID[@VERSION]`` and
``diff ID V1 V2`` read the catalogue; ``sign --key FILE ID@V`` makes an offline
approver's signature with a key the relay never stores (read here, used, dropped)
and adds it if the key is one of config ``fix_offline_keys`` (``--out F`` writes it to
a file instead, for a relay on another machine: ``POST /fixes/{id}/{v}/signatures``);
``revoke ID@V --reason`` revokes. Each step goes through the same checks and audit
events as the API (relay/fixes/service.py), as ``cli:USER``.

Approving is not here: four eyes are two people signed in to the console (or the API),
and the CLI has no signed-in person to compare with the author.
"""

from __future__ import annotations

import getpass
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from backline.common.fixes import signing as fix_signing
from backline.common.fixes.manifest import (
    ManifestError,
    canonical_bytes,
    digest,
    load_manifest,
)
from backline.relay import config as config_mod
from backline.relay import users
from backline.relay.fixes import store
from backline.relay.fixes.service import FixRefused
from backline.relay.roles import ROLE_PERMISSIONS

if TYPE_CHECKING:  # the whole relay is loaded only by the commands that open it
    from backline.relay.state import Relay

fix_app = typer.Typer(help="The approved-fix catalogue: import, list, show, diff, sign "
                           "offline, revoke.", no_args_is_help=True)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

#: The starter library shipped with the relay (written by the fix-library data).
LIBRARY = Path(__file__).parent / "fixes" / "library"
REF_RE = re.compile(r"^([a-z][a-z0-9-]{1,47})@([0-9]{1,10})$")

DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="BACKLINE_DATA_DIR",
    help="Where the relay keeps its database, keys and certificate.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="BACKLINE_CONFIG", help="A TOML file of settings.")]


def _user() -> str:
    try:
        return getpass.getuser()[:64]
    except Exception:
        return "cli"


def _open(data_dir: Path | None, config_file: Path | None) -> Relay:
    from backline.relay.state import open_relay

    try:
        return open_relay(config_mod.load(config_file, {"data_dir": data_dir}))
    except config_mod.ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _ref(text: str) -> tuple[str, int]:
    match = REF_RE.fullmatch(text)
    if match is None:
        err.print(f"[red]not ID@VERSION:[/] {text[:80]!r}")
        raise typer.Exit(2)
    return match.group(1), int(match.group(2))


def _version(relay: Relay, fix_id: str, version: int) -> store.Version:
    try:
        return relay.fixes.version(fix_id, version)
    except FixRefused as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from None


def manifests_in(path: Path) -> list[Path]:
    """A manifest file, or every ``*.toml`` of a folder (sorted; subfolders' too)."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*.toml") if p.is_file())
    return [path]


@fix_app.command("import")
def fix_import(
    path: Annotated[Path | None, typer.Argument(help="A manifest (.toml) or a folder of "
                                                      "them.")] = None,
    library: Annotated[bool, typer.Option("--library", help="Import the starter library "
                                                            "shipped with the relay.")] = False,
    author: Annotated[str, typer.Option(
        "--author", help="The relay user who authored these versions (required; that user "
                         "can then not approve them: four eyes).")] = "",
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Submit every manifest of FILE or DIR (or --library) as a new version, authored by
    --author (a relay user). Versions already there with the same digest are skipped; a
    different one under an existing version is refused (versions never change)."""
    if (path is None) == (not library):
        err.print("[red]give FILE|DIR or --library (one of them)[/]")
        raise typer.Exit(2)
    if not author:
        err.print("[red]--author USERNAME is required: the relay user who wrote these "
                  "versions (so another user approves them)[/]")
        raise typer.Exit(2)
    where = LIBRARY if library else path
    assert where is not None
    if not where.exists():
        err.print(f"[red]no such file or folder:[/] {where}")
        raise typer.Exit(2)
    files = manifests_in(where)
    relay = _open(data_dir, config)
    actor, source = f"cli:{_user()}", "library" if library else "cli"
    who = users.get_user(relay.engine, username=author)
    # The same bar as POST /api/v1/fixes: a user who may author, and may sign in. An
    # approver named as author would let one person author (by proxy) what someone
    # else approves under their name; a disabled user can no longer answer for it.
    refusal = None
    if who is None:
        refusal = ("unknown_author", f"no relay user {author[:64]!r}",
                   f"--author {author[:64]!r} is not a relay user (backline-relay user list)")
    elif who.disabled:
        refusal = ("disabled_author", f"relay user {author[:64]!r} is disabled",
                   f"--author {author[:64]!r} is a disabled relay user")
    elif "fixes:author" not in ROLE_PERMISSIONS.get(who.role, frozenset()):
        refusal = ("not_an_author", f"relay user {author[:64]!r} ({who.role}) lacks "
                                    "fixes:author",
                   f"--author {author[:64]!r} is a {who.role}, without the fixes:author "
                   "right")
    if refusal is not None:
        reason, detail, said = refusal
        relay.record(actor, "fix.submit.refused", f"user:{author}"[:256],
                     reason=reason, detail=detail)
        relay.flush_records()
        err.print(f"[red]{said}[/]")
        raise typer.Exit(2)
    added = skipped = failed = 0
    for file in files:
        try:
            m = load_manifest(file)
        except (ManifestError, OSError) as exc:
            err.print(f"[red]{file}:[/] {exc}")
            relay.record(actor, "fix.submit.refused", f"file:{file.name}"[:256],
                         reason="bad_manifest", detail=str(exc)[:200])
            failed += 1
            continue
        try:
            same = store.get_version(relay.engine, m.id, m.version).digest == digest(m)
        except store.NotFound:
            same = False
        if same:  # importing a library again is no refusal
            skipped += 1
            out.print(f"{m.id}@{m.version}: already there (same digest)")
            continue
        try:
            v = relay.fixes.submit(m, author, actor, source)
        except FixRefused as exc:
            err.print(f"[red]{m.id}@{m.version}:[/] {exc.detail}")
            failed += 1
            continue
        added += 1
        out.print(f"{v.fix_id}@{v.version}: submitted  {v.digest}")
    relay.flush_records()
    out.print(f"{added} submitted, {skipped} already there, {failed} refused")
    if failed:
        raise typer.Exit(1)


@fix_app.command("list")
def fix_list(data_dir: DataDirOpt = None, config: ConfigOpt = None,
             as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Every fix with its newest version and that version's status."""
    relay = _open(data_dir, config)
    rows = [{"id": v.fix_id, "version": v.version, "status": store.status_of(
        relay.engine, v.fix_id, v.version), "risk": v.manifest.get("risk", ""),
        "title": v.manifest.get("title", ""), "digest": v.digest}
        for v in store.all_latest(relay.engine)]
    if as_json:
        out.print(json.dumps(rows, indent=2), markup=False)
        return
    for r in rows:
        out.print(f"{r['id']}@{r['version']}  {r['status']:<9}  {r['risk']:<6}  {r['title']}",
                  markup=False)


@fix_app.command("show")
def fix_show(ref: Annotated[str, typer.Argument(help="ID or ID@VERSION")],
             data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """One fix's versions, or one version in full (manifest, scripts, approvals)."""
    relay = _open(data_dir, config)
    if "@" not in ref:
        versions = store.versions_of(relay.engine, ref[:48])
        if not versions:
            err.print(f"[red]no fix {ref[:48]!r}[/]")
            raise typer.Exit(1)
        for v in versions:
            status = store.status_of(relay.engine, v.fix_id, v.version)
            out.print(f"{v.fix_id}@{v.version}  {status:<9}  by {v.author}  {v.digest}",
                      markup=False)
        return
    fix_id, version = _ref(ref)
    v = _version(relay, fix_id, version)
    sigs = store.signatures_of(relay.engine, fix_id, version)
    revoked = store.revocation_of(relay.engine, fix_id, version)
    out.print(json.dumps({
        "digest": v.digest, "status": store.status_of(relay.engine, fix_id, version),
        "author": v.author, "submitted_at": v.submitted_at,
        "approvals": [{k: s[k] for k in ("kind", "approver", "key", "at")} for s in sigs],
        "revoked": revoked and {k: revoked[k] for k in ("reason", "revoked_by", "at")},
        "manifest": v.manifest}, indent=2, ensure_ascii=False), markup=False)


@fix_app.command("diff")
def fix_diff(fix_id: str, v1: int, v2: int, data_dir: DataDirOpt = None,
             config: ConfigOpt = None) -> None:
    """A unified diff of two versions (manifest fields, then the scripts)."""
    from backline.relay.api.fixes import diff_text

    relay = _open(data_dir, config)
    out.print(diff_text(_version(relay, fix_id, v1), _version(relay, fix_id, v2)),
              markup=False, end="")


@fix_app.command("sign")
def fix_sign(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    key: Annotated[Path, typer.Option("--key", help="The offline approver's OpenSSH "
                                                    "private key (read, never stored).")],
    expected: Annotated[str, typer.Option(
        "--digest", help="The digest you reviewed (sha256:...; `python -m "
                         "backline.common.fixes digest FILE` on your own copy): nothing "
                         "else is signed.")],
    out_file: Annotated[Path | None, typer.Option("--out", help="Write the signature "
                                                                "here instead of adding "
                                                                "it.")] = None,
    passphrase_stdin: Annotated[bool, typer.Option(
        "--passphrase-stdin", help="Read the key's passphrase from the first line of "
                                   "standard input (else it is asked for, when the key "
                                   "has one).")] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Sign one version's canonical bytes with an offline key (SSHSIG, namespace
    backline-fix) and add the signature, or write it with --out. Only the version whose
    digest is --digest is signed, and what is signed (id@version, digest, scripts) is
    printed first. A passphrase-protected key is asked for its passphrase. (An approver
    who does not trust this relay's database signs on their own machine instead:
    docs/fixes-relay.md, "Offline signatures".)"""
    fix_id, version = _ref(ref)
    relay = _open(data_dir, config)
    v = _version(relay, fix_id, version)
    try:
        m = relay.fixes.checked(v)
    except FixRefused as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from None
    if expected != v.digest:
        relay.record(f"cli:{_user()}", "fix.signature.refused", f"fix:{fix_id}@{version}",
                     reason="digest_mismatch", digest=v.digest,
                     detail=f"--digest {expected[:80]} is not the stored {v.digest}")
        relay.flush_records()
        err.print(f"[red]refused (digest_mismatch):[/] {ref} has digest {v.digest}, not "
                  f"the {expected[:80]!r} you reviewed; nothing signed")
        raise typer.Exit(1)
    err.print(f"signing {ref}  {v.digest}  ({m.title})", markup=False)
    err.print(f"--- script ({m.interpreter}) ---\n{m.script}", markup=False)
    if m.verify is not None:
        err.print(f"--- verify ({m.interpreter}) ---\n{m.verify}", markup=False)
    try:
        text = key.read_bytes()
    except OSError as exc:
        err.print(f"[red]cannot read the key:[/] {exc}")
        raise typer.Exit(2) from None
    passphrase = None
    if _encrypted(text):
        passphrase = (sys.stdin.readline().rstrip("\r\n") if passphrase_stdin
                      else getpass.getpass("passphrase for the key: "))
    try:
        armored = fix_signing.sign(canonical_bytes(m), text, passphrase)
    except Exception as exc:  # asyncssh's errors for a wrong passphrase or key type
        err.print(f"[red]cannot sign with that key:[/] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    finally:
        del text
    if out_file is not None:
        out_file.write_text(armored)
        out.print(f"signature for {ref} ({v.digest}) written to {out_file}")
        return
    try:
        signer = relay.fixes.add_signature(fix_id, version, armored, _user(),
                                           f"cli:{_user()}")
    except FixRefused as exc:
        relay.flush_records()
        err.print(f"[red]refused ({exc.code}):[/] {exc.detail}")
        raise typer.Exit(1) from None
    relay.flush_records()
    out.print(f"{ref}: offline signature by {signer} added")


def _encrypted(text: bytes) -> bool:
    """Whether an OpenSSH private key needs a passphrase (its cipher is inside the
    base64, so it is asked of asyncssh)."""
    import asyncssh

    try:
        asyncssh.import_private_key(text)
    except asyncssh.KeyImportError as exc:
        return "passphrase" in str(exc).lower()
    except (ValueError, TypeError):
        return False
    return False


@fix_app.command("revoke")
def fix_revoke(
    ref: Annotated[str, typer.Argument(help="ID@VERSION")],
    reason: Annotated[str, typer.Option("--reason", help="Why (kept and sent to agents).")],
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Revoke a version for good. A running relay sends agents the new list when it
    next sees them (at their next connection), or at once when revoked through the
    API."""
    fix_id, version = _ref(ref)
    reason = reason.strip()
    if not reason or len(reason) > 512 or any(not c.isprintable() for c in reason):
        err.print("[red]--reason is printable text on one line, 1 to 512 characters[/]")
        raise typer.Exit(2)
    relay = _open(data_dir, config)
    try:
        serial = relay.fixes.revoke(fix_id, version, reason, _user(), f"cli:{_user()}")
    except FixRefused as exc:
        relay.flush_records()
        err.print(f"[red]refused ({exc.code}):[/] {exc.detail}")
        raise typer.Exit(1) from None
    relay.flush_records()
    out.print(f"{ref}: revoked (revocation list serial {serial})")
