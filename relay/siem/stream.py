"""The streamer: every audit event, in ``seq`` order, to each SIEM destination.

It reads the trail itself (``audit_events`` by ``seq``), not the in-memory listeners,
from a durable cursor per destination: nothing is lost while a destination is down
or the relay is off, and the trail (not a queue in memory) is the backlog. Listeners
only wake it up early.

The cursor is kept twice. The ``siem_cursors`` row (migration 0011) is written after
each batch; a small file per destination in the data directory
(``siem/NAME.cursor``) is written with one ``pwrite`` right after each message went
to the kernel (syslog) or each batch was acknowledged (https), in the sending thread
with nothing in between. A SIGKILL cannot cut a syscall in two, and what a process
wrote to a TCP socket before it was killed is still delivered, as long as the kernel
closes the connection with a FIN, not a reset (the sender reads everything the
collector sends for that: relay/siem/syslog.py ``_Connection``): so a kill at any
moment either leaves the message unsent and the cursor before it (it is sent again
after the restart, once), or sent and the cursor after it, except in the few
microseconds between the two syscalls (docs/siem-and-retention.md, "Exactly once
across a kill"). At start the cursor is the later of the two records that the trail
confirms (the hash of the event at its ``seq``); a record it does not confirm (a
database restored from a backup behind it) is set aside, audited
(``siem.cursor_mismatch``), and streaming resumes after the last confirmed event
(:meth:`DestinationStream.load_cursor`).

Delivery failures are logged on each attempt but audited only when a destination
starts failing (``siem.failed``, through ``record_flood``, so flapping aggregates),
every ten minutes while it stays down, and when it recovers (``siem.recovered``).
Those events are streamed too; as they are a few per outage, not one per retry,
they cannot feed a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import sqlalchemy as sa

from backline.relay.audit import GENESIS, row_to_event
from backline.relay.config import SiemDestination
from backline.relay.db import insert_if_absent, writing
from backline.relay.schema import audit_events, siem_cursors
from backline.relay.siem.http import JsonLinesSender
from backline.relay.siem.syslog import SyslogSender, rfc5424, sd_escape

if TYPE_CHECKING:
    from backline.relay.state import Relay

log = logging.getLogger("backline.relay.siem")

#: The structured-data id of each syslog message: 32473 is the example enterprise
#: number of RFC 5612 (Backline has none of its own).
SD_ID = "backline@32473"
STILL_FAILING_S = 600.0
_RECORD = 96  # the cursor file's fixed size: "SEQ HASH\n", padded


def event_line(row: Any) -> dict[str, Any]:
    """An event as ``audit export`` writes it."""
    return {**row_to_event(row), "prev_hash": row["prev_hash"], "hash": row["hash"]}


def syslog_message(event: dict[str, Any], hostname: str) -> bytes:
    """One event as RFC 5424: MSGID its action, SD its seq and hash, MSG its JSON."""
    action = str(event["action"])
    severity = 4 if (".refused" in action or "failed" in action) else 6
    sd = f'[{SD_ID} seq="{event["seq"]}" hash="{sd_escape(str(event["hash"]))}"]'
    return rfc5424(json.dumps(event, ensure_ascii=False), msgid=action, sd=sd,
                   severity=severity, at=float(event["time"]), hostname=hostname)


@dataclass
class Cursor:
    seq: int = 0
    hash: str = GENESIS


class CursorFile:
    """``SEQ HASH`` in a fixed-size record, rewritten in place by one ``pwrite``."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def read(self) -> Cursor | None:
        raw = os.pread(self.fd, _RECORD, 0).decode("ascii", "replace").split()
        if len(raw) != 2 or not raw[0].isdigit() or len(raw[1]) != 64:
            return None
        return Cursor(int(raw[0]), raw[1])

    @staticmethod
    def record(seq: int, digest: str) -> bytes:
        return f"{seq} {digest}\n".ljust(_RECORD).encode("ascii")

    def write(self, seq: int, digest: str) -> None:
        os.pwrite(self.fd, self.record(seq, digest), 0)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def read_db_cursor(engine: sa.Engine, name: str) -> Cursor | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(siem_cursors).where(
            siem_cursors.c.destination == name)).mappings().first()
    return Cursor(row["seq"], row["hash"]) if row else None


def write_db_cursor(engine: sa.Engine, name: str, cursor: Cursor, *,
                    force: bool = False) -> None:
    """Move the table's cursor forward (``force``: to ``cursor`` wherever it was, for
    a cursor the trail did not confirm, :meth:`DestinationStream.load_cursor`)."""
    with writing(engine) as conn:
        conn.execute(insert_if_absent(conn, siem_cursors).values(
            destination=name, seq=0, hash=GENESIS, updated_at=time.time()))
        q = siem_cursors.update().where(siem_cursors.c.destination == name)
        if not force:
            # Never backwards: a slower writer must not undo a later cursor.
            q = q.where(siem_cursors.c.seq < cursor.seq)
        conn.execute(q.values(seq=cursor.seq, hash=cursor.hash, updated_at=time.time()))


def trail_hash(engine: sa.Engine, seq: int) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.select(audit_events.c.hash)
                            .where(audit_events.c.seq == seq)).scalar()


def target_of(url: str) -> str:
    """A destination's URL as logs and the trail show it: no credentials, no path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"


class DestinationStream:
    """One destination's loop: read from its cursor, send, move the cursor."""

    def __init__(self, relay: Relay, spec: SiemDestination) -> None:
        self.relay = relay
        self.spec = spec
        self.name = spec.name
        self.target = target_of(spec.url)
        self.hostname = urlsplit(relay.config.effective_public_url).hostname or "-"
        self.cursor_file = CursorFile(relay.datadir.root / "siem" / f"{spec.name}.cursor")
        self.cursor = Cursor()
        self.wake = asyncio.Event()
        self.sent = 0
        self.failures = 0
        self.failing_since: float | None = None
        self._last_failure_audit = 0.0
        self.syslog: SyslogSender | None = None
        self.https: JsonLinesSender | None = None
        if spec.scheme == "https":
            self.https = JsonLinesSender(spec.url, spec.secret, ca_file=spec.ca_file or None,
                                         timeout=spec.timeout_s)
        else:
            self.syslog = SyslogSender(spec.url, ca_file=spec.ca_file or None,
                                       timeout=spec.timeout_s)

    def load_cursor(self) -> tuple[Cursor, list[dict[str, Any]]]:
        """The later of the file's and the table's records that the trail confirms (the
        event at the record's ``seq`` has the record's hash), and what disagreed.

        A record the trail does not confirm (another event at its ``seq``, or a ``seq``
        past the trail's head: the database was restored from a backup taken before
        it, and the events since are new ones under the same numbers) is not trusted:
        resuming after it would skip those new events. The other copy is used when
        the trail confirms it (after a restore the table's copy is the backup's own,
        consistent with the trail); when neither is confirmed, streaming starts again
        from the first event: duplicates, which a collector can tell by seq and hash,
        rather than a silent gap. Both copies are then rewritten to the fallback, so
        the next start does not meet the same disagreement."""
        engine = self.relay.engine
        best = Cursor()
        mismatches: list[dict[str, Any]] = []
        for where, found in (("table", read_db_cursor(engine, self.name)),
                             ("file", self.cursor_file.read())):
            if found is None or found.seq == 0:
                continue
            actual = trail_hash(engine, found.seq)
            if actual != found.hash:
                mismatches.append({"copy": where, "cursor_seq": found.seq,
                                   "cursor_hash": found.hash, "trail_hash": actual or ""})
                continue
            if found.seq > best.seq:
                best = found
        if mismatches:
            with engine.connect() as conn:
                head = conn.execute(sa.select(sa.func.max(audit_events.c.seq))).scalar() or 0
            for m in mismatches:
                m.update(head=head, resumed_after=best.seq)
                log.error("siem %s: the %s cursor says #%d was sent with hash %s, but the "
                          "trail (head #%d) has %s there (restored from a backup?); "
                          "resuming after #%d, the last the trail confirms", self.name,
                          m["copy"], m["cursor_seq"], m["cursor_hash"][:12], head,
                          (m["trail_hash"] or "nothing")[:12], best.seq)
            self.cursor_file.write(best.seq, best.hash)
            write_db_cursor(engine, self.name, best, force=True)
        return best, mismatches

    def read_batch(self) -> list[dict[str, Any]]:
        q = (sa.select(audit_events).where(audit_events.c.seq > self.cursor.seq)
             .order_by(audit_events.c.seq).limit(self.spec.batch_size))
        with self.relay.engine.connect() as conn:
            rows = conn.execute(q).mappings().all()
        batch, size = [], 0
        for row in rows:
            event = event_line(row)
            size += len(json.dumps(event, ensure_ascii=False)) + 1
            if batch and size > self.spec.max_batch_bytes:
                break
            batch.append(event)
        return batch

    # --- sending (in a worker thread: no await between a send and its cursor) ------

    def _send_syslog(self, batch: list[dict[str, Any]]) -> None:
        assert self.syslog is not None
        messages = [syslog_message(e, self.hostname) for e in batch]

        # Each message's cursor record is written by the sender itself, right after the
        # message's last byte reached the kernel (syslog.send_then_record).
        fd = self.cursor_file.fd
        records = [(fd, CursorFile.record(e["seq"], e["hash"])) for e in batch]

        def sent(i: int) -> None:
            self.cursor = Cursor(batch[i]["seq"], batch[i]["hash"])
            self.sent += 1

        self.syslog.send_blocking(messages, sent, records)

    def _send_https(self, batch: list[dict[str, Any]]) -> None:
        assert self.https is not None
        first, last = batch[0], batch[-1]
        body = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in batch).encode()
        batch_id = f"{self.relay.audit.key_id}-{self.name}-{first['seq']}-{last['seq']}"
        self.https.post_blocking(body, batch_id, first["seq"], last["seq"])
        self.cursor_file.write(last["seq"], last["hash"])
        self.cursor = Cursor(last["seq"], last["hash"])
        self.sent += len(batch)

    def send_batch(self, batch: list[dict[str, Any]]) -> None:
        try:
            if self.syslog is not None:
                self._send_syslog(batch)
            else:
                self._send_https(batch)
        finally:
            write_db_cursor(self.relay.engine, self.name, self.cursor)

    # --- the loop ------------------------------------------------------------------

    async def run(self) -> None:
        self.cursor, mismatches = await asyncio.to_thread(self.load_cursor)
        for m in mismatches:
            self.relay.record("relay", "siem.cursor_mismatch", f"siem:{self.name}",
                              destination=self.target, **m)
        log.info("siem %s (%s): streaming after #%d", self.name, self.target,
                 self.cursor.seq)
        delay = 1.0
        while True:
            try:
                batch = await asyncio.to_thread(self.read_batch)
            except sa.exc.SQLAlchemyError:
                log.exception("siem %s: could not read the trail; will retry", self.name)
                await asyncio.sleep(5)
                continue
            if not batch:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await self.wake.wait()
                continue
            try:
                await asyncio.to_thread(self.send_batch, batch)
            except (OSError, ValueError, sa.exc.SQLAlchemyError) as exc:
                self._failed(exc)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.spec.retry_max_s)
                continue
            delay = 1.0
            if self.failing_since is not None:
                self._recovered()

    def _failed(self, exc: BaseException) -> None:
        reason = (str(exc) or type(exc).__name__)[:200]
        self.failures += 1
        now = time.time()
        log.warning("siem %s (%s): delivery failed after #%d (%s); will retry", self.name,
                    self.target, self.cursor.seq, reason)
        starting = self.failing_since is None
        if starting:
            self.failing_since = now
        if starting or now - self._last_failure_audit >= STILL_FAILING_S:
            self._last_failure_audit = now
            self.relay.record_flood(self.name, "relay", "siem.failed", f"siem:{self.name}",
                                    destination=self.target, reason=reason,
                                    failures=self.failures, after_seq=self.cursor.seq)

    def _recovered(self) -> None:
        assert self.failing_since is not None
        down = round(time.time() - self.failing_since, 3)
        log.warning("siem %s (%s): delivering again after %d failures over %.1f s",
                    self.name, self.target, self.failures, down)
        # Through record_flood too: a destination flapping every second makes a few rows
        # a minute, not one per flap.
        self.relay.record_flood(self.name, "relay", "siem.recovered", f"siem:{self.name}",
                                destination=self.target, failures=self.failures, down_s=down)
        self.failing_since, self.failures = None, 0

    async def close(self) -> None:
        if self.syslog is not None:
            await self.syslog.close()
        self.cursor_file.close()


class SiemStreamer:
    """One :class:`DestinationStream` task per configured destination."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.streams: list[DestinationStream] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False

    def start(self) -> list[asyncio.Task[None]]:
        if not self.relay.config.siem_destinations:
            return []
        self._loop = asyncio.get_running_loop()
        self.streams = [DestinationStream(self.relay, spec)
                        for spec in self.relay.config.siem_destinations]
        self.relay.audit.listeners.append(self._appended)
        return [asyncio.create_task(s.run(), name=f"siem-{s.name}") for s in self.streams]

    def _appended(self, event: dict[str, Any]) -> None:
        """An audit listener (any thread): wake the streams, once per burst."""
        if self._loop is None or self._wake_pending:
            return
        self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: stopping
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._wake_pending = False
        for stream in self.streams:
            stream.wake.set()

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            self.relay.audit.listeners.remove(self._appended)
        for stream in self.streams:
            await stream.close()
