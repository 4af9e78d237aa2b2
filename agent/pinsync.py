"""Learning the relay's next key before it is used: ``GET /agent/pins``.

Tokens carry the relay's current key and its next one (``tls_next.key``), but an agent
enrolled before the next key existed, or migrated from a certificate pin, knows only
the current key, and ``backline-relay cert rotate --new-key`` would cut it off. So a
running agent asks the relay for its pins, over a connection trusted by the pins it
already holds, at its first connection and then once a day, and records the answer.

Why a separate HTTPS request and not a field in ``welcome``: agents from before refuse
any field they do not know, so the relay could not add one. Old relays answer 404,
which is simply ignored.

The answer is bounded (8 KiB, 10 s), must be 1-4 SPKI pins, and is adopted only if it
still holds the pin this very connection was trusted by: a relay cannot make its agents
drop the key they are talking to, only add the next one (or, after a key change,
drop keys it no longer has).
"""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

from backline.agent.state import Enrollment, StateDir
from backline.common import __version__
from backline.common.tlspin import MAX_PINS, BadPin, PinMismatch, Trust, is_spki, parse_pin

log = logging.getLogger("backline.agent")

PATH = "/agent/pins"
MAX_ANSWER = 8 * 1024
TIMEOUT_S = 10.0
EVERY_S = 24 * 3600.0


class PinAnswerError(Exception):
    """The relay's answer is not a usable pin set; the message says why."""


async def fetch(relay_url: str, trust: Trust) -> tuple[list[str], str]:
    """The relay's announced pins and the pin this connection matched."""
    parts = urlsplit(relay_url)
    host = parts.hostname or ""
    port = parts.port or 443
    async with asyncio.timeout(TIMEOUT_S):
        reader, writer = await asyncio.open_connection(
            host, port, ssl=trust.context(), server_hostname=host)
        try:
            match = trust.check(writer.get_extra_info("ssl_object"))
            netloc = parts.netloc.rsplit("@", 1)[-1]
            writer.write((f"GET {PATH} HTTP/1.1\r\nHost: {netloc}\r\n"
                          f"User-Agent: backline-agent/{__version__}\r\n"
                          "Accept: application/json\r\nConnection: close\r\n\r\n").encode())
            await writer.drain()
            data = b""
            while len(data) <= MAX_ANSWER:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                data += chunk
        finally:
            writer.transport.abort()
    if len(data) > MAX_ANSWER:
        raise PinAnswerError(f"answer over {MAX_ANSWER} bytes")
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].split()
    if len(status) < 2 or status[1] != b"200":
        raise PinAnswerError(f"HTTP {status[1].decode('latin-1') if len(status) > 1 else '?'}")
    try:
        pins = json.loads(body)["pins"]
        if (not isinstance(pins, list) or not 1 <= len(pins) <= MAX_PINS
                or not all(isinstance(p, str) and is_spki(parse_pin(p)) for p in pins)):
            raise ValueError("not 1-4 SPKI pins")
    except (ValueError, KeyError, TypeError, BadPin) as exc:
        raise PinAnswerError(f"malformed pin set ({exc})") from None
    return list(dict.fromkeys(pins)), match.pin


async def sync(state: StateDir, enrollment: Enrollment) -> Enrollment:
    """Ask the relay for its pins and record them if they differ; never raises for a
    relay that does not answer or answers badly (that is logged, and retried later)."""
    try:
        pins, matched = await fetch(enrollment.relay_url, enrollment.trust)
    except (OSError, TimeoutError, PinMismatch, PinAnswerError, ValueError) as exc:
        log.debug("could not learn the relay's pins: %s", exc)
        return enrollment
    if pins == enrollment.pins:
        return enrollment
    if matched not in pins:
        log.warning("the relay announced pins %s without the key it was trusted by (%s): "
                    "ignored", ", ".join(pins), matched)
        return enrollment
    try:
        updated = state.update_pins(enrollment, pins)
    except OSError as exc:
        log.warning("could not record the relay's pins: %s", exc)
        return enrollment
    log.info("the relay's pins are now %s", ", ".join(pins))
    return updated
