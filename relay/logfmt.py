"""The relay's log lines: one record, one line, whatever the network sent.

Log messages carry network input (a username, an agent's hostname, a reason text).
A newline in one of them, written as is, starts a new line that a reader or a log
collector takes for a record of its own: an attacker could forge ``audit`` lines.
So every record goes through one formatter here, for the relay's loggers and
uvicorn's alike (uvicorn is told not to install its own handlers): in the ``text``
format, CR, LF, every other control character and everything else not printable
(U+2028, bidi overrides, ...) in the message, its arguments and any traceback is
written as an escape (``\\n``, ``\\x1b``, ``\\u2028``); in the ``json`` format each
record is one JSON object (``ensure_ascii``, so nothing but printable ASCII reaches
the file), with the audit event's fields when the record is an audit line.

Secrets are kept out before a record is made (:func:`backline.relay.state._loggable`);
this module only makes sure what is logged cannot pass for something else.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def escape(text: str) -> str:
    """``text`` with every non-printable character written as a visible escape, so it
    stays on one line and cannot pass for another record. Text that is printable
    already is returned as it is (the common case costs one check); a backslash is
    doubled in text that needed escaping."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif ch.isprintable():
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else
                       f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def frames_only(exc: BaseException) -> str:
    """A traceback without what could hold a secret: each exception's *type* and its
    frames (file, line, function), never its message nor the source lines (an
    exception raised while handling a request may quote the request: ``password=...``).
    Chained exceptions (``raise ... from``, errors while handling) are included."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(parts) < 8:
        seen.add(id(current))
        frames = "".join(f"\n  {f.filename}:{f.lineno} in {f.name}"
                         for f in traceback.extract_tb(current.__traceback__))
        parts.append(f"{type(current).__module__}.{type(current).__qualname__}{frames}")
        current = current.__cause__ or current.__context__
    return "\ncaused by ".join(parts)


class EscapingFormatter(logging.Formatter):
    """The ``text`` format: the usual line, with message, arguments and traceback
    escaped onto it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:
        return escape(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return escape(super().formatStack(stack_info))

    def format(self, record: logging.LogRecord) -> str:
        # logging joins message and traceback with a newline: keep the record on one
        # line by escaping that one too.
        return super().format(record).replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """The ``json`` format: one object per line, ``time`` (UTC, ISO 8601 with
    milliseconds), ``level``, ``logger``, ``message``; an audit line adds ``actor``,
    ``action``, ``target`` and ``details``; a traceback is in ``exc``."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        audit = getattr(record, "audit", None)
        if isinstance(audit, dict):
            out.update(audit)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=True, default=str, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else EscapingFormatter()


def configure(level: str, log_format: str = "text") -> None:
    """One handler on the root logger, on standard error, with the relay's formatter;
    handlers installed before (``basicConfig``, a library's) are replaced, and uvicorn's
    loggers propagate to it (see :func:`uvicorn_log_config`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        named = logging.getLogger(name)
        for old in list(named.handlers):
            named.removeHandler(old)
        named.propagate = True


def uvicorn_log_config() -> dict[str, Any]:
    """What uvicorn's ``log_config`` gets: its loggers with no handlers of their own,
    propagating to the root logger's escaping handler (uvicorn's default config would
    install its own formatter, which writes messages as they are)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {name: {"handlers": [], "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }
