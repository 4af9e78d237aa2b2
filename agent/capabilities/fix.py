"""``fix``: run one approved fix the relay asks for, after this agent's own checks.

The channel (issue-12 contract): the relay writes ONE request line (<= 1 MiB) and
keeps its input open; a later ``{"type":"cancel"}`` line, or the input closing,
cancels. The agent answers JSON lines: ``checked`` (every check passed), ``consent``
(when the customer was asked and said yes), ``start``, ``output``..., ``cut``, ``end``,
``verify``, or one ``refused`` line. Exit status: 0 when the fix ran (whatever its own
exit), 77 refused, 2 bad request.

Order (agent/fixes/checks.py): request, signatures against the keys pinned here,
revocation, platform, local policy, parameters; only then the customer is asked
(title, id@version, risk, parameters, who and why), through the session's asker:
this room asks itself (``Capability.asks_itself``), so under ``ask`` the SSH server
does not ask a vaguer question first. Then agent/fixes/executor.py runs it. Every
refusal is one line in the agent's activity log (the relay audits its side); a fix
that ran is kept in the signed local cache for self-service.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import asyncssh

from backline.agent.capabilities.base import SessionContext
from backline.common.capabilities import ChannelExit

MAX_LINE = 64 * 1024
REQUEST_WAIT_S = 10.0


class _BadRequest(Exception):
    """The request line itself is unusable (too large, cut short): exit 2."""


async def _first_line(process: Any, limit: int) -> tuple[str, str]:
    """The request line and whatever followed it, bounded in size and time."""
    parts: list[str] = []
    size = 0
    async with asyncio.timeout(REQUEST_WAIT_S):
        while True:
            chunk = await process.stdin.read(65536)
            if not chunk:
                raise _BadRequest("the input closed before a whole request line arrived")
            newline = chunk.find("\n")
            if newline >= 0:
                parts.append(chunk[:newline])
                size += len(chunk[:newline].encode("utf-8", "surrogatepass"))
                if size > limit:
                    raise _BadRequest(f"the request is larger than {limit} bytes")
                return "".join(parts), chunk[newline + 1:]
            parts.append(chunk)
            size += len(chunk.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise _BadRequest(f"the request is larger than {limit} bytes")


async def _watch_cancel(process: Any, rest: str, cancel: asyncio.Event) -> None:
    """Set ``cancel`` at a ``{"type":"cancel"}`` line or when the input closes; other
    input is ignored (bounded: lines over 64 KiB are dropped)."""
    buffer = rest
    try:
        while True:
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                try:
                    if json.loads(line) == {"type": "cancel"}:
                        cancel.set()
                        return
                except ValueError:
                    pass
            if len(buffer) > MAX_LINE:
                buffer = ""
            chunk = await process.stdin.read(65536)
            if not chunk:
                cancel.set()
                return
            buffer += chunk
    except Exception:  # a broken channel (asyncssh, OSError, a decode error) is a cancel
        cancel.set()


async def run(process: Any, ctx: SessionContext) -> int:
    """The ``fix`` room: one request, checked, maybe asked about, run; see the module
    docstring for the lines and the exit status. ``process`` is asyncssh's."""
    from backline.agent.consent import NoAsker
    from backline.agent.fixes import cache, checks, executor, trust

    async def send(event: dict[str, Any]) -> None:
        line = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        process.stdout.write(line + "\n")
        await process.stdout.drain()

    base = {"session_id": ctx.session_id, "technician": ctx.technician}

    async def refuse(reason: str, detail: str, request: checks.FixRequest | None = None,
                     digest: str = "",
                     status: int = ChannelExit.REFUSED) -> int:
        manifest = getattr(request, "manifest", None)
        ctx.log.record("fix.refused", **base, reason=reason, detail=detail[:300],
                       fix=getattr(manifest, "id", None), version=getattr(manifest, "version",
                                                                           None),
                       digest=digest or None, run_id=getattr(request, "run_id", None) or None)
        with contextlib.suppress(OSError, ConnectionError, Exception):
            await send({"type": "refused", "reason": reason, "detail": detail[:500]})
        return int(status)

    try:
        line, rest = await _first_line(process, checks.MAX_REQUEST_BYTES)
        request = checks.parse_request(line)
    except _BadRequest as exc:
        return await refuse("bad_request", str(exc), status=ChannelExit.BAD_REQUEST)
    except TimeoutError:
        return await refuse("bad_request", f"no request line within {REQUEST_WAIT_S:g} s",
                            status=ChannelExit.BAD_REQUEST)
    except (UnicodeDecodeError, asyncssh.ProtocolError):  # asyncssh decodes the channel
        return await refuse("bad_request", "the request is not UTF-8 text",
                            status=ChannelExit.BAD_REQUEST)
    except checks.Refusal as exc:
        return await refuse(exc.reason, exc.detail, status=ChannelExit.BAD_REQUEST)
    try:
        fix_trust = trust.load_trust(ctx.state_root, ctx.policy)
        checked = checks.check_fix(request.manifest, request.signatures, request.params,
                                   state_root=ctx.state_root, fix_policy=ctx.policy.fix,
                                   trust=fix_trust, claimed_digest=request.digest,
                                   check_params=not request.cache_only,
                                   manifest_data=request.manifest_data)
    except checks.Refusal as exc:
        return await refuse(exc.reason, exc.detail, request)
    m = checked.manifest
    record = {**base, "fix": m.id, "version": m.version, "digest": checked.digest,
              "run_id": request.run_id or None}
    await send({"type": "checked", "digest": checked.digest, "signers": list(checked.signers)})
    if request.cache_only:
        kept = False
        if ctx.state_root is not None:
            with contextlib.suppress(OSError):  # a full disk: said so, not a crash
                kept = cache.store(ctx.state_root, m, request.signatures, "pushed")
        ctx.log.record("fix.cached", **record, kept=kept)
        await send({"type": "cached", "kept": bool(kept)})
        return 0
    cancel = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_cancel(process, rest, cancel))
    try:
        if checks.needs_consent(m, ctx.policy.decision("fix"), ctx.policy.fix):
            asker = ctx.extra.get("asker") or NoAsker()
            words = checks.consent_question(m, checked.env, ctx.technician,
                                            request.reason or ctx.reason,
                                            request.ticket or ctx.ticket)
            asking = asyncio.ensure_future(asker.ask(words, ctx.policy.ask_timeout_s))
            cancelled = asyncio.ensure_future(cancel.wait())
            await asyncio.wait({asking, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            cancelled.cancel()
            if not asking.done():
                asking.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asking
                ctx.log.record("fix.cancelled", **record, when="consent")
                return await refuse("consent", "cancelled by the relay while the customer "
                                               "was being asked", request, checked.digest)
            answer = asking.result()
            if not answer.allowed:
                return await refuse("consent", f"the customer was asked: {answer.how}",
                                    request, checked.digest)
            ctx.log.record("fix.consent", **record, how=answer.how)
            await send({"type": "consent", "answer": "yes"})
        try:  # a revocation pushed while the customer was deciding stops it here
            checks.recheck_revoked(ctx.state_root, m)
        except checks.Refusal as exc:
            return await refuse(exc.reason, exc.detail, request, checked.digest)
        if ctx.state_root is not None:
            with contextlib.suppress(OSError):
                cache.store(ctx.state_root, m, request.signatures, "run")
        await asyncio.sleep(0)  # a cancel that came with the request is seen first
        ctx.log.record("fix.started", **record, params=sorted(checked.env))
        started = time.perf_counter()
        try:
            result = await executor.run_fix(m, checked.env, request.max_output, send, cancel)
        except executor.FixRunError as exc:
            return await refuse(exc.reason, str(exc), request, checked.digest)
        except Exception as exc:  # the channel went away mid-run: the tree is ended
            ctx.log.record("fix.interrupted", **record, detail=str(exc)[:200] or
                           type(exc).__name__)
            raise
        ctx.log.record("fix.ended", **record, exit_status=result.exit_status,
                       signal=result.signal, timed_out=result.timed_out,
                       cancelled=result.cancelled, output_sha256=result.output_sha256,
                       kept_bytes=result.kept_bytes, output_bytes=result.output_bytes,
                       verify_passed=None if result.verify is None else result.verify.passed,
                       duration_ms=round((time.perf_counter() - started) * 1000))
        return 0
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await watcher
