"""The session-related commands of ``backline-agent``: ``join``, ``policy``, ``sessions``,
``end ID`` and ``end-sessions``.

Kept apart from :mod:`backline.agent.cli` so that file stays a short table of
commands; each function here returns the process exit status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from backline.agent.policy import ENV_POLICY, PolicyError, load_policy
from backline.agent.state import StateDir

if TYPE_CHECKING:
    from backline.common.tlspin import Trust

log = logging.getLogger("backline.agent")

from backline.agent.exit_codes import (  # noqa: E402
    EXIT_DECLINED,
    EXIT_NOT_RUNNING,
    EXIT_PIN,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    j = sub.add_parser(
        "join", help="start one attended support session with a code from your technician",
        description="Join a support session: nothing is installed, nothing is kept, and you "
                    "are asked before it starts. Press Ctrl-C to end it.")
    j.add_argument("code", help="the session code, like 123-456-789")
    j.add_argument("--relay", required=True, help="the relay's URL (https://host:port)")
    j.add_argument("--pin", required=True,
                   help="the relay's TLS key pin, sha256//... (the console shows it; the "
                        "SHA-256 of its certificate, 64 hex digits, from older relays)")
    j.add_argument("--ca-file", type=Path, default=None,
                   help="a CA certificate (PEM) the relay's chain must verify against, when "
                        "its operator says so; --pin is then that CA's key pin")
    j.add_argument("--allow-public-ca", action="store_true",
                   help="accept a --ca-file that this system trusts by default (a public "
                        "CA), which trusts any certificate it issues for the relay's name; "
                        "refused without this")
    policy_option(j)
    p = sub.add_parser("policy", help="show what this machine's policy allows technicians")
    policy_option(p)
    s = sub.add_parser("sessions", help="list the live support sessions of the running agent",
                       description="The support sessions the running agent holds now: "
                                   "who, what they are using, since when. End one with "
                                   "`backline-agent end ID`.")
    s.add_argument("--json", action="store_true", help="print them as JSON")
    e = sub.add_parser("end", help="end one support session at once",
                       description="End one live support session (see `backline-agent "
                                   "sessions`): its terminal and every channel close now.")
    e.add_argument("id", help="the session id, ss_...")
    sub.add_parser("end-sessions", help="end every support session the running agent holds")


def policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", type=Path, default=None,
                        help=f"policy file (default: ${ENV_POLICY}, policy.toml in the state "
                             "dir, or /etc/backline/policy.toml)")


def _fail(code: int, message: str) -> int:
    print(f"backline-agent: {message}", file=sys.stderr)
    return code


def check_policy(state: StateDir, explicit: Path | None) -> int:
    """0 when the policy file (if any) is usable; else the error is printed."""
    try:
        load_policy(state.root, explicit)
    except PolicyError as exc:
        return _fail(EXIT_USAGE, str(exc))
    return 0


def cmd_policy(state: StateDir, args: argparse.Namespace) -> int:
    try:
        policy = load_policy(state.root, args.policy)
    except PolicyError as exc:
        return _fail(EXIT_USAGE, str(exc))
    print(f"policy: {policy.source}")
    for name, decision in policy.summary().items():
        print(f"  {name:<12} {decision}")
    print(f"  (ask waits {policy.ask_timeout_s:g} s for an answer; anything unlisted: deny)")
    fix = policy.fix
    print(f"fixes: {fix.decision}; {len(fix.offline_keys)} offline approver key(s), "
          f"{fix.required_offline} required; "
          + (f"only {', '.join(fix.allowed_ids)}" if fix.allowed_ids else "any approved fix"))
    return 0


def cmd_join(state: StateDir, args: argparse.Namespace) -> int:
    from websockets.exceptions import WebSocketException

    from backline.agent.join import JoinError, run_join
    from backline.agent.link import RelayUnreachable
    from backline.common.protocol import ProtocolError
    from backline.common.tlspin import BadPin, PinMismatch

    try:
        # An attended session reads a policy only when one is named or installed.
        policy = load_policy(None, args.policy)
    except PolicyError as exc:
        return _fail(EXIT_USAGE, str(exc))
    try:
        trust = trust_from_args(args.pin, args.ca_file, args.allow_public_ca)
    except (BadPin, OSError, ValueError) as exc:
        return _fail(EXIT_USAGE, f"--pin/--ca-file: {exc}")
    if args.log_level == "info":  # the customer's terminal shows the activity lines
        logging.getLogger("backline").setLevel(logging.WARNING)
    try:
        result = run_join(args.code, args.relay, trust, policy)
    except JoinError as exc:
        code = EXIT_USAGE if exc.code == "code_malformed" else EXIT_REFUSED
        if exc.code == "cancelled":
            code = EXIT_DECLINED
        return _fail(code, str(exc))
    except PinMismatch as exc:
        return _fail(EXIT_PIN, str(exc))
    except RelayUnreachable as exc:
        return _fail(EXIT_UNREACHABLE, str(exc))
    except (ProtocolError, WebSocketException) as exc:
        # The relay spoke out of turn or the connection broke: say so, no traceback.
        return _fail(EXIT_REFUSED, f"the session with the relay broke: {exc}")
    if not result.accepted:
        return EXIT_DECLINED
    print(f"Session ended: {result.ended}. Nothing was installed; nothing keeps running.")
    return 0


def trust_from_args(pins: str | list[str], ca_file: Path | None,
                    allow_public_ca: bool = False) -> Trust:
    """The trust named on the command line; with a CA file, its key must be pinned, and
    it must not be a public CA (unless ``allow_public_ca``: then with a warning)."""
    from backline.agent.enroll import public_ca_refusal
    from backline.common.tlspin import Trust, public_ca_name

    ca_pem = ca_file.read_text() if ca_file else ""
    trust = Trust.of(pins, ca_pem)
    if ca_pem and trust.ca_pin not in trust.pins:
        raise ValueError(f"the CA file's key pin is {trust.ca_pin}, which is not the pin given")
    public = public_ca_name(ca_pem) if ca_pem else ""
    if public and not allow_public_ca:
        raise ValueError(public_ca_refusal(public))
    if public:
        log.warning("%s; accepted (--allow-public-ca)", public_ca_refusal(public, False))
    return trust


def cmd_sessions(state: StateDir, args: argparse.Namespace) -> int:
    from backline.agent.localcontrol import LocalError, request

    try:
        answer = request(state.root, {"op": "sessions"})
    except LocalError as exc:
        return _fail(EXIT_NOT_RUNNING, str(exc))
    if not answer.get("ok"):
        return _fail(EXIT_REFUSED, f"the agent refused: {answer.get('detail', '')}")
    sessions = answer.get("sessions", [])
    if args.json:
        print(json.dumps(sessions, indent=2))
        return 0
    if not sessions:
        print("no live support sessions")
        return 0
    print(f"{'ID':<30} {'TECHNICIAN':<20} {'IN USE':<20} {'SINCE':<20} REASON")
    for s in sessions:
        since = dt.datetime.fromtimestamp(float(s["since"])).isoformat(timespec="seconds")
        why = s["reason"] + (f" [{s['ticket']}]" if s["ticket"] else "")
        print(f"{_show(s['id'], 30):<30} {_show(s['technician'], 20):<20} "
              f"{_show(', '.join(s['in_use']) or '-', 20):<20} {since:<20} {_show(why, 60)}")
        cobrowse = s.get("cobrowse")
        if isinstance(cobrowse, dict):
            print(f"    co-browse: control {_show(cobrowse.get('control', '-'), 20)}; "
                  "hidden from the technician: "
                  f"{_show('; '.join(map(str, cobrowse.get('hidden', []))), 400)}")
    return 0


def _show(text: str, width: int) -> str:
    """Relay-supplied text on the customer's terminal: printable only, cut to fit."""
    clean = "".join(ch for ch in str(text) if ch.isprintable())
    return clean if len(clean) <= width else clean[: width - 1] + "…"


def cmd_end(state: StateDir, args: argparse.Namespace) -> int:
    from backline.agent.localcontrol import LocalError, request

    try:
        answer = request(state.root, {"op": "end", "id": args.id})
    except LocalError as exc:
        return _fail(EXIT_NOT_RUNNING, str(exc))
    if not answer.get("ok"):
        code = EXIT_USAGE if answer.get("error") in ("no_such_session", "malformed") \
            else EXIT_REFUSED
        return _fail(code, str(answer.get("detail") or answer.get("error")))
    print(f"ended session {args.id}")
    return 0


def cmd_end_sessions(state: StateDir) -> int:
    from backline.agent.localcontrol import LocalError, request

    try:
        answer = request(state.root, {"op": "end_all"})
        if answer.get("ok"):
            print(f"ended {answer.get('ended', 0)} support session(s)")
            return 0
    except LocalError:
        pass  # an agent from before the control socket: signal it
    status = state.read_status()
    try:
        pid = int(status["pid"]) if status and status.get("state") != "stopped" else 0
        if pid <= 0:
            raise ProcessLookupError
        os.kill(pid, getattr(signal, "SIGUSR1", signal.SIGTERM))
    except (ProcessLookupError, PermissionError, ValueError, KeyError):
        return _fail(EXIT_NOT_RUNNING, "the agent is not running here (nothing to end)")
    print(f"asked the agent (pid {pid}) to end its support sessions")
    return 0
