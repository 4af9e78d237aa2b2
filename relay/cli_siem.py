"""``backline-relay retention ...`` and ``backline-relay siem status``
(docs/siem-and-retention.md)."""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from backline.relay import config as config_mod

retention_app = typer.Typer(help="Delete recordings and reports past their age (except "
                                 "under a legal hold); list holds.", no_args_is_help=True)
siem_app = typer.Typer(help="The audit trail's SIEM destinations.", no_args_is_help=True)
err = Console(stderr=True)

if TYPE_CHECKING:
    from backline.relay.state import Relay

DataDirOpt = Annotated[Path | None, typer.Option(help="Data directory.")]
ConfigOpt = Annotated[Path | None, typer.Option(help="Config file (TOML).")]


def _relay(data_dir: Path | None, config_file: Path | None) -> Relay:
    from backline.relay.state import open_relay

    try:
        return open_relay(config_mod.load(config_file, {"data_dir": data_dir}))
    except config_mod.ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


@retention_app.command("run")
def retention_run(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be "
                                                            "deleted and what is held.")] = False,
    data_dir: DataDirOpt = None, config: ConfigOpt = None,
) -> None:
    """One retention pass now: delete the content of recordings and reports older than
    retention_recordings_days / retention_reports_days, keep their rows and digests,
    audit each deletion (retention.deleted)."""
    from backline.relay import retention

    relay = _relay(data_dir, config)
    c = relay.config
    if not (c.retention_recordings_days or c.retention_reports_days):
        err.print("retention is off: set [retention] recordings_days and/or reports_days")
        raise typer.Exit(0)
    if dry_run:
        result = retention.plan(relay.engine, c)
        for item in result.due:
            sys.stdout.write(json.dumps({"would_delete": item.target, "kind": item.kind,
                                         "session": item.session,
                                         "sha256": item.sha256}) + "\n")
        for item in result.held:
            sys.stdout.write(json.dumps({"held": item.target, "kind": item.kind,
                                         "session": item.session}) + "\n")
        err.print(f"dry run: {len(result.due)} would be deleted, {len(result.held)} kept "
                  "under a legal hold", markup=False)
        return
    with Progress(TextColumn("retention"), BarColumn(), MofNCompleteColumn(),
                  console=err, transient=False) as bar:
        task = bar.add_task("deleting", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = retention.run(relay.engine, relay.blobs, c, relay.record, trigger="cli",
                               progress=progress)
    err.print(f"deleted {result.deleted}, kept {len(result.held)} under a legal hold",
              markup=False)


@retention_app.command("holds")
def retention_holds(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """The legal holds (JSON lines, newest first; lifted ones included)."""
    from backline.relay import retention

    relay = _relay(data_dir, config)
    for row in retention.list_holds(relay.engine):
        sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")


@siem_app.command("status")
def siem_status(data_dir: DataDirOpt = None, config: ConfigOpt = None) -> None:
    """Each destination's cursor (the last event handed over) and how far behind the
    trail's head it is."""
    import sqlalchemy as sa

    from backline.relay.schema import audit_head
    from backline.relay.siem.stream import read_db_cursor, target_of

    relay = _relay(data_dir, config)
    with relay.engine.connect() as conn:
        head = conn.execute(sa.select(audit_head.c.seq)).scalar() or 0
    for dest in relay.config.siem_destinations:
        cursor = read_db_cursor(relay.engine, dest.name)
        seq = cursor.seq if cursor else 0
        sys.stdout.write(json.dumps({"destination": dest.name, "target": target_of(dest.url),
                                     "seq": seq, "head": head, "behind": head - seq,
                                     "checked_at": round(time.time(), 3)}) + "\n")
