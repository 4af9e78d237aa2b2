"""``backline-agent diagnose``: the same checks a technician runs, on the customer's terminal.

Works without enrollment (then the relay is simply not among the endpoints). Exit
status is 0 whatever was found - findings describe the machine, they are not errors
of this command; 2 means the config file is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from backline.agent.diagnostics.config import ENV_CONFIG, ConfigError, load_config


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser("diagnose", help="check this machine and explain what is wrong",
                       description="Run the diagnostics a technician would see: findings "
                                   "first, most severe first, then each section.")
    d.add_argument("--json", action="store_true", help="print the full report as JSON")
    d.add_argument("--config", type=Path, default=None,
                   help=f"agent config file (default: ${ENV_CONFIG} or agent.toml in the "
                        "state dir)")


def cmd_diagnose(state_root: Path, args: argparse.Namespace) -> int:
    from backline.agent.diagnostics.engine import collect  # the collectors: only here
    from backline.agent.diagnostics.render import render_text
    from backline.common.diagnostics.schema import to_json

    try:
        config = load_config(state_root, args.config)
    except ConfigError as exc:
        print(f"backline-agent: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(collect(config))
    if args.json:
        sys.stdout.write(to_json(report, indent=2) + "\n")
    else:
        sys.stdout.write(render_text(report))
        _offer_fixes(state_root, {f.rule_id for f in report.findings})
    return 0


def _offer_fixes(state_root: Path, rule_ids: set[str]) -> None:
    """The approved fixes this machine keeps for what was found (agent/fix_cli.py)."""
    from backline.agent.fix_cli import suggestions

    offered = suggestions(state_root, rule_ids)
    if offered:
        sys.stdout.write("\nApproved fixes you can run yourself:\n")
        for rule, ref, title in offered:
            fix_id, _, version = ref.partition("@")
            sys.stdout.write(f"  {title} (for {rule}): backline-agent fix run {fix_id} "
                             f"--version {version}\n")
