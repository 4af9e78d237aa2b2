"""``backline-agent``: enroll this machine with a relay, run the agent, show its status."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import sys
from pathlib import Path

from backline.agent import fix_cli, session_commands
from backline.agent.diagnostics import command as diagnose_command

# Distinct exit codes, so scripts can tell failures apart (one table: agent/exit_codes.py).
from backline.agent.exit_codes import (
    EXIT_NOT_ENROLLED,
    EXIT_PIN,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from backline.agent.state import StateDir, default_state_dir
from backline.common import __version__

# The commands' machinery (the agent's connection, enrollment, diagnostics, SSH) is
# imported by the command that needs it: `backline-agent run` stays small while idle.


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="backline-agent", description=(
        "The Backline agent: connects out to your support relay so technicians can help "
        "this machine. It does nothing the local policy does not allow."))
    p.add_argument("--version", action="version", version=f"backline-agent {__version__}")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="where the agent keeps its key and pinned relay (default: "
                        "$BACKLINE_AGENT_STATE_DIR, else the user data directory: "
                        "~/.local/share/backline-agent on Linux)")
    p.add_argument("--log-level", default=os.environ.get("BACKLINE_AGENT_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enroll", help="enroll this machine with a one-time token")
    e.add_argument("token", help="the token from the console or `backline-relay token create`")
    e.add_argument("--hostname", help="the name to report instead of this machine's hostname")
    e.add_argument("--force", action="store_true", help="replace an existing enrollment")
    e.add_argument("--ca-file", type=Path, default=None,
                   help="a CA certificate (PEM) the relay's chain must verify against, when "
                        "its operator says so (TLS ending at a proxy with a CA-issued "
                        "certificate); the token must pin that CA's key")
    e.add_argument("--allow-public-ca", action="store_true",
                   help="accept a --ca-file that this system trusts by default (a public "
                        "CA), which trusts any certificate it issues for the relay's name; "
                        "refused without this")
    r = sub.add_parser("run", help="connect to the relay and stay connected (until SIGTERM)")
    session_commands.policy_option(r)
    sub.add_parser("status", help="show enrollment and connection state")
    diagnose_command.add_parser(sub)
    fix_cli.add_parser(sub)
    session_commands.add_parsers(sub)
    return p


def _fail(code: int, message: str) -> int:
    print(f"backline-agent: {message}", file=sys.stderr)
    return code


def cmd_enroll(state: StateDir, args: argparse.Namespace) -> int:
    from backline.agent.enroll import EnrollError, enroll
    from backline.agent.link import RelayUnreachable
    from backline.common.tlspin import PinMismatch

    if state.is_enrolled() and not args.force:
        return _fail(EXIT_USAGE, f"already enrolled (state in {state.root}); "
                                 "use --force to enroll again")
    try:
        ca_pem = args.ca_file.read_text() if args.ca_file else ""
    except OSError as exc:
        return _fail(EXIT_USAGE, f"--ca-file: {exc}")
    try:
        result = asyncio.run(enroll(args.token, state, args.hostname, ca_pem=ca_pem,
                                    allow_public_ca=args.allow_public_ca))
    except EnrollError as exc:
        code = (EXIT_USAGE if exc.code in ("token_malformed", "ca_malformed", "ca_public")
                else EXIT_REFUSED)
        return _fail(code, f"enrollment refused: {exc}")
    except PinMismatch as exc:
        return _fail(EXIT_PIN, str(exc))
    except RelayUnreachable as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    print(f"enrolled as {result.agent_id} in group {result.group} at {result.relay_url}")
    print(f"pinned relay {'CA' if result.ca_pem else 'key'} {', '.join(result.pins)}")
    print("start the agent with: backline-agent run")
    return 0


def cmd_status(state: StateDir) -> int:
    from backline.common.tlspin import format_fingerprint

    if not state.is_enrolled():
        print(f"not enrolled (state dir {state.root})")
        return EXIT_NOT_ENROLLED
    e = state.load_enrollment()
    print(f"agent:      {e.agent_id} (group {e.group})")
    print(f"relay:      {e.relay_url}")
    if e.pins:
        print(f"pinned TLS: {'CA ' if e.ca_pem else ''}{', '.join(e.pins)}")
    if e.fingerprint:
        print(f"pinned TLS: certificate {format_fingerprint(e.fingerprint)} (legacy; the "
              "key's pin replaces it at the next connection)")
    status = state.read_status()
    running = False
    if status:
        try:
            os.kill(int(status["pid"]), 0)
            running = status["state"] != "stopped"
        except (OSError, ValueError, KeyError):
            running = False
    if not status or not running:
        print("connection: not running")
        return 0
    since = dt.datetime.fromtimestamp(status["since"]).isoformat(timespec="seconds")
    line = f"connection: {status['state']} since {since} (pid {status['pid']})"
    if status.get("last_error"):
        line += f"; last error: {status['last_error']}"
    print(line)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    state = StateDir(args.state_dir or default_state_dir())
    if args.command == "enroll":
        return cmd_enroll(state, args)
    if args.command == "status":
        return cmd_status(state)
    if args.command == "diagnose":
        return diagnose_command.cmd_diagnose(state.root, args)
    if args.command == "fix":
        return fix_cli.cmd_fix(state, args)
    if args.command == "join":
        return session_commands.cmd_join(state, args)
    if args.command == "policy":
        return session_commands.cmd_policy(state, args)
    if args.command == "end-sessions":
        return session_commands.cmd_end_sessions(state)
    if args.command == "sessions":
        return session_commands.cmd_sessions(state, args)
    if args.command == "end":
        return session_commands.cmd_end(state, args)
    if not state.is_enrolled():
        return _fail(EXIT_NOT_ENROLLED, f"not enrolled (state dir {state.root}); "
                                        "run `backline-agent enroll TOKEN` first")
    if session_commands.check_policy(state, args.policy):
        return EXIT_USAGE
    from backline.agent.control import run_forever
    from backline.agent.keychild import KeyUnusable

    try:
        run_forever(state, args.policy)
    except KeyUnusable as exc:
        return _fail(EXIT_NOT_ENROLLED, f"{exc}; enroll again with `backline-agent enroll "
                                        "--force TOKEN`")
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
