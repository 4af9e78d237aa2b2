"""``backline-relay timeline``: maintain the terminal text index (relay/term_index.py).

The index is built when a recording is stored; recordings stored before migration 0009,
or whose indexing failed (logged), are indexed by ``reindex``. It reads the blobs
through the store, so a damaged recording is named and skipped, never indexed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from backline.relay import config as config_mod

timeline_app = typer.Typer(help="The session timeline's terminal text index.",
                           no_args_is_help=True)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="BACKLINE_DATA_DIR",
    help="Where the relay keeps its database, keys and certificate.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", envvar="BACKLINE_CONFIG", help="A TOML file of settings.")]


@timeline_app.command("reindex")
def reindex(data_dir: DataDirOpt = None, config_file: ConfigOpt = None) -> None:
    """Index every terminal recording that has no index yet; say what could not be."""
    from backline.relay import term_index
    from backline.relay.state import open_relay

    try:
        relay = open_relay(config_mod.load(config_file, {"data_dir": data_dir}))
    except config_mod.ConfigError as exc:
        err.print(f"[red]configuration error:[/] {exc}")
        raise typer.Exit(2) from None
    failed = 0
    todo = term_index.unindexed(relay.engine)
    for row in todo:
        try:
            rows = term_index.index_recording(
                relay.engine, relay.blobs, recording_id=row["id"],
                session_id=row["session_id"], sha256=row["sha256"],
                keystrokes=bool(row["keystrokes"]))
            out.print(f"{row['id']}: {rows} index rows")
        except (OSError, ValueError) as exc:
            failed += 1
            err.print(f"[red]{row['id']}: not indexed:[/] {exc}")
    out.print(f"indexed {len(todo) - failed} of {len(todo)} recordings")
    if failed:
        raise typer.Exit(1)
