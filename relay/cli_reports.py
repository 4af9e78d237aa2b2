"""``backline-relay report``: management reports from the relay's own machine
(docs/reports.md). ``show`` prints one as JSON (audited ``report.exported``); ``send``
delivers one now through the configured ``report_via`` (what the schedule does; audited
the same way, ``report.delivered``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from backline.relay import config as config_mod

report_app = typer.Typer(help="Management reports (docs/reports.md).", no_args_is_help=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="BACKLINE_DATA_DIR",
                                              help="The relay's data directory.")]
ConfigFile = Annotated[Path | None, typer.Option("--config", help="A relay.toml.")]
Group = Annotated[str, typer.Option(help="One group's agents (default: all).")]
Days = Annotated[float, typer.Option(min=0.01, max=400, help="The period: the last N days.")]


def _open(data_dir: Path | None, config_file: Path | None):  # type: ignore[no-untyped-def]
    from backline.relay.state import open_relay

    try:
        return open_relay(config_mod.load(config_file, {"data_dir": data_dir}))
    except config_mod.ConfigError as exc:
        typer.echo(f"configuration error: {exc}", err=True)
        raise typer.Exit(2) from None


@report_app.command("show")
def show(data_dir: DataDir = None, config_file: ConfigFile = None, group: Group = "",
         days: Days = 28.0) -> None:
    """Print the report of the last DAYS days as JSON (without its members' lists).
    Audited ``report.exported`` (format ``json``), as the API's CSV is."""
    from backline.relay.reports import clock, compute
    from backline.relay.store import cli_actor

    relay = _open(data_dir, config_file)
    until = clock.now()
    full = compute.report(relay.engine, since=until - days * compute.DAY, until=until,
                          group=group)
    # Recorded before it is printed: nothing leaves unaudited.
    relay.record(cli_actor(), "report.exported", "report", format="json", group=group,
                 since=full["since"], until=full["until"])
    typer.echo(json.dumps(compute.summary(full), indent=2))


@report_app.command("send")
def send(data_dir: DataDir = None, config_file: ConfigFile = None, group: Group = "",
         days: Days = 7.0) -> None:
    """Deliver the report of the last DAYS days now, through report_via."""
    from backline.relay.reports import clock, delivery

    relay = _open(data_dir, config_file)
    if not relay.config.report_via:
        typer.echo("report_via is empty: set it to webhook and/or smtp", err=True)
        raise typer.Exit(2)
    until = clock.now()
    failed = delivery.deliver(relay, until - days * 86400.0, until, group)
    relay.flush_records()
    for line in failed:
        typer.echo(f"failed: {line}", err=True)
    if failed:
        raise typer.Exit(1)
    typer.echo(f"delivered via {', '.join(relay.config.report_via)} "
               f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(until))})")
