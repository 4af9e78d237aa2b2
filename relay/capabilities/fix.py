"""``fix``: run one approved fix version on the agent, and keep what it did.

The technician asks for ``{"fix": "ID@VERSION", "params": {...}, "finding": rule|null}``
(REST ``POST .../channels/fix``, or the first text frame on ``/stream/fix``). The relay
refuses, audited (``fix.run.refused`` with ``side: relay``), a version that is not
approved or is revoked and parameters its schema refuses; otherwise it writes the one
request line of the contract (docs/fixes-relay.md) — the manifest exactly as stored,
its signatures, the parameters, who asks and why — and keeps the input open, so that a
``{"type":"cancel"}`` line can follow. Everything the agent answers is its word: each
line is bounded (64 KiB) and checked before it is believed, and every step it reports
is audited with the manifest's digest (``fix.run.consent``, ``.started``, ``.ended``).

The output is kept as a blob of the raw bytes decoded from the ``output`` lines, in
order, at most ``max_output`` (config ``fix_max_output_bytes``, 16 MiB by default);
its SHA-256 must equal the agent's ``end.output_sha256`` (``output_ok`` in
``fix.run.ended``; a mismatch is also ``fix.run.failed``). The relay does not re-check
the stored manifest against its approval before sending it: the agent does, and it is
the agent's refusal that keeps a tampered database harmless; the relay records what it
sent (``sent_digest`` when it differs from the approved digest).

After a run from a finding, that finding's diagnostics sections run again (when the
session has ``diagnostics``) and the answer says whether the finding cleared.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncssh

from backline.common.diagnostics.schema import ReportError, report_from_lines
from backline.common.fixes.manifest import FixManifest, ManifestError, digest
from backline.common.fixes.params import ParamError, validate_params
from backline.relay.capabilities.base import ChannelSpec, RequestRefused, Transport, no_request
from backline.relay.capabilities.lines import LineReader, LineTooLong
from backline.relay.fixes import store
from backline.relay.fixes.service import FixRefused

if TYPE_CHECKING:
    from starlette.websockets import WebSocket

    from backline.relay.capabilities.runner import Channel, ChannelRunner
    from backline.relay.sessions.session import LiveSession

log = logging.getLogger("backline.relay.capabilities.fix")

NAME = "fix"
#: The contract's bounds: one agent line, the request, the output kept by default.
MAX_LINE = 64 * 1024
MAX_REQUEST = 1024 * 1024
DEFAULT_MAX_OUTPUT = 16 * 1024 * 1024
MAX_OUTPUT_CHUNK = 16 * 1024
#: How long the browser has to send its first frame.
FIRST_FRAME_S = 30.0
#: The longest a run is waited for beyond its own timeout (and its verify's 60 s, and
#: the customer's consent).
GRACE_S = 600.0
#: How long an agent has to end a run after a cancel (it kills the process group:
#: SIGTERM, 2 s, SIGKILL) before the relay closes the channel itself.
CANCEL_GRACE_S = 10.0
REF_RE = re.compile(r"^([a-z][a-z0-9-]{1,47})@([0-9]{1,10})$")
RULE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
AGENT_REASONS = frozenset({"bad_request", "unsigned", "unpinned_key", "bad_signature",
                           "not_enough_signatures", "digest_mismatch", "revoked", "platform",
                           "params", "consent", "policy", "agent_error"})
KINDS = frozenset({"checked", "refused", "consent", "start", "output", "cut", "end",
                   "verify"})
#: What may follow what (the contract's order: checked -> consent? -> start -> output*
#: -> cut? -> end -> verify?, or a refusal instead of what is left before start). Every
#: step but ``output`` comes once, so a hostile agent's lines cost the trail at most one
#: row a step and the transcript at most one kept line a step; the first line out of
#: order is one ``fix.run.failed`` (reason ``protocol``) and the channel is closed.
NEXT: dict[str, frozenset[str]] = {
    "": frozenset({"checked", "refused"}),
    # ``end`` before ``start`` only when the relay's cancel came first (see
    # ``Follower.line``: ``cancelled`` must be true and nothing was seen).
    "checked": frozenset({"consent", "start", "refused", "end"}),
    "consent": frozenset({"start", "refused", "end"}),
    "start": frozenset({"output", "cut", "end"}),
    "output": frozenset({"output", "cut", "end"}),
    "cut": frozenset({"end"}),  # past the cap the agent discards: no output follows
    "end": frozenset({"verify"}),
    #: An end that came before any start (cancelled): nothing follows it.
    "end_unstarted": frozenset(),
    "verify": frozenset(),
    "refused": frozenset(),
}


class Asked:
    """What the technician asked, checked: the version, its parameters, the finding."""

    def __init__(self, fix_id: str, version: int, params: dict[str, Any],
                 finding: str | None) -> None:
        self.fix_id, self.version, self.params, self.finding = fix_id, version, params, finding

    @property
    def ref(self) -> str:
        return f"{self.fix_id}@{self.version}"


def parse_asked(asked: Mapping[str, Any]) -> Asked:
    """``{"fix", "params", "finding"}`` (already bounded by the API's model, checked
    again here: the stream's first frame is read by this room)."""
    unknown = [k for k, v in asked.items() if k not in ("fix", "params", "finding")
               and v is not None]
    if unknown:
        raise RequestRefused("bad_field", f"fix takes no {str(unknown[0])[:40]!r}")
    ref = asked.get("fix")
    match = REF_RE.fullmatch(ref) if isinstance(ref, str) else None
    if match is None:
        raise RequestRefused("bad_field", "fix must be \"ID@VERSION\"")
    params = asked.get("params") or {}
    if not isinstance(params, dict) or len(params) > 16 or not all(
            isinstance(k, str) and len(k) <= 32 for k in params):
        raise RequestRefused("bad_field", "params is an object of at most 16 parameters")
    for value in params.values():
        if not isinstance(value, str | int | bool) or (isinstance(value, str)
                                                      and len(value) > 4096):
            raise RequestRefused("bad_field", "a parameter is a string (at most 4096 "
                                              "characters), an integer or a boolean")
    finding = asked.get("finding")
    if finding is not None and (not isinstance(finding, str) or not RULE_RE.fullmatch(finding)):
        raise RequestRefused("bad_field", "finding is a diagnostics rule id")
    return Asked(match.group(1), int(match.group(2)), dict(params), finding)


@dataclass
class Run:
    """One run as the relay follows it; what ``fix.run.ended`` and the record say."""

    run_id: str
    version: store.Version
    session: LiveSession
    actor: str
    finding: str | None
    bulk: str | None = None
    max_output: int = DEFAULT_MAX_OUTPUT
    lines: list[dict[str, Any]] = field(default_factory=list)
    status: str = "requested"
    refused: str | None = None
    end: dict[str, Any] | None = None
    verify_passed: bool | None = None
    cut: bool = False
    output_seen: int = 0
    cleared: bool | None = None
    error: str | None = None

    @property
    def digest(self) -> str:
        return self.version.digest

    def common(self) -> dict[str, Any]:
        return {"digest": self.digest, "run": self.run_id, "session": self.session.id,
                "agent": self.session.principal}


def _refuse(relay: Any, session: LiveSession, actor: str, reason: str, detail: str,
            **extra: Any) -> None:
    relay.record(actor, "fix.run.refused", f"session:{session.id}", reason=reason,
                 side="relay", agent=session.principal, detail=detail[:200], **extra)


def prepare(relay: Any, session: LiveSession, actor: str, asked: Mapping[str, Any],
            bulk: str | None = None) -> tuple[Run, bytes]:
    """Check what was asked and build the request; ``RequestRefused`` (audited) when
    it cannot run."""
    try:
        a = parse_asked(asked)
    except RequestRefused as exc:
        _refuse(relay, session, actor, exc.code, exc.detail)
        raise
    where = {"fix": a.ref, **({"bulk": bulk} if bulk else {})}
    try:
        v = relay.fixes.version(a.fix_id, a.version)
    except FixRefused:
        _refuse(relay, session, actor, "not_found", f"no fix {a.ref}", **where)
        raise RequestRefused("not_found", f"no fix {a.ref}") from None
    status = store.status_of(relay.engine, a.fix_id, a.version)
    if status != "approved":
        _refuse(relay, session, actor, "revoked" if status == "revoked" else "not_approved",
                f"{a.ref} is {status}", digest=v.digest, **where)
        raise RequestRefused("revoked" if status == "revoked" else "not_approved",
                             f"{a.ref} is {status}, not approved")
    # A damaged row (it no longer parses, or no longer has the digest it was submitted
    # and approved under) is seen here and audited ``fix.run.damaged`` below, and still
    # sent as it is: the agent is the authority and refuses it (digest_mismatch or
    # bad_signature), so the refusal that stops the run is the one a compromised relay
    # cannot skip (acceptance: "refused by the agent and audited on both sides").
    damage: str | None = None
    try:
        relay.fixes.checked(v)
    except FixRefused as exc:
        damage = exc.detail
    try:
        manifest: FixManifest | None = v.parsed()
    except (ManifestError, KeyError, TypeError, ValueError):
        manifest = None
    if manifest is not None:
        try:
            validate_params(manifest, a.params)
        except ParamError as exc:
            _refuse(relay, session, actor, "params", str(exc), digest=v.digest, **where)
            raise RequestRefused("params", str(exc)[:300]) from None
    config = getattr(relay, "config", None)
    cap = int(getattr(config, "fix_max_output_bytes", DEFAULT_MAX_OUTPUT))
    run = Run("fr_" + secrets.token_urlsafe(12), v, session, actor, a.finding, bulk, cap)
    request = {"manifest": v.manifest, "signatures": relay.fixes.signatures_for(v),
               "params": a.params, "requested_by": session.technician[:64],
               "reason": session.reason[:512], "ticket": session.ticket[:128],
               "max_output": cap, "run_id": run.run_id, "digest": v.digest}
    data = json.dumps(request, ensure_ascii=False, separators=(",", ":")).encode()
    if len(data) > MAX_REQUEST:
        _refuse(relay, session, actor, "too_large", "the request is over 1 MiB",
                digest=v.digest, **where)
        raise RequestRefused("too_large", "the fix's request is over 1 MiB")
    sent = digest(manifest) if manifest is not None else "unparsable"
    store.new_run(relay.engine, {
        "id": run.run_id, "fix_id": v.fix_id, "version": v.version, "digest": v.digest,
        "session_id": session.id, "agent_id": session.principal,
        "technician": session.technician[:64],
        "params": json.dumps(a.params, ensure_ascii=False), "finding": a.finding,
        "bulk_id": bulk, "status": "requested", "started_at": time.time()})
    if damage is not None:
        log.error("fix %s is damaged in the relay's store (%s); sent unchanged for the "
                  "agent to refuse", a.ref, damage[:200])
        relay.record(actor, "fix.run.damaged", f"session:{session.id}", **run.common(),
                     reason="damaged", detail=damage[:200], sent_digest=sent, **where)
    relay.record(actor, "fix.run.requested", f"session:{session.id}", **run.common(),
                 params=sorted(a.params), **where,
                 **({"finding": a.finding} if a.finding else {}),
                 **({"sent_digest": sent} if sent != v.digest else {}))
    return run, data + b"\n"


LineSink = Callable[[str], Awaitable[None]]


class Follower:
    """Reads the agent's lines, believes only what the contract allows, keeps the
    output, and audits each step."""

    def __init__(self, relay: Any, run: Run, keep_lines: bool) -> None:
        self.relay = relay
        self.run = run
        self.keep_lines = keep_lines
        self.writer = relay.blobs.writer()
        self.transcript = hashlib.sha256()
        self.size = 0
        #: The last step the agent reported ("" before its first line).
        self.step = ""
        #: Set by the first broken line: nothing after it is believed or audited.
        self.broken = False

    def protocol_error(self, detail: str, reason: str = "protocol", **extra: Any) -> None:
        """The one ``fix.run.failed`` of a run whose agent broke the contract."""
        if self.broken:
            return
        self.broken = True
        self.run.error = reason
        self.relay.record(self.run.actor, "fix.run.failed", f"session:{self.run.session.id}",
                          **self.run.common(), reason=reason, detail=detail[:200], **extra)

    def line(self, raw: bytes) -> dict[str, Any] | None:
        """One agent line, checked; None (after a ``protocol`` failure) when it breaks
        the contract, and for any line after that."""
        self.transcript.update(raw)
        self.size += len(raw)
        if self.broken:
            return None
        if len(raw) > MAX_LINE + 1:
            self.protocol_error(f"a line of {len(raw)} bytes (at most {MAX_LINE})")
            return None
        try:
            msg = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self.protocol_error("a line that is not JSON")
            return None
        if not isinstance(msg, dict) or msg.get("type") not in KINDS:
            self.protocol_error("a line of no known type")
            return None
        kind = msg["type"]
        if kind not in NEXT[self.step]:
            self.protocol_error(f"a {kind!r} line after {self.step or 'nothing'!r} "
                                "(out of order, or twice)")
            return None
        if kind == "end" and self.step in ("checked", "consent"):
            if msg.get("cancelled") is not True or msg.get("output_bytes") not in (0, None) \
                    or msg.get("kept_bytes") not in (0, None):
                self.protocol_error(f"an end after {self.step!r} with no start that is not "
                                    "a cancel (cancelled true, no output)")
                return None
            self.step = "end_unstarted"
        else:
            self.step = kind
        if kind == "checked" and msg.get("digest") != self.run.digest:
            claimed = msg.get("digest")
            self.protocol_error(
                "the agent checked another manifest than the relay approved",
                reason="digest_mismatch",
                checked_digest=claimed[:80] if isinstance(claimed, str) else "")
            return None
        self.act(msg)
        if self.broken:
            return None
        if self.keep_lines and msg["type"] != "output":
            self.run.lines.append(msg)
        return msg

    def act(self, msg: dict[str, Any]) -> None:
        r, rec = self.run, self.relay.record
        where = f"session:{r.session.id}"
        extra = {"bulk": r.bulk} if r.bulk else {}
        kind = msg["type"]
        if kind == "checked":
            r.status = "checked"
        elif kind == "refused":
            reason = str(msg.get("reason", ""))[:64]
            r.status, r.refused = "refused", reason if reason in AGENT_REASONS else "other"
            rec(r.actor, "fix.run.refused", where, reason=r.refused, side="agent",
                digest=r.digest, run=r.run_id, agent=r.session.principal,
                fix=f"{r.version.fix_id}@{r.version.version}",
                detail=str(msg.get("detail", ""))[:200], **extra)
        elif kind == "consent":
            answer = "yes" if msg.get("answer") == "yes" else "no"
            rec(r.actor, "fix.run.consent", where, **r.common(), answer=answer)
        elif kind == "start":
            r.status = "running"
            pid = msg.get("pid")
            rec(r.actor, "fix.run.started", where, **r.common(),
                **({"pid": pid} if isinstance(pid, int) and not isinstance(pid, bool) else {}))
        elif kind == "output":
            self.output(msg)
        elif kind == "cut":
            r.cut = True
        elif kind == "end":
            r.end = msg
            r.status = "ended"
        elif kind == "verify":
            passed = msg.get("passed")
            r.verify_passed = passed if isinstance(passed, bool) else None

    def output(self, msg: dict[str, Any]) -> None:
        b64 = msg.get("b64")
        if not isinstance(b64, str) or len(b64) > (MAX_OUTPUT_CHUNK * 4) // 3 + 4:
            self.protocol_error("an output line with no chunk, or a chunk over 16 KiB")
            return
        try:
            chunk = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            self.protocol_error("an output chunk that is not base64")
            return
        if not chunk:
            self.protocol_error("an empty output chunk")
            return
        if self.writer.size + len(chunk) > self.run.max_output:
            self.protocol_error(f"output past the cap of {self.run.max_output} bytes the "
                                "relay asked for (the agent must cut there)")
            return
        self.run.output_seen += len(chunk)
        room = self.run.max_output - self.writer.size
        if room > 0:
            self.writer.write(chunk[:room])

    def finish(self, exit_status: int | None) -> dict[str, Any]:
        """Name the kept output, check its hash, audit the end, file the record."""
        r = self.run
        try:
            blob = self.writer.commit()
        except OSError as exc:
            self.writer.abort()
            blob = ""
            log.error("fix output of %s not kept: %r", r.run_id, exc)
        end = r.end or {}
        claimed = str(end.get("output_sha256", ""))[:64]
        output_ok = bool(blob) and claimed == blob
        values: dict[str, Any] = {"status": r.status if r.error is None else "failed",
                                  "ended_at": time.time(), "refused_reason": r.refused,
                                  "output_sha256": blob or None, "output_ok": output_ok,
                                  "verify_passed": r.verify_passed}
        if r.end is not None:
            ints = {k: end.get(k) if isinstance(end.get(k), int) and not isinstance(
                end.get(k), bool) else None for k in ("exit_status", "output_bytes",
                                                      "kept_bytes")}
            duration = end.get("duration_ms")
            duration = float(duration) if isinstance(duration, int | float) and not \
                isinstance(duration, bool) else 0.0
            signal = end.get("signal")
            flags = {k: bool(end.get(k)) for k in ("timed_out", "cancelled")}
            values.update(exit_status=ints["exit_status"], output_bytes=ints["output_bytes"],
                          kept_bytes=ints["kept_bytes"], duration_ms=duration,
                          signal=str(signal)[:32] if signal is not None else None, **flags)
            self.relay.record(
                r.actor, "fix.run.ended", f"session:{r.session.id}", **r.common(),
                exit_status=ints["exit_status"], output_sha256=claimed,
                kept_bytes=ints["kept_bytes"] or 0, output_bytes=ints["output_bytes"] or 0,
                verify_passed=r.verify_passed, duration_ms=duration, output_ok=output_ok,
                cut=r.cut, blob=blob, **flags,
                **({"signal": str(signal)[:32]} if signal is not None else {}),
                **({"bulk": r.bulk} if r.bulk else {}))
            if not output_ok:
                self.relay.record(r.actor, "fix.run.failed", f"session:{r.session.id}",
                                  **r.common(), reason="output_mismatch",
                                  detail=f"kept {self.writer.size} bytes with SHA-256 "
                                         f"{blob[:16]}..., the agent says {claimed[:16]}...")
        elif r.status not in ("refused",) and r.error is None:
            r.error = "no_end"
            values["status"] = "failed"
            self.relay.record(r.actor, "fix.run.failed", f"session:{r.session.id}",
                              **r.common(), reason="no_end",
                              detail=f"the channel ended (exit {exit_status}) with no end line")
        store.update_run(self.relay.engine, r.run_id, **values)
        return values


async def converse(runner: ChannelRunner, session: LiveSession, actor: str, run: Run,
                   request: bytes, sink: LineSink | None = None,
                   cancel: asyncio.Event | None = None, keep_lines: bool = True
                   ) -> dict[str, Any]:
    """Open the channel, write the request, follow the agent to the end."""
    relay = runner.relay
    follower = Follower(relay, run, keep_lines)
    cancel = cancel or asyncio.Event()
    status: int | None = None
    try:
        async with runner.channel(session, NAME, actor) as ch:
            ch.proc.stdin.write(request)
            status = await _follow(runner, ch, follower, sink, cancel)
            runner.finished(ch, status, follower.size, follower.transcript.hexdigest(),
                            streamed=sink is not None)
    except BaseException:
        if not follower.writer.file.closed:
            follower.writer.abort()
        store.update_run(relay.engine, run.run_id, status="failed", ended_at=time.time())
        raise
    values = follower.finish(status)
    answer = {"run_id": run.run_id, "status": values["status"], "exit_status": values.get(
        "exit_status"), "verify_passed": run.verify_passed, "refused": run.refused,
        "output_sha256": values.get("output_sha256"), "output_ok": values["output_ok"],
        "kept_bytes": follower.writer.size, "channel_exit": status}
    if run.finding and run.status == "ended" and "diagnostics" in session.capabilities:
        answer["recheck"] = await recheck(runner, run)
    return answer


async def _follow(runner: ChannelRunner, ch: Channel, follower: Follower,
                  sink: LineSink | None, cancel: asyncio.Event) -> int | None:
    proc, run = ch.proc, follower.run
    timeout = float(run.version.manifest.get("timeout_s", 3600)) + GRACE_S
    cancelled = asyncio.ensure_future(cancel.wait())
    try:
        async with asyncio.timeout(timeout):
            loop = asyncio.get_running_loop()
            deadline: float | None = None  # set by a cancel: the agent has CANCEL_GRACE_S
            reader = LineReader(proc.stdout, MAX_LINE)
            while True:
                reading = asyncio.ensure_future(reader.readline())
                left = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait({reading, cancelled}, timeout=left,
                                             return_when=asyncio.FIRST_COMPLETED)
                if cancelled in done and not reading.done():
                    with contextlib.suppress(asyncssh.Error, OSError, BrokenPipeError):
                        proc.stdin.write(b'{"type":"cancel"}\n')
                    runner.relay.record(run.actor, "fix.run.cancelled",
                                        f"session:{run.session.id}", **run.common())
                    cancelled = asyncio.ensure_future(asyncio.Event().wait())  # once
                    deadline = loop.time() + CANCEL_GRACE_S
                    done, _ = await asyncio.wait({reading}, timeout=CANCEL_GRACE_S)
                if not reading.done() and run.end is not None:
                    reading.cancel()  # it ended but keeps the channel open: close it
                    proc.close()
                    break
                if not reading.done():  # cancelled, and the agent did not end in time
                    reading.cancel()
                    run.error = "cancel_unacknowledged"
                    runner.relay.record(run.actor, "fix.run.failed",
                                        f"session:{run.session.id}", **run.common(),
                                        reason="cancel_unacknowledged",
                                        detail=f"no end within {CANCEL_GRACE_S:g} s of the "
                                               "cancel: the channel is closed")
                    proc.close()
                    break
                try:
                    line = reading.result()
                except LineTooLong as exc:
                    follower.protocol_error(f"a line of more than {MAX_LINE} bytes "
                                            f"({exc.size} read so far)")
                    proc.close()
                    break
                except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                    follower.run.error = "agent_gone"
                    runner.relay.record(run.actor, "fix.run.failed",
                                        f"session:{run.session.id}", **run.common(),
                                        reason="agent_gone",
                                        detail=f"{type(exc).__name__}: {exc}"[:200])
                    raise runner.agent_gone(ch, exc) from None
                if not line:
                    break
                ch.session.touch()
                msg = follower.line(line)
                if msg is None:
                    proc.close()
                    break
                if sink is not None:
                    await sink(line.decode("utf-8", "replace").rstrip("\n"))
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                await asyncio.wait_for(proc.wait_closed(), 10)
    except TimeoutError:
        run.error = "timeout"
        runner.relay.record(run.actor, "fix.run.failed", f"session:{run.session.id}",
                            **run.common(), reason="timeout",
                            detail=f"no end within {timeout:g} s")
        proc.close()
    finally:
        cancelled.cancel()
    return proc.exit_status


async def recheck(runner: ChannelRunner, run: Run) -> dict[str, Any]:
    """Run the finding's diagnostics again; whether it cleared (None: cannot tell)."""
    sections = _sections_of(runner.relay, run)
    asked = {"sections": sections} if sections else {}
    cleared: bool | None = None
    try:
        result = await runner.run(run.session, "diagnostics", run.actor, asked)
        if result.get("format") == "jsonl" and result.get("exit_status") == 0:
            lines = [json.dumps(x) for x in result.get("output") or []]
            report = report_from_lines(lines)
            cleared = all(f.rule_id != run.finding for f in report.findings)
    except Exception as exc:  # the recheck is a courtesy: its failure is said, not raised
        log.warning("recheck of %s after %s failed: %r", run.finding, run.run_id, exc)
    run.cleared = cleared
    store.update_run(runner.relay.engine, run.run_id, cleared=cleared)
    runner.relay.record(run.actor, "fix.run.recheck", f"session:{run.session.id}",
                        **run.common(), finding=run.finding or "", cleared=cleared)
    return {"finding": run.finding, "cleared": cleared}


def _sections_of(relay: Any, run: Run) -> list[str]:
    """The sections the finding came from, in the agent's latest stored report."""
    import sqlalchemy as sa

    from backline.relay.schema import diagnostics_reports

    with relay.engine.connect() as conn:
        row = conn.execute(sa.select(diagnostics_reports.c.sha256).where(
            diagnostics_reports.c.agent_id == run.session.principal)
            .order_by(diagnostics_reports.c.created_at.desc()).limit(1)).first()
    if row is None:
        return []
    try:
        report = report_from_lines(relay.blobs.get(row[0]).decode().splitlines())
    except (OSError, ValueError, ReportError, KeyError, TypeError):
        return []
    for f in report.findings:
        if f.rule_id == run.finding:
            return list(dict.fromkeys(f.sections))
    return []


# --- REST and the stream socket ------------------------------------------------------


#: The status of each refusal before the channel opens (the permission is the API's).
_STATUS = {"not_found": 404, "not_approved": 409, "revoked": 409}


async def answer(runner: ChannelRunner, session: LiveSession, actor: str, who: Any,
                 asked: Mapping[str, Any]) -> dict[str, Any]:
    """``POST .../channels/fix``: the whole transcript (without the output chunks,
    which are the run's output: ``GET /api/v1/fix-runs/{run_id}/output``)."""
    from backline.relay.sessions.session import SessionError

    started = time.perf_counter()
    try:
        run, request = prepare(runner.relay, session, actor, asked)
    except RequestRefused as exc:
        raise SessionError(_STATUS.get(exc.code, 400), exc.code, exc.detail,
                           audited=True) from None
    result = await converse(runner, session, actor, run, request)
    return {"capability": NAME, "exit_status": result["channel_exit"],
            "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            "bytes": result["kept_bytes"], "sha256": result["output_sha256"] or "",
            "truncated": run.cut,
            "format": "jsonl", "output": run.lines, "report": run.run_id, **result}


async def stream(runner: ChannelRunner, ws: WebSocket, session: LiveSession, actor: str,
                 who: Any) -> None:
    """``/stream/fix``: the client's first frame is the request; then ``run``, a ``line``
    per agent line, ``exit`` (and ``recheck``); a ``{"type":"cancel"}`` frame cancels."""
    from backline.relay.sessions.session import SessionError

    try:
        async with asyncio.timeout(FIRST_FRAME_S):
            first = await ws.receive()
    except TimeoutError:
        raise SessionError(400, "no_request", "no request frame within "
                                              f"{FIRST_FRAME_S:g} s") from None
    text = first.get("text")
    if first["type"] == "websocket.disconnect":
        return
    if not isinstance(text, str) or len(text) > 64 * 1024:
        raise SessionError(400, "bad_request", "the first frame is a JSON text frame of at "
                                               "most 64 KiB")
    try:
        asked = json.loads(text)
    except ValueError:
        asked = None
    if not isinstance(asked, dict):
        raise SessionError(400, "bad_request", "the first frame is a JSON object")
    try:
        run, request = prepare(runner.relay, session, actor, asked)
    except RequestRefused as exc:
        raise SessionError(_STATUS.get(exc.code, 400), exc.code, exc.detail,
                           audited=True) from None
    cancel = asyncio.Event()

    async def listen() -> None:
        with contextlib.suppress(Exception):
            while True:
                frame = await ws.receive()
                if frame["type"] == "websocket.disconnect":
                    cancel.set()  # the console went away: so does the run
                    return
                body = frame.get("text") or ""
                if len(body) < 256 and '"cancel"' in body:
                    with contextlib.suppress(ValueError):
                        if json.loads(body) == {"type": "cancel"}:
                            cancel.set()

    async def sink(line: str) -> None:
        with contextlib.suppress(Exception):
            await ws.send_text(json.dumps({"type": "line", "line": line}, ensure_ascii=False))

    await ws.send_text(json.dumps({"type": "run", "run_id": run.run_id,
                                   "digest": run.digest}))
    listening = asyncio.ensure_future(listen())
    try:
        result = await converse(runner, session, actor, run, request, sink, cancel,
                                keep_lines=False)
    finally:
        listening.cancel()
    await ws.send_text(json.dumps({"type": "exit", "exit_status": result["exit_status"],
                                   "status": result["status"], "run_id": run.run_id,
                                   "verify_passed": result["verify_passed"],
                                   "output_sha256": result["output_sha256"],
                                   "output_ok": result["output_ok"],
                                   "refused": result["refused"]}))
    if "recheck" in result:
        await ws.send_text(json.dumps({"type": "recheck", **result["recheck"]}))


SPEC = ChannelSpec(NAME, Transport.LINES, no_request(NAME), answer=answer, stream=stream,
                   permission="fixes:run",
                   summary="run an approved fix (the request, then JSON lines; cancellable)")

__all__ = ["SPEC", "converse", "prepare"]
