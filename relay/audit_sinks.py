"""Checkpoint sinks: every signed checkpoint note also goes outside the relay's database.

Someone who can write the database can rewrite history consistently: alter an event,
recompute the chain and the tree, delete the checkpoints after it. The relay's own
``audit verify`` then finds nothing. A checkpoint that left the database before the
rewrite cannot be recomputed away: ``audit verify --against FILE`` checks that the
trail reproduces each one (relay/audit.py :func:`verify_chain`).

Sinks: ``file:/path`` appends one JSON line per note (``{"size", "time", "note"}``),
opened with ``O_APPEND`` and fsynced before the append returns (set the file
append-only with ``chattr +a``, or ship it elsewhere); ``syslog+tcp://`` and
``syslog+tls://`` send each note as an RFC 5424 message (msgid ``checkpoint``) through
relay/siem/syslog.py, from a thread of its own so the append path never waits on the
network; ``syslog+tls://host:port?ca_file=/path/ca.pem`` trusts that CA (else the
system's).

A failing sink never fails the append (the checkpoint is in the database; the next
one goes to the sink again), but is not only logged: the AuditLog counts it
(``backline_audit_sink_failures``) and the running relay audits it as
``audit.sink.failed`` through its flood aggregation (a collector down for an hour is a
few events, not one per note). A CLI command that appends (``audit bundle``) has no
relay: there the failure is logged and counted only.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("backline.relay.audit")
MAX_SINK_LINE = 32 * 1024


class Sink(Protocol):
    def write(self, note: str) -> None: ...


def _size_of(note: str) -> int:
    lines = note.split("\n", 2)
    return int(lines[1]) if len(lines) > 2 and lines[1].isdigit() else 0


class FileSink:
    """Appends each note as one JSON line and fsyncs it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"file:{self.path}"

    def write(self, note: str) -> None:
        line = json.dumps({"size": _size_of(note), "time": round(time.time(), 6),
                           "note": note}, ensure_ascii=False) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class SyslogSink:
    """Sends each note to a syslog collector (RFC 5424 over TCP or TLS) from a worker
    thread; a failed send is logged and the note retried with the next one."""

    def __init__(self, url: str, ca_file: str | None = None) -> None:
        from backline.relay.siem import syslog  # helper siem's module (brief: contract)

        self.url = url
        self.ca_file = ca_file
        #: ``(sink, reason, error)``, set by the AuditLog that owns the sink.
        self.on_failure: Callable[[str, str, BaseException | str], None] | None = None
        self._syslog: Any = syslog
        self._queue: queue.Queue[str] = queue.Queue(maxsize=10000)
        self._thread = threading.Thread(target=self._run, name="audit-sink-syslog",
                                        daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return self.url

    def write(self, note: str) -> None:
        try:
            self._queue.put_nowait(note)
        except queue.Full:
            self._failed("queue_full", "queue full, a checkpoint was not sent")

    def _failed(self, reason: str, exc: BaseException | str) -> None:
        if self.on_failure is not None:
            self.on_failure(self.url, reason, exc)
        else:
            log.error("audit checkpoint sink %s failed: %s", self.url, exc)

    def _run(self) -> None:
        """One connection kept open; a note that could not be sent is sent again with
        the next one, or after a back-off (up to a minute) when none comes."""
        sender = self._syslog.SyslogSender(self.url, ca_file=self.ca_file)
        pending: list[bytes] = []
        backoff = 1.0
        while True:
            try:
                note = self._queue.get(timeout=backoff if pending else None)
                pending.append(self._syslog.rfc5424(note, msgid="checkpoint"))
            except queue.Empty:
                pass
            try:
                sender.send_blocking(pending)
                pending, backoff = [], 1.0
            except (OSError, ValueError) as exc:
                self._failed("send_failed", exc)
                pending, backoff = pending[-1000:], min(backoff * 2, 60.0)


def open_sinks(specs: list[str]) -> list[Sink]:
    sinks: list[Sink] = []
    for spec in specs:
        if spec.startswith("file:"):
            sinks.append(FileSink(Path(spec[len("file:"):]).expanduser()))
        elif spec.startswith(("syslog+tcp://", "syslog+tls://")):
            url, _, query = spec.partition("?")
            ca_file = None
            if query:
                key, _, value = query.partition("=")
                if key != "ca_file" or not value or "&" in value:
                    raise ValueError(f"checkpoint sink {spec!r}: the only option is "
                                     "?ca_file=PATH")
                ca_file = str(Path(value).expanduser())
            sinks.append(SyslogSink(url, ca_file=ca_file))
        else:
            raise ValueError(f"unknown checkpoint sink {spec!r}")
    return sinks


def read_sink_file(path: Path) -> list[str]:
    """The notes of a file sink, oldest first; raises ValueError naming the line that is
    not a sink record."""
    notes: list[str] = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            if len(line) > MAX_SINK_LINE:
                raise ValueError(f"{path}:{number}: line too long")
            try:
                notes.append(str(json.loads(line)["note"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(f"{path}:{number}: not a checkpoint record") from None
    return notes
