"""One bounded ``GET`` to the relay over the TLS pins this agent holds.

Three things the running agent reads from the relay outside the control socket go
through here: its pin set (``/agent/pins``, agent/pinsync.py), its fix keys
(``/agent/fix-trust``, agent/fixes/trust.py) and, when the list is too large for one
control message, its revocation list (``/agent/fix-revocations``,
agent/fixes/revocations.py). One copy of the request, the bounds and the status check,
so the three cannot drift apart. The connection proves little by itself; what is read
is adopted only after its signature is checked by the caller.

Kept light on purpose (asyncio and the standard library): the idle agent imports it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from backline.common import __version__
from backline.common.tlspin import PeerMatch, Trust


class RelayAnswerError(Exception):
    """The relay's answer is unusable (too large, not HTTP 200); the message says why."""


async def get(relay_url: str, trust: Trust, path: str, max_answer: int,
              timeout_s: float) -> tuple[int, bytes, PeerMatch]:
    """``(status, body, the pin this connection matched)`` of ``GET path``; at most
    ``max_answer`` bytes are read (more is :class:`RelayAnswerError`), in ``timeout_s``.
    A :class:`~backline.common.tlspin.PinMismatch` or ``OSError`` passes through."""
    parts = urlsplit(relay_url)
    host = parts.hostname or ""
    port = parts.port or 443
    async with asyncio.timeout(timeout_s):
        reader, writer = await asyncio.open_connection(host, port, ssl=trust.context(),
                                                       server_hostname=host)
        try:
            match = trust.check(writer.get_extra_info("ssl_object"))
            netloc = parts.netloc.rsplit("@", 1)[-1]
            writer.write((f"GET {path} HTTP/1.1\r\nHost: {netloc}\r\n"
                          f"User-Agent: backline-agent/{__version__}\r\n"
                          "Accept: application/json\r\nConnection: close\r\n\r\n").encode())
            await writer.drain()
            data = bytearray()
            while len(data) <= max_answer:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.transport.abort()
    if len(data) > max_answer:
        raise RelayAnswerError(f"answer over {max_answer} bytes")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    try:
        code = int(status[1])
    except (IndexError, ValueError):
        raise RelayAnswerError("not an HTTP answer") from None
    return code, body, match


async def get_ok(relay_url: str, trust: Trust, path: str, max_answer: int,
                 timeout_s: float) -> tuple[bytes, PeerMatch]:
    """:func:`get`, with anything but HTTP 200 a :class:`RelayAnswerError`."""
    code, body, match = await get(relay_url, trust, path, max_answer, timeout_s)
    if code != 200:
        raise RelayAnswerError(f"HTTP {code}")
    return body, match
