"""Opening a WebSocket to the relay with its TLS certificate pinned.

Trust comes from the pinned SHA-256 fingerprint, checked right after the TLS
handshake and before the agent sends anything but the HTTP upgrade request.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from backline.common import __version__, protocol
from backline.common.tlspin import check_pin, client_context


class RelayUnreachable(Exception):
    """The relay could not be reached; the message says where and why."""


def ws_url(relay_url: str, path: str) -> str:
    parts = urlsplit(relay_url)
    return f"wss://{parts.netloc}{path}"


@contextlib.asynccontextmanager
async def open_pinned(url: str, fingerprint: str, timeout: float = 15.0
                      ) -> AsyncIterator[ClientConnection]:
    try:
        ws = await connect(
            url, ssl=client_context(), open_timeout=timeout, close_timeout=2,
            ping_interval=None, compression=None, max_size=protocol.MAX_FRAME_BYTES,
            user_agent_header=f"backline-agent/{__version__}", proxy=None,
        )
    except (OSError, socket.gaierror, TimeoutError, InvalidURI) as exc:
        raise RelayUnreachable(f"cannot reach the relay at {url}: {exc}") from exc
    except InvalidStatus as exc:
        raise RelayUnreachable(f"the relay at {url} refused the connection "
                               f"(HTTP {exc.response.status_code})") from exc
    except InvalidHandshake as exc:
        raise RelayUnreachable(f"{url} did not answer as a Backline relay: {exc}") from exc
    try:
        check_pin(ws.transport.get_extra_info("ssl_object"), fingerprint)
        yield ws
    finally:
        await ws.close()
