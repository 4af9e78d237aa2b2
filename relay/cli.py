"""``backline-relay``: initialise, serve, and administer a relay from its own machine.

The first admin is made here (``init`` prints a one-time password, or ``user
create``), never through the web: no web path can re-run set-up.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from backline.common.enrollment import EnrollmentToken
from backline.common.tlspin import format_fingerprint
from backline.relay import config as config_mod
from backline.relay import tokens, users
from backline.relay.cli_audit import register as register_audit_proofs
from backline.relay.cli_fix import fix_app
from backline.relay.cli_reports import report_app
from backline.relay.cli_siem import retention_app, siem_app
from backline.relay.cli_timeline import timeline_app
from backline.relay.datadir import CERT_WARN_DAYS
from backline.relay.roles import ROLES
from backline.relay.store import Store, cli_actor, open_store

if TYPE_CHECKING:
    from backline.relay.state import Relay

app = typer.Typer(help="Backline relay: agents connect to it, technicians work through it.",
                  no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
group_app = typer.Typer(help="Manage agent groups and grants.", no_args_is_help=True)
token_app = typer.Typer(help="Manage enrollment tokens.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and export the audit trail; list its events.",
                        no_args_is_help=True)
cert_app = typer.Typer(help="The relay's TLS certificate and the key pins agents trust.",
                       no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(user_app, name="user")
app.add_typer(group_app, name="group")
app.add_typer(token_app, name="token")
app.add_typer(audit_app, name="audit")
app.add_typer(cert_app, name="cert")
app.add_typer(fix_app, name="fix")  # relay/cli_fix.py
register_audit_proofs(audit_app)  # relay/cli_audit.py: key, checkpoint, proof, bundle...
app.add_typer(timeline_app, name="timeline")  # relay/cli_timeline.py
app.add_typer(report_app, name="report")  # relay/cli_reports.py (issue 14)
app.add_typer(retention_app, name="retention")  # relay/cli_siem.py
app.add_typer(siem_app, name="siem")  # relay/cli_siem.py

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="BACKLINE_DATA_DIR",
    help="Where the relay keeps its database, keys and certificate.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="BACKLINE_CONFIG", help="A TOML file of settings.")]


def _actor() -> str:
    return cli_actor()


def _load(data_dir: Path | None, config_file: Path | None, **overrides: object
          ) -> config_mod.RelayConfig:
    try:
        return config_mod.load(config_file, {"data_dir": data_dir, **overrides})
    except config_mod.ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _open(data_dir: Path | None, config_file: Path | None, **overrides: object) -> Relay:
    # Imported here, not at the top: commands that need only the store skip it (relay/store.py)
    from backline.relay.state import open_relay

    return open_relay(_load(data_dir, config_file, **overrides))


def _open_store(data_dir: Path | None, config_file: Path | None) -> Store:
    """For a command that needs only the database and the audit trail."""
    return open_store(_load(data_dir, config_file))


def initialise(relay: Relay) -> str | None:
    """First start: make the first admin with a one-time password. Returns it, once."""
    if users.count_users(relay.engine) > 0:
        relay.datadir.initialised_marker.touch()
        return None
    password = users.generate_password()
    users.create_user(relay.engine, "admin", "admin", password, must_change_password=True)
    users.group_id(relay.engine, "default", create=True)
    relay.record(_actor(), "relay.init", "relay", admin="admin", url=relay.origin,
                 fingerprint=relay.fingerprint)
    relay.datadir.initialised_marker.touch()
    return password


def print_banner(relay: Relay, password: str | None) -> None:
    out.print(f"[bold]Backline relay[/]  data: {relay.datadir.root}")
    out.print(f"  console:      {relay.origin}/")
    out.print(f"  TLS key pin:  {', '.join(relay.token_pins)}", markup=False)
    if relay.fingerprint:
        out.print(f"  TLS SHA-256:  {format_fingerprint(relay.fingerprint)} (certificate)")
    days = relay.tls_identity.expires_in_days() if relay.tls_identity else None
    if days is not None and days <= CERT_WARN_DAYS:
        out.print(f"  [bold red]TLS certificate expires in {days:.0f} days[/]: "
                  "run `backline-relay cert rotate`, then reload (SIGHUP)")
    if password:
        out.print("  first admin:  [bold]admin[/] with one-time password "
                  f"[bold]{password}[/] (change it at first sign-in; shown only now)")


@app.command()
def init(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Create the data directory, keys, certificate, database and first admin."""
    relay = _open(data_dir, config)
    print_banner(relay, initialise(relay))


@app.command()
def serve(
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
) -> None:
    """Run the relay (initialising it on first start)."""
    from backline.relay.net.server import listen
    from backline.relay.serve import serve as run_server
    from backline.relay.state import open_relay

    cfg = _load(data_dir, config, listen_host=host, listen_port=port)
    # Listen before anything slow (the launcher has usually bound already, before the
    # imports; see listening.py): after a restart, agents that arrive while the relay
    # starts wait in the backlog instead of being refused and backing off.
    try:
        sockets = listen(cfg.listen_host, cfg.listen_port)
    except OSError as exc:
        err.print(f"[red]cannot listen on {cfg.listen_host}:{cfg.listen_port}:[/] "
                  f"{exc.strerror or exc}")
        raise typer.Exit(1) from None
    relay = open_relay(cfg)
    print_banner(relay, initialise(relay))
    sys.stdout.flush()
    run_server(relay, sockets)


@config_app.command("show")
def config_show(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the effective configuration (secrets hidden) as TOML-like lines."""
    cfg = _load(data_dir, config)
    for name, value in cfg.shown().items():
        out.print(f"{name} = {json.dumps(value)}", markup=False)


@user_app.command("create")
def user_create(
    username: str,
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")] = "technician",
    password_stdin: Annotated[bool, typer.Option(
        help="Read the password from standard input instead of generating one.")] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Create a user. A generated password is one-time: it must be changed at sign-in."""
    relay = _open(data_dir, config)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else users.generate_password()
    try:
        users.create_user(relay.engine, username, role, password,
                          must_change_password=not password_stdin)
    except users.UserError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    relay.record(_actor(), "user.create", f"user:{username}", role=role)
    if not password_stdin:
        out.print(f"created {username} ({role}); one-time password: {password}", markup=False)
    else:
        out.print(f"created {username} ({role})", markup=False)


@user_app.command("list")
def user_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List users and roles."""
    relay = _open(data_dir, config)
    for u in users.list_users(relay.engine):
        flags = [f for f, on in (("disabled", u.disabled), ("totp", u.totp_enabled)) if on]
        out.print(f"{u.username:24} {u.role:11} {' '.join(flags)}", markup=False)


@user_app.command("reset-password")
def user_reset_password(username: str, data_dir: DataDirOpt = None,
                        config: ConfigOpt = None) -> None:
    """Give a user a new one-time password and end their sessions."""
    from backline.relay.webauth import end_user_sessions

    relay = _open(data_dir, config)
    user = users.get_user(relay.engine, username=username)
    if user is None:
        err.print(f"[red]error:[/] no user {username!r}")
        raise typer.Exit(2)
    password = users.generate_password()
    users.set_password(relay.engine, user.id, password, must_change=True)
    end_user_sessions(relay, user.id)
    relay.record(_actor(), "user.reset_password", f"user:{username}")
    out.print(f"{username}: one-time password {password}", markup=False)


@group_app.command("create")
def group_create(name: str, data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Create an agent group."""
    relay = _open(data_dir, config)
    try:
        users.create_group(relay.engine, name)
    except users.UserError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    relay.record(_actor(), "group.create", f"group:{name}")
    out.print(f"created group {name}", markup=False)


@group_app.command("grant")
def group_grant(group: str, username: str, data_dir: DataDirOpt = None,
                config: ConfigOpt = None) -> None:
    """Let a user act on a group's agents."""
    relay = _open(data_dir, config)
    gid = users.group_id(relay.engine, group)
    user = users.get_user(relay.engine, username=username)
    if gid is None or user is None:
        err.print("[red]error:[/] no such group or user")
        raise typer.Exit(2)
    users.grant(relay.engine, user.id, gid)
    relay.record(_actor(), "group.grant", f"group:{gid}", user=username)
    out.print(f"{username} may now act on group {group}", markup=False)


@token_app.command("create")
def token_create(
    group: Annotated[str, typer.Option(help="The agent group enrolled agents join.")] = "default",
    uses: Annotated[int, typer.Option(help="How many agents may enroll with it.")] = 1,
    ttl: Annotated[str, typer.Option(help="How long it is valid: 30m, 1h, 7d...")] = "1h",
    quiet: Annotated[bool, typer.Option("--quiet", "-q",
                                        help="Print only the token.")] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Create an enrollment token and print the command an agent runs with it."""
    relay = _open(data_dir, config)
    gid = users.group_id(relay.engine, group)
    if gid is None:
        err.print(f"[red]error:[/] no group named {group!r} (create it with `group create`)")
        raise typer.Exit(2)
    try:
        token_id, secret = tokens.create_enroll_token(relay.engine, gid, uses,
                                                      tokens.parse_ttl(ttl), _actor())
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        raise typer.Exit(2) from None
    token = EnrollmentToken(relay.origin, relay.token_pins, secret,
                            relay.token_serial).encode()
    relay.record(_actor(), "enroll_token.create", f"enroll_token:{token_id}", group=group,
                 uses=uses, ttl=ttl)
    if quiet:
        print(token)
        return
    out.print(f"token {token_id} for group {group}: {uses} use(s), valid {ttl}", markup=False)
    out.print("on the customer's machine run:", markup=False)
    print(f"  backline-agent enroll '{token}'")


@token_app.command("list")
def token_list(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """List enrollment tokens and their state."""
    relay = _open(data_dir, config)
    for t in tokens.list_enroll_tokens(relay.engine):
        expires = dt.datetime.fromtimestamp(t["expires_at"]).isoformat(timespec="seconds")
        out.print(f"{t['id']}  {t['group']:16} {t['uses']}/{t['max_uses']} uses  "
                  f"expires {expires}  {t['state']}", markup=False)


@token_app.command("revoke")
def token_revoke(token_id: str, data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Revoke an enrollment token."""
    relay = _open(data_dir, config)
    if not tokens.revoke_enroll_token(relay.engine, token_id):
        err.print(f"[red]error:[/] no active token {token_id!r}")
        raise typer.Exit(2)
    relay.record(_actor(), "enroll_token.revoke", f"enroll_token:{token_id}")
    out.print(f"revoked {token_id}", markup=False)


@cert_app.command("show")
def cert_show(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Print the served certificate's expiry and the pins agents trust."""
    from backline.relay import tls_identity
    from backline.relay.state import open_relay

    cfg = _load(data_dir, config)
    relay = open_relay(cfg)
    identity = relay.tls_identity or tls_identity.load(cfg, relay.datadir)
    out.print(f"pins:        {', '.join(relay.token_pins)}", markup=False)
    if identity.fingerprint:
        out.print(f"certificate: SHA-256 {format_fingerprint(identity.fingerprint)}",
                  markup=False)
    days = identity.expires_in_days()
    if days is not None:
        until = dt.datetime.fromtimestamp(identity.not_after or 0, dt.UTC)
        out.print(f"expires:     {until.isoformat(timespec='seconds')} (in {days:.0f} days)",
                  markup=False)


@cert_app.command("rotate")
def cert_rotate(
    new_key: Annotated[bool, typer.Option(
        "--new-key", help="Also change the key: promote the pre-generated next key (which "
                          "agents enrolled or running since it was made already trust) and "
                          "make a new next key. Agents that pin only the current key must "
                          "enroll again.")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="Do --new-key without asking.")] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Renew the self-signed certificate under the same key (agents keep working); then SIGHUP the relay."""  # noqa: E501
    from cryptography.hazmat.primitives.asymmetric import ec

    from backline.relay import datadir as dd
    from backline.relay import tls_identity
    from backline.relay.state import open_relay

    cfg = _load(data_dir, config)
    if cfg.tls != "self-signed":
        err.print(f"[red]error:[/] this relay serves tls = {cfg.tls!r}: renew that certificate "
                  "where it is made (keep its key, or add the new key's pin to tls_pins "
                  "first), then reload the relay (SIGHUP); see docs/operator-guide.md")
        raise typer.Exit(2)
    relay = open_relay(cfg)
    d = relay.datadir
    before = tls_identity.load(cfg, d)
    names = dd.cert_names(dd.load_cert(d.tls_cert))
    if new_key:
        promoted = dd.load_key(d.tls_next_key)
        since = dt.datetime.fromtimestamp(d.tls_next_key.stat().st_mtime, dt.UTC)
        err.print("Changing the relay's TLS key to the next key "
                  f"({before.pins[1] if len(before.pins) > 1 else '?'}). Agents enrolled with "
                  f"a token made since {since.isoformat(timespec='seconds')}, and agents of "
                  "this version that have run connected since (they ask for the relay's pins "
                  "at their first connection and daily), pin it and keep working. Others pin "
                  f"only the current key ({before.pins[0]}): they will refuse the relay and "
                  "must enroll again.", markup=False)
        if not yes and not typer.confirm("Change the key?", default=False):
            raise typer.Exit(1)
        dd.write_self_signed(d.tls_cert, d.tls_key, names, key=promoted)
        dd.write_key(d.tls_key, promoted)
        dd.write_key(d.tls_next_key, ec.generate_private_key(ec.SECP256R1()))
    else:
        dd.write_self_signed(d.tls_cert, d.tls_key, names, key=dd.load_key(d.tls_key))
    after = tls_identity.load(cfg, d)
    relay.record(_actor(), "relay.cert_rotate", "relay", new_key=new_key,
                 fingerprint=after.fingerprint, pins=list(after.pins))
    until = dt.datetime.fromtimestamp(after.not_after or 0, dt.UTC)
    out.print(f"new certificate SHA-256 {format_fingerprint(after.fingerprint)}, valid until "
              f"{until.isoformat(timespec='seconds')}", markup=False)
    out.print(f"key pin {after.pins[0]}"
              + (" (changed)" if new_key else " (unchanged: agents keep working)"),
              markup=False)
    out.print("the running relay serves it after SIGHUP (`kill -HUP <pid>`, "
              "`systemctl reload backline-relay`), within the hour, or at restart",
              markup=False)


def parse_since(text: str) -> float:
    """``24h``/``7d`` ago, an ISO date or time, or Unix seconds."""
    text = text.strip()
    relative = re.fullmatch(r"([0-9]{1,9})([smhd])", text)  # ASCII: \d matches "٣" too
    if relative:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[relative.group(2)]
        return time.time() - int(relative.group(1)) * unit
    if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,9})?", text):
        return float(text)
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter("use 24h, 7d, 2026-01-31, 2026-01-31T12:00 or Unix seconds"
                                 ) from None
    if parsed.tzinfo is None:
        parsed = parsed.astimezone()
    return parsed.timestamp()


@audit_app.command("verify")
def audit_verify(
    against: Annotated[list[Path] | None, typer.Option(
        "--against", help="A checkpoint sink's file (`audit_checkpoint_sinks`): the trail "
                          "must reproduce every checkpoint in it (catches a database "
                          "rewritten with its chain and tree). Repeatable.")] = None,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Check the hash chain, the Merkle tree and the signed checkpoints; print OK or the
    first broken record."""
    from backline.relay.audit_sinks import read_sink_file

    notes: list[str] = []
    for path in against or []:
        try:
            notes += read_sink_file(path)
        except (OSError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}", markup=False)
            raise typer.Exit(2) from None
    result = _open_store(data_dir, config).audit.verify(against=notes)
    (out if result.ok else err).print(result.describe(), markup=False)
    raise typer.Exit(0 if result.ok else 1)


@audit_app.command("events")
def audit_events_doc() -> None:
    """Print every audit action, its meaning and fields, as Markdown (docs/audit-events.md)."""
    from backline.relay import audit_events

    sys.stdout.write(audit_events.markdown())


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(
        help="Only events since: 24h, 7d, an ISO date/time or Unix seconds.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="Output format.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o",
                                                help="File to write (default stdout).")] = None,
    checkpoints: Annotated[bool, typer.Option(
        "--checkpoints", help="Export the signed checkpoints instead of the events "
                              "(keep them off-site: they prove the trail was not cut).")
    ] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """Export events with their hashes as JSON lines, oldest first. The export is itself
    audited (``audit.export``, actor ``cli:USER``) before the first line is written, so
    the export holds its own event; with the relay running or stopped. A trail that
    cannot take that event (a read-only database) is not exported."""
    if fmt != "jsonl":
        err.print("[red]error:[/] the only format is jsonl")
        raise typer.Exit(2)
    if checkpoints and since:
        err.print("[red]error:[/] --since applies to events, not to --checkpoints")
        raise typer.Exit(2)
    store = _open_store(data_dir, config)
    audit = store.audit
    start = parse_since(since) if since else None
    # Audited before a byte leaves (as the API's export is): a failed or cut export
    # is still on the trail.
    store.record(_actor(), "audit.export", "audit", since=start,
                 **({"checkpoints": True} if checkpoints else {}),
                 **({"output": str(output)} if output else {}))
    rows = audit.export_checkpoints() if checkpoints else audit.export(start)
    # A file is written beside its final name and renamed when complete, so a failed
    # export never leaves a truncated file that looks like a whole one.
    partial = output.with_name(output.name + ".partial") if output else None
    stream = open(partial, "w", encoding="utf-8") if partial else sys.stdout
    count = 0
    try:
        for row in rows:
            stream.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    finally:
        if partial:
            stream.close()
    if output and partial:
        partial.replace(output)
        what = "checkpoints" if checkpoints else "events"
        err.print(f"wrote {count} {what} to {output}", markup=False)


@app.command()
def demo(
    data_dir: Annotated[Path, typer.Option(help="Where the demo keeps its state.")] = Path(
        ".demo"),
    port: Annotated[int, typer.Option(help="Relay port.")] = 8443,
) -> None:
    """Run a relay plus one local enrolled agent, printing the URL and credentials."""
    from backline.relay.demo import run_demo

    raise typer.Exit(run_demo(data_dir.resolve(), port))


def main() -> None:
    os.umask(0o077)  # the database and everything else the relay writes is private
    app()
