"""Whole lines from an agent's channel, each bounded.

asyncssh's ``readline`` is not a line reader for a bounded channel: when a line is
longer than what the channel buffers (its receive window, 512 KiB here:
``common/wstunnel.SSH_WINDOW``), reading pauses and ``readline`` hands back the part it
has as if it were a whole line. A 700 KiB JSON line then arrives as two "lines" that
are neither JSON nor under their bound (each part is shorter than the limit the caller
checks), so a per-line limit above the window was never enforced. :class:`LineReader`
splits the stream itself: every line it returns ends in ``\\n`` (but the last one before
the end of the stream may not), and a line longer than its limit raises
:class:`LineTooLong` as soon as the limit is passed, without reading the rest of it.
"""

from __future__ import annotations

from typing import Protocol

#: What one read asks for: a part of the window, so a long line costs a few reads.
READ_CHUNK = 64 * 1024


class ByteStream(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class LineTooLong(Exception):
    """A line longer than the reader's limit (``size``: what was read of it so far)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"a line of more than {limit} bytes ({size} read so far)")
        self.size = size
        self.limit = limit


class LineReader:
    """``await reader.readline()``: the next whole line (with its ``\\n``), ``b""`` at the
    end of the stream. Cancelling a pending ``readline`` loses nothing: what was read is
    kept for the next call. The stream's own errors (the agent gone) pass through."""

    def __init__(self, stream: ByteStream, max_line: int, chunk: int = READ_CHUNK) -> None:
        self.stream = stream
        self.max_line = max_line
        self.chunk = chunk
        self._buf = bytearray()
        self._scanned = 0  # no newline before this offset of _buf

    async def readline(self) -> bytes:
        while True:
            cut = self._buf.find(b"\n", self._scanned)
            if cut >= 0:
                line = bytes(self._buf[: cut + 1])
                del self._buf[: cut + 1]
                self._scanned = 0
                if len(line) - 1 > self.max_line:
                    raise LineTooLong(len(line) - 1, self.max_line)
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > self.max_line:
                raise LineTooLong(len(self._buf), self.max_line)
            data = await self.stream.read(self.chunk)
            if not data:
                rest = bytes(self._buf)
                self._buf.clear()
                self._scanned = 0
                if len(rest) > self.max_line:
                    raise LineTooLong(len(rest), self.max_line)
                return rest
            self._buf += data
