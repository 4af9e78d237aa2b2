"""``backline-agent fix``: self-service, the approved fixes this machine has kept.

``fix list`` shows the fixes in the signed local cache (agent/fixes/cache.py) and
whether each would run now; ``fix run ID [--param NAME=VALUE]...`` runs the newest
cached version of ID (or ``--version N``) through the same checks as a run from the
relay (signatures against the keys pinned now, revocation, platform, policy,
parameters) and the same executor, its output on this terminal. The customer typed
the command, so that is their consent; a fix that says ``consent = true`` is still
shown and asked about unless ``--yes``.

Exit status (agent/exit_codes.py): 0 the fix ran and worked (exit 0 and its verify
script passed); ``EXIT_FIX_FAILED`` it ran and did not; ``EXIT_REFUSED`` a check
refused it (revoked, unsigned...); ``EXIT_DECLINED`` the customer said no;
``EXIT_USAGE`` no such cached fix or bad arguments.

Each run that ended is kept for the relay (agent/fix_reports.py: the running agent
reports it on its control socket, now or when it next connects) and said in the
activity log with the same ``run_id``; refusals and runs that never started are not
reported, nor a run whose command was killed before the script ended.

``diagnose`` uses :func:`suggestions` to offer the cached fixes for what it found.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backline.agent.exit_codes import EXIT_DECLINED, EXIT_FIX_FAILED, EXIT_REFUSED, EXIT_USAGE
from backline.agent.state import StateDir

if TYPE_CHECKING:
    from backline.agent.activity import ActivityLog
    from backline.agent.fixes.cache import Cached
    from backline.agent.fixes.checks import Checked
    from backline.agent.fixes.executor import RunResult
    from backline.agent.policy import Policy
    from backline.common.fixes.manifest import FixManifest


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from backline.agent.session_commands import policy_option

    f = sub.add_parser("fix", help="approved fixes kept on this machine: list them, run one",
                       description="Approved fixes this machine has run or was given, kept "
                                   "with their signatures and checked again at every use.")
    fs = f.add_subparsers(dest="fix_command", required=True)
    ls = fs.add_parser("list", help="the cached approved fixes and whether each may run now")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    policy_option(ls)
    r = fs.add_parser("run", help="run a cached approved fix here, after checking it again")
    r.add_argument("id", help="the fix id (see `backline-agent fix list`)")
    r.add_argument("--version", type=int, default=None,
                   help="this cached version (default: the newest cached one)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter of the fix (repeat for more); checked against its schema")
    r.add_argument("--yes", action="store_true",
                   help="do not ask before a fix that asks for consent")
    policy_option(r)


def _err(code: int, message: str) -> int:
    print(f"backline-agent fix: {message}", file=sys.stderr)
    return code


def _verify_cached(state: StateDir, cached: Cached, policy: Policy,
                   params: dict[str, object], check_params: bool) -> Checked:
    """Check one cached entry exactly as a relay request (the manifest structurally,
    signatures, then the whole manifest, revocation, platform, policy, parameters);
    raises :class:`~backline.agent.fixes.checks.Refusal`."""
    from backline.agent.fixes import checks, trust
    from backline.common.fixes.manifest import ManifestError

    try:
        manifest = checks.structural_manifest(cached.manifest)
    except ManifestError as exc:
        raise checks.Refusal("bad_request", f"the cached manifest is unusable: {exc}") from None
    if (manifest.id, manifest.version) != (cached.fix_id, cached.version):
        raise checks.Refusal("bad_request", "the cached file does not hold the fix its name says")
    return checks.check_fix(manifest, cached.signatures, params, state_root=state.root,
                            fix_policy=policy.fix, trust=trust.load_trust(state.root, policy),
                            check_params=check_params, manifest_data=cached.manifest)


def cmd_fix(state: StateDir, args: argparse.Namespace) -> int:
    from backline.agent.policy import PolicyError, load_policy

    try:
        policy = load_policy(state.root, args.policy)
    except PolicyError as exc:
        return _err(EXIT_USAGE, str(exc))
    if args.fix_command == "list":
        return _list(state, policy, args.json)
    return _run(state, policy, args)


def _list(state: StateDir, policy: Policy, as_json: bool) -> int:
    """``fix list``: each cached fix, checked now, and whether it would run."""
    from backline.agent.fixes import cache, checks

    found = cache.entries(state.root)
    if not found and not as_json:
        print("no approved fixes are kept on this machine yet")
        return 0
    for cached in found:
        status, detail, title, risk = "ready", "", "", ""
        try:
            checked = _verify_cached(state, cached, policy, {}, check_params=False)
            title, risk = checked.manifest.title, checked.manifest.risk
        except checks.Refusal as exc:
            status, detail = exc.reason, exc.detail
            title = str(cached.manifest.get("title", ""))[:120]
        if as_json:
            print(json.dumps({"id": cached.fix_id, "version": cached.version, "title": title,
                              "risk": risk or None, "status": status, "detail": detail or None,
                              "rules": cached.manifest.get("rules", [])}))
        else:
            line = f"{cached.fix_id}@{cached.version}  {checks.printable(title, 120)}"
            line += f"  (risk {risk})" if risk else ""
            line += "" if status == "ready" else f"  [cannot run: {status}]"
            print(line)
    return 0


def _params(manifest: FixManifest, pairs: list[str]) -> dict[str, object]:
    """``--param NAME=VALUE`` texts, typed by the (verified) manifest's schema."""
    from backline.common.fixes.params import params_from_text

    texts: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--param {pair[:40]!r}: expected NAME=VALUE")
        texts[name] = value
    return params_from_text(manifest, texts)


def _run(state: StateDir, policy: Policy, args: argparse.Namespace) -> int:
    """``fix run``: the same checks as a run from the relay (signatures before any
    author pattern is applied to a parameter), consent, the revocation list read again
    just before it starts, then the executor with its output on this terminal."""
    from backline.agent import fix_reports
    from backline.agent.activity import ACTIVITY_NAME, ActivityLog
    from backline.agent.fixes import cache, checks
    from backline.agent.fixes.executor import FixRunError
    from backline.common.fixes.params import ParamError, validate_params

    log = ActivityLog(state.root / ACTIVITY_NAME)
    cached = cache.find(state.root, args.id, args.version)
    if cached is None:
        which = args.id if args.version is None else f"{args.id}@{args.version}"
        return _err(EXIT_USAGE, f"no approved fix {which!r} is kept on this machine "
                                "(see `backline-agent fix list`)")
    record = {"fix": cached.fix_id, "version": cached.version, "mode": "self-service"}
    try:
        checked = _verify_cached(state, cached, policy, {}, check_params=False)
        env = validate_params(checked.manifest, _params(checked.manifest, args.param))
        checked = dataclasses.replace(checked, env=env)
    except (ValueError, ParamError) as exc:
        log.record("fix.refused", **record, reason="params", detail=str(exc)[:300])
        return _err(EXIT_REFUSED, f"refused (params): {exc}")
    except checks.Refusal as exc:
        log.record("fix.refused", **record, reason=exc.reason, detail=exc.detail[:300])
        return _err(EXIT_REFUSED, f"refused ({exc.reason}): {exc.detail}")
    m = checked.manifest
    record["digest"] = checked.digest
    print(f"backline-agent fix: {m.title} ({m.id}@{m.version}, risk {m.risk}); signed by "
          f"{', '.join(checked.signers)}", file=sys.stderr)
    if m.consent and not args.yes:
        if not sys.stdin.isatty():
            log.record("fix.refused", **record, reason="consent", detail="no terminal to ask")
            return _err(EXIT_DECLINED, "this fix asks for consent: run it from a terminal "
                                       "or with --yes")
        answer = input(checks.consent_question(m, checked.env, "you (self-service)")
                       + " [y/N] ").strip().lower()
        if answer not in ("y", "yes"):
            log.record("fix.refused", **record, reason="consent", detail="declined")
            return _err(EXIT_DECLINED, "not run")
    try:  # revoked while the customer was reading the question: not run
        checks.recheck_revoked(state.root, m)
    except checks.Refusal as exc:
        log.record("fix.refused", **record, reason=exc.reason, detail=exc.detail[:300])
        return _err(EXIT_REFUSED, f"refused ({exc.reason}): {exc.detail}")
    run_id = fix_reports.new_run_id()
    log.record("fix.started", **record, run_id=run_id, params=sorted(checked.env))
    started_at = time.time()
    try:
        result = asyncio.run(_execute(m, checked.env))
    except FixRunError as exc:
        log.record("fix.refused", **record, run_id=run_id, reason=exc.reason,
                   detail=str(exc)[:300])
        return _err(EXIT_REFUSED, f"refused ({exc.reason}): {exc}")
    ended_at = max(time.time(), started_at)
    _report(state, log, record, run_id, result, started_at, ended_at)
    log.record("fix.ended", **record, run_id=run_id, exit_status=result.exit_status,
               signal=result.signal, timed_out=result.timed_out,
               output_sha256=result.output_sha256, kept_bytes=result.kept_bytes,
               output_bytes=result.output_bytes,
               verify_passed=None if result.verify is None else result.verify.passed,
               duration_ms=result.duration_ms)
    fix_reports.poke(state.root)  # the running agent sends it now; if none, when it runs
    if result.timed_out:
        print(f"backline-agent fix: timed out after {m.timeout_s} s", file=sys.stderr)
    if result.verify is not None:
        print(f"backline-agent fix: verify {'passed' if result.verify.passed else 'FAILED'}",
              file=sys.stderr)
    return 0 if result.succeeded else EXIT_FIX_FAILED


def _report(state: StateDir, log: ActivityLog, record: dict[str, object], run_id: str,
            result: RunResult, started_at: float, ended_at: float) -> None:
    """Keep the run for the relay (agent/fix_reports.py), durably, before the command
    says how it went: the agent sends it when it is connected. A run that cannot be kept
    (a full disk) is said on the terminal and in the activity log, never hidden."""
    from backline.agent import fix_reports
    from backline.common.protocol import ProtocolError

    report = {"run_id": run_id, "fix": record["fix"], "version": record["version"],
              "digest": record["digest"], "exit_status": result.exit_status,
              "signal": result.signal, "timed_out": result.timed_out,
              "verify": ("none" if result.verify is None
                         else "passed" if result.verify.passed else "failed"),
              "output_sha256": result.output_sha256,
              "started_at": round(started_at, 3), "ended_at": round(ended_at, 3)}
    try:
        fix_reports.keep(state.root, report)
    except (OSError, ProtocolError) as exc:
        log.record("fix.report.unkept", **record, run_id=run_id, detail=str(exc)[:300])
        print(f"backline-agent fix: this run could not be kept for the relay ({exc}); "
              "it is in the activity log only", file=sys.stderr)


async def _execute(manifest: FixManifest, env: dict[str, str]) -> RunResult:
    """Run it, its output on this terminal as it comes."""
    from backline.agent.fixes.executor import DEFAULT_MAX_OUTPUT, run_fix

    def show(event: dict[str, object]) -> None:
        if event["type"] == "output":
            out = sys.stdout.buffer if event["fd"] == 1 else sys.stderr.buffer
            out.write(base64.b64decode(str(event["b64"])))
            out.flush()
        elif event["type"] == "cut":
            print(f"\nbackline-agent fix: output cut at {event['kept_bytes']} bytes (the rest "
                  "is not shown)", file=sys.stderr)

    return await run_fix(manifest, env, DEFAULT_MAX_OUTPUT, show)


def suggestions(state_root: Path, rule_ids: set[str]) -> list[tuple[str, str, str]]:
    """``(rule, id@version, title)`` of the cached fixes that address ``rule_ids`` and
    would run now (verified, not revoked); only the newest version of each fix."""
    if not rule_ids:
        return []
    from backline.agent.fixes import cache, checks
    from backline.agent.policy import PolicyError, load_policy

    try:
        policy = load_policy(state_root)
    except PolicyError:
        return []
    state = StateDir(state_root)
    offered: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for cached in cache.entries(state_root):
        if cached.fix_id in seen:
            continue
        rules = cached.manifest.get("rules", [])
        hits = sorted(set(rules) & rule_ids) if isinstance(rules, list) else []
        if not hits:
            continue
        try:
            checked = _verify_cached(state, cached, policy, {}, check_params=False)
        except checks.Refusal:
            continue
        seen.add(cached.fix_id)
        for rule in hits:
            offered.append((rule, checked.manifest.ref, checked.manifest.title))
    return offered
