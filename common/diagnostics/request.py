"""What a technician asks of one diagnostics run, and its validation (no I/O).

The relay writes one JSON object to the channel, then closes its side::

    {"v": 1, "sections": ["dns", "reachability"]}    # or {} for everything

An empty request means "everything". The relay validates it before sending and the
agent validates it again on arrival: the channel is input from the network, and a
request the agent does not understand is refused with a clear error line rather
than guessed at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from backline.common.diagnostics.schema import SECTIONS

REQUEST_VERSION = 1
#: A request is a few names; anything longer is not one.
MAX_REQUEST_BYTES = 4096
_KEYS = {"v", "sections"}


class RequestError(ValueError):
    """A diagnostics request that cannot be honoured; the message says why."""


@dataclass(frozen=True)
class DiagnosticsRequest:
    #: ``None`` runs every collector.
    sections: tuple[str, ...] | None = None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"v": REQUEST_VERSION}
        if self.sections is not None:
            body["sections"] = list(self.sections)
        return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def parse_sections(value: Any) -> tuple[str, ...] | None:
    """A ``sections`` value: ``None`` or a non-empty list of distinct known names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise RequestError("sections must be a non-empty list of section names")
    if len(value) > len(SECTIONS):
        raise RequestError(f"sections lists more than the {len(SECTIONS)} there are")
    names: list[str] = []
    for name in value:
        if not isinstance(name, str) or name not in SECTIONS:
            shown = repr(name)[:40]
            raise RequestError(f"unknown section {shown}; known: {', '.join(SECTIONS)}")
        if name in names:
            raise RequestError(f"section {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def parse_request(raw: bytes | str) -> DiagnosticsRequest:
    """Validate a request as it arrived on the channel (empty means everything)."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if len(data) > MAX_REQUEST_BYTES:
        raise RequestError(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
    if not data.strip():
        return DiagnosticsRequest()
    try:
        body = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise RequestError("the request is not a JSON object") from None
    if not isinstance(body, dict):
        raise RequestError("the request is not a JSON object")
    unknown = set(body) - _KEYS
    if unknown:
        raise RequestError(f"unknown request fields: {', '.join(sorted(unknown))[:100]}")
    version = body.get("v", REQUEST_VERSION)
    if version != REQUEST_VERSION or isinstance(version, bool):
        raise RequestError(f"request version {str(version)[:20]} is not supported "
                           f"(this agent speaks {REQUEST_VERSION})")
    return DiagnosticsRequest(parse_sections(body.get("sections")))
