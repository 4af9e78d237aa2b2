"""Opening a WebSocket to the relay with its TLS key (or CA) pinned.

Trust comes from the pins (common/tlspin.py), checked right after the TLS handshake
and before the agent sends anything but the HTTP upgrade request.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from backline.common import __version__, protocol
from backline.common.tlspin import PeerMatch, PinMismatch, Trust


class RelayUnreachable(Exception):
    """The relay could not be reached; the message says where and why."""


def ws_url(relay_url: str, path: str) -> str:
    parts = urlsplit(relay_url)
    return f"wss://{parts.netloc}{path}"


@contextlib.asynccontextmanager
async def open_trusted(url: str, trust: Trust | str, timeout: float = 15.0
                       ) -> AsyncIterator[tuple[ClientConnection, PeerMatch]]:
    """A WebSocket to ``url`` whose peer ``trust`` accepts (a text is one pin), and how
    it matched: the caller binds :attr:`PeerMatch.bound` and migrates legacy pins."""
    trust = Trust.of(trust) if isinstance(trust, str) else trust
    try:
        ws = await connect(
            url, ssl=trust.context(), open_timeout=timeout, close_timeout=2,
            ping_interval=None, compression=None, max_size=protocol.MAX_FRAME_BYTES,
            user_agent_header=f"backline-agent/{__version__}", proxy=None,
        )
    except ssl.SSLCertVerificationError as exc:  # only with a pinned CA
        raise PinMismatch(trust.pins, f"a chain the pinned CA did not sign ({exc.verify_message})"
                          ) from None
    except (OSError, socket.gaierror, TimeoutError, InvalidURI) as exc:
        raise RelayUnreachable(f"cannot reach the relay at {url}: {exc}") from exc
    except InvalidStatus as exc:
        raise RelayUnreachable(f"the relay at {url} refused the connection "
                               f"(HTTP {exc.response.status_code})") from exc
    except InvalidHandshake as exc:
        raise RelayUnreachable(f"{url} did not answer as a Backline relay: {exc}") from exc
    try:
        match = trust.check(ws.transport.get_extra_info("ssl_object"))
        yield ws, match
    finally:
        await ws.close()


@contextlib.asynccontextmanager
async def open_pinned(url: str, trust: Trust | str, timeout: float = 15.0
                      ) -> AsyncIterator[ClientConnection]:
    """As :func:`open_trusted`, for callers that need only the socket."""
    async with open_trusted(url, trust, timeout) as (ws, _match):
        yield ws
