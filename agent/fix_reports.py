"""Self-service fix runs, reported to the relay (docs/fixes-agent.md, "Reported to the
relay").

``backline-agent fix run`` is the customer's own command: the agent may be stopped,
offline, or between two connections when it runs. So the command does not talk to the
relay. It keeps each run that ended as one file in the state directory's outbox,
``fix-reports/<run_id>.json`` (0600, written to a temporary file, flushed to disk, renamed,
and the folder flushed too, before the command returns), then pokes the running agent
through its local control socket (``{"op": "fix_reports"}``) if there is one.

The running agent (:class:`FixReporter`) sends the outbox on its control socket as
``fix_report`` messages, one at a time, each waiting for the relay's ``fix_report_ack``:
after every ``welcome``, when poked, and every :data:`RESCAN_S`. A file is deleted only
once the relay answered ``recorded`` or ``duplicate``; one the relay refused for good is
renamed ``<run_id>.refused`` (kept, for the customer to see), one refused as
``rate_limited`` is sent again :data:`RATE_LIMITED_RETRY_S` later. A crash anywhere
(the command's, the agent's, the relay's) leaves the file, which is sent again; each run
has its own random id (:func:`new_run_id`) and the relay records ``(agent, run_id)``
once, so nothing is lost and nothing is recorded twice.

Only the standard library here: the long-lived agent imports this module, and it must
stay small while idle (docs/benchmarks.md, "Idle agent").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.common import protocol
from backline.common.keys import write_private_file

if TYPE_CHECKING:
    from backline.agent.activity import ActivityLog

log = logging.getLogger("backline.agent.fix_reports")

DIR_NAME = "fix-reports"
_NAME_RE = re.compile(r"^(sr_[A-Za-z0-9_-]{16,32})\.json$")
#: One report file: a few hundred bytes; anything bigger was not written by us.
MAX_FILE_BYTES = 4096
#: Reports sent per pass (the rest at the next one, at once: a pass that sent this many
#: starts the next without waiting).
BATCH = 50
#: How long the agent waits for the relay's answer to one report before it gives up on
#: this pass (the report stays, and goes again at the next).
ACK_TIMEOUT_S = 30.0
#: A pass at least this often, in case a poke was missed (the command found no agent).
RESCAN_S = 300.0
#: After ``rate_limited``: the relay takes a burst, then about one a minute.
RATE_LIMITED_RETRY_S = 60.0
#: Reports kept and not yet sent, at most: a run every minute for a week offline (a
#: customer's cron job, say) is 10,080. Beyond, a run is not kept (said on the
#: terminal and in the activity log, ``fix.report.unkept``): the outbox cannot fill the
#: disk. The relay refuses runs reported over 30 days late anyway (``too_old``).
MAX_PENDING = 10_000
#: Refused (``.refused``) and unusable (``.bad``) files kept for the customer to see,
#: the newest; older ones are deleted (each refusal is in the activity log too).
MAX_SET_ASIDE = 200
#: A temporary file this old was left by a write that crashed: deleted.
STALE_TMP_S = 3600.0
_SET_ASIDE = (".refused", ".bad")
#: What a report file holds (the ``fix_report`` message but ``sent_at``).
FIELDS = ("run_id", "fix", "version", "digest", "exit_status", "signal", "timed_out",
          "verify", "output_sha256", "started_at", "ended_at")


def folder(state_root: Path) -> Path:
    return state_root / DIR_NAME


def new_run_id() -> str:
    """A self-service run's id: ``sr_`` and 128 random bits (``protocol.FIX_REPORT_RUN_RE``)."""
    return "sr_" + secrets.token_urlsafe(16)


def message(report: dict[str, Any], now: float | None = None) -> str:
    """The ``fix_report`` frame for a kept report, sent now. ``sent_at`` is never before
    ``ended_at`` (a clock stepped back since the run would make the relay refuse it)."""
    body = {k: report[k] for k in FIELDS if report.get(k) is not None}
    sent = max(time.time() if now is None else now, float(body["ended_at"]))
    return protocol.encode("fix_report", **body, sent_at=round(sent, 3))


def keep(state_root: Path, report: dict[str, Any]) -> Path:
    """Keep one ended run in the outbox, durably (on disk before this returns). The
    report is checked first as the message it will be (``ProtocolError`` if it could
    never be sent); ``OSError`` when it cannot be written."""
    message(report)
    where = folder(state_root)
    _private_folder(where)
    if _count_pending(where) >= MAX_PENDING:
        raise OSError(f"the outbox already holds {MAX_PENDING} reports not yet sent "
                      f"({where}): is the agent running and connected?")
    path = where / f"{report['run_id']}.json"
    data = json.dumps({k: report.get(k) for k in FIELDS}, sort_keys=True).encode()
    write_private_file(path, data)  # 0600, synced, renamed into place
    _sync_folder(where)
    return path


def _private_folder(where: Path) -> None:
    """The outbox, created 0700, and made 0700 again if it was not (``mkdir``'s mode
    applies only to a folder it creates). Only a real folder of this user's is
    changed (never through a symbolic link); a mode that cannot be mended is logged,
    and the report is still kept."""
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = where.lstat()
    mode = st.st_mode & 0o777
    if os.name != "posix" or not mode & 0o077:
        return  # elsewhere the folder's access is not in its mode bits
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        log.warning("fix report outbox %s is not a folder of this user's (mode %o); "
                    "left as it is", where, mode)
        return
    try:
        os.chmod(where, 0o700)  # a folder, not a link (lstat above)
    except OSError as exc:
        log.warning("fix report outbox %s is mode %o and could not be made 0700: %s",
                    where, mode, exc)
    else:
        log.warning("fix report outbox %s was mode %o; made 0700", where, mode)


def _count_pending(where: Path) -> int:
    try:
        return sum(1 for e in os.scandir(where) if _NAME_RE.fullmatch(e.name))
    except OSError:
        return 0


def tidy(state_root: Path, now: float | None = None) -> int:
    """Keep the outbox bounded and private (the running agent, at each pass): delete
    temporary files a crashed write left (older than :data:`STALE_TMP_S`), and all but
    the newest :data:`MAX_SET_ASIDE` set-aside files; make the folder 0700. What was
    deleted, counted (and logged)."""
    where = folder(state_root)
    if not where.is_dir():
        return 0
    now = time.time() if now is None else now
    with contextlib.suppress(OSError):
        _private_folder(where)
    stale: list[Path] = []
    aside: list[tuple[float, str, Path]] = []
    try:
        for entry in os.scandir(where):
            try:
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
            if entry.name.endswith(".tmp") and now - mtime > STALE_TMP_S:
                stale.append(Path(entry.path))
            elif entry.name.endswith(_SET_ASIDE):
                aside.append((mtime, entry.name, Path(entry.path)))
    except OSError:
        return 0
    aside.sort(reverse=True)  # newest first
    doomed = stale + [path for _, _, path in aside[MAX_SET_ASIDE:]]
    deleted = 0
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            deleted += 1
    if deleted:
        log.info("fix report outbox: deleted %d stale temporary or old set-aside files",
                 deleted)
    return deleted


def _sync_folder(where: Path) -> None:
    """Flush the folder's entry for a renamed file (POSIX; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(where, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def pending(state_root: Path, limit: int = BATCH) -> list[tuple[Path, dict[str, Any]]]:
    """Up to ``limit`` kept reports, oldest first. A file that cannot be a report (not
    JSON, too big, not what its name says) is renamed ``.bad`` and logged: it would
    fail at every pass otherwise."""
    where = folder(state_root)
    try:
        names = [e for e in os.scandir(where) if _NAME_RE.fullmatch(e.name)]
    except OSError:
        return []

    def mtime(entry: os.DirEntry[str]) -> float:
        try:
            return entry.stat().st_mtime
        except OSError:
            return 0.0

    out: list[tuple[Path, dict[str, Any]]] = []
    for entry in sorted(names, key=lambda e: (mtime(e), e.name)):
        if len(out) >= limit:
            break
        path = Path(entry.path)
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too big")
            report = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(report, dict) or report.get("run_id") != path.stem:
                raise ValueError("not the report its name says")
            message(report)
        except FileNotFoundError:
            continue  # sent and forgotten by another pass meanwhile
        except OSError as exc:
            # Unreadable now (written by another user, out of descriptors...), not
            # shown to be no report: left for a later pass, never set aside (set-aside
            # files are deleted in time: :func:`tidy`).
            log.warning("fix report %s cannot be read now (%s); tried again later",
                        path.name, exc)
            continue
        except (ValueError, KeyError, TypeError, protocol.ProtocolError) as exc:
            log.error("fix report %s is unusable (%s); renamed .bad", path.name, exc)
            with contextlib.suppress(OSError):
                os.replace(path, path.with_suffix(".bad"))
            continue
        out.append((path, report))
    return out


def poke(state_root: Path) -> bool:
    """Tell the running agent there is something to send (the command's side); False
    when no agent answered (it sends the outbox when it next connects)."""
    from backline.agent.localcontrol import LocalError, request

    try:
        return bool(request(state_root, {"op": "fix_reports"}, timeout=2.0).get("ok"))
    except LocalError:
        return False


Send = Callable[[str], Awaitable[None]]


class FixReporter:
    """The running agent's side: sends the outbox on the control socket (one
    :meth:`run` per connection) and acts on the relay's answers."""

    def __init__(self, state_root: Path, activity: ActivityLog | None = None) -> None:
        self.root = state_root
        self.activity = activity
        self.wake = asyncio.Event()
        #: The report waiting for its answer, if any.
        self.in_flight: str | None = None
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._not_before = 0.0  # monotonic: after ``rate_limited``

    def poke(self) -> None:
        """Something new in the outbox (the local control socket's ``fix_reports``)."""
        self.wake.set()

    def acked(self, msg: dict[str, Any]) -> None:
        """A ``fix_report_ack``; one for no report in flight is ignored."""
        if (msg["run_id"] == self.in_flight and self._answer is not None
                and not self._answer.done()):
            self._answer.set_result(msg)

    async def run(self, send: Send) -> None:
        """Send what is kept, then whatever comes, until cancelled (the connection
        ended)."""
        while True:
            self.wake.clear()
            more = await self.send_pending(send)
            if more:
                continue
            # Refused for now (rate_limited): back when the relay said, not at the next
            # rescan (a backlog of runs made offline would go one per RESCAN_S).
            wait = min(RESCAN_S, max(0.0, self._not_before - time.monotonic())) or RESCAN_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def send_pending(self, send: Send) -> bool:
        """One pass; True when a full batch went (more may be waiting)."""
        wait = self._not_before - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        tidy(self.root)  # a small folder: read on the loop, as the state is
        batch = pending(self.root)
        for path, report in batch:
            answer = await self._send_one(send, report)
            if answer is None:
                return False  # no answer: the connection is likely gone; next pass
            status, reason = answer["status"], answer.get("reason", "")
            fields = {"fix": report["fix"], "version": report["version"],
                      "digest": report["digest"], "run_id": report["run_id"],
                      "mode": "self-service"}
            if status in ("recorded", "duplicate"):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._record("fix.reported", **fields, status=status)
            elif reason == "rate_limited":
                self._not_before = time.monotonic() + RATE_LIMITED_RETRY_S
                return False
            else:
                with contextlib.suppress(OSError):
                    os.replace(path, path.with_suffix(".refused"))
                self._record("fix.report.refused", **fields, reason=reason or "refused")
        return len(batch) >= BATCH

    async def _send_one(self, send: Send, report: dict[str, Any]) -> dict[str, Any] | None:
        self.in_flight = report["run_id"]
        self._answer = asyncio.get_running_loop().create_future()
        try:
            await send(message(report))
            return await asyncio.wait_for(asyncio.shield(self._answer), ACK_TIMEOUT_S)
        except TimeoutError:
            log.info("no answer from the relay for fix report %s; sent again later",
                     report["run_id"])
            return None
        finally:
            self.in_flight, self._answer = None, None

    def _record(self, event: str, **fields: Any) -> None:
        if self.activity is not None:
            self.activity.record(event, **fields)
        else:
            log.info("%s %s", event, fields)
