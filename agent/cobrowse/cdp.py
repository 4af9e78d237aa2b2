"""The DevTools protocol over a pipe, as a protocol core without I/O.

Chromium's ``--remote-debugging-pipe`` reads commands on fd 3 and writes answers and
events on fd 4, each one JSON message ended by a NUL byte. The pipe, unlike the
``--remote-debugging-port`` websocket, is reachable by no other process on the
machine (a debugging port on loopback is open to every local user: full control of
the customer's browser).

:class:`CDPCore` is pure, in the manner of h11 and python-websockets: :meth:`command`
gives the bytes to write, :meth:`receive` takes bytes read and gives back
:class:`Response` and :class:`Event` objects. The asyncio layer (``browser.py``) only
moves bytes. What the browser sends is bounded too (:data:`MAX_MESSAGE`): the page
can make it send large things (a binding call carries a page-chosen string, a
``console.log`` a page-chosen size): a message over the bound is skipped up to its NUL,
counted (:attr:`CDPCore.skipped`), never the end of the connection, and the console's
events (:data:`DISCARDED`), which the agent never uses, are dropped by their first bytes
before any parsing. The buffer is scanned once: each chunk only from where the last
scan stopped (a 32 MiB message in 64 KiB reads is not rescanned 500 times).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

#: The largest single message accepted from the browser (a binding call with a full
#: snapshot of a large page is the biggest legitimate one).
MAX_MESSAGE = 32 * 1024 * 1024
#: Events the agent does not use that a page can make as large and as frequent as it
#: likes (Runtime.enable, needed for bindingCalled, turns them on). Chromium writes an
#: event's method first; matched on the message's first bytes only, so a key inside a
#: value (a returned object) is never taken for one.
DISCARDED = tuple(b'{"method":"%s"' % m for m in (b"Runtime.consoleAPICalled",
                                                   b"Runtime.exceptionThrown"))

log = logging.getLogger("backline.agent.cobrowse")


class CDPProtocolError(Exception):
    """The browser broke the framing (a message that is not a JSON object)."""


@dataclass(frozen=True)
class Response:
    id: int
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    session_id: str | None


@dataclass(frozen=True)
class Event:
    method: str
    params: dict[str, Any]
    session_id: str | None


class CDPCore:
    def __init__(self, max_message: int = MAX_MESSAGE) -> None:
        self._next_id = 0
        self._buffer = bytearray()
        #: How much of the buffer is known to hold no NUL.
        self._scanned = 0
        #: Inside an oversize message: bytes are dropped up to its NUL.
        self._skipping = False
        self.max_message = max_message
        #: Oversize messages skipped, and console/exception events discarded unparsed.
        self.skipped = 0
        self.discarded = 0

    def command(self, method: str, params: dict[str, Any] | None = None,
                session_id: str | None = None) -> tuple[int, bytes]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method,
                                   "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        return self._next_id, json.dumps(message, separators=(",", ":")).encode() + b"\0"

    def receive(self, data: bytes) -> list[Response | Event]:
        """Parse what ``data`` completes; a partial message waits for more bytes."""
        out: list[Response | Event] = []
        if self._skipping:
            end = data.find(b"\0")
            if end < 0:
                return out
            self._skipping = False
            data = data[end + 1:]
        self._buffer += data
        while True:
            end = self._buffer.find(b"\0", self._scanned)
            if end < 0:
                if len(self._buffer) > self.max_message:
                    self._skip()
                    return out
                self._scanned = len(self._buffer)
                return out
            raw = bytes(self._buffer[:end])
            del self._buffer[:end + 1]
            self._scanned = 0
            if len(raw) > self.max_message:
                self._skip(ended=True)
                continue
            if raw.startswith(DISCARDED):
                self.discarded += 1
                continue
            out.append(parse_message(raw))

    def _skip(self, ended: bool = False) -> None:
        """An oversize message: dropped (up to its NUL when it has not ended yet)."""
        self.skipped += 1
        if self.skipped == 1:
            log.warning("the browser sent a message over %d bytes: skipped (said once)",
                        self.max_message)
        if not ended:
            self._buffer.clear()
            self._scanned = 0
            self._skipping = True


def parse_message(raw: bytes) -> Response | Event:
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise CDPProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise CDPProtocolError("a message that is not an object")
    session = message.get("sessionId")
    session = session if isinstance(session, str) else None
    if isinstance(message.get("id"), int):
        result = message.get("result")
        error = message.get("error")
        return Response(message["id"], result if isinstance(result, dict) else None,
                        error if isinstance(error, dict) else None, session)
    method = message.get("method")
    params = message.get("params")
    if not isinstance(method, str):
        raise CDPProtocolError("a message with neither id nor method")
    return Event(method, params if isinstance(params, dict) else {}, session)
