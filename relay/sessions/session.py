"""One live support session as the relay holds it, and the errors sessions raise."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncssh

from backline.common.wstunnel import WebSocketTunnel
from backline.relay.sessions import states
from backline.relay.sessions.states import State

__all__ = ["CodeRefused", "LiveSession", "SessionError", "new_session_id", "speaker",
           "token_hash"]


class SessionError(Exception):
    """A refusal or failure with an HTTP status, a stable code and a sentence.

    ``audited`` when it was recorded where it arose (``session.channel.refused`` /
    ``.failed``, with the capability and agent): the API then does not record it again.
    """

    def __init__(self, status: int, code: str, detail: str, audited: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.audited = audited


class CodeRefused(Exception):
    """A session code that does not open anything; ``reason`` is for the audit only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def speaker(principal: str) -> str:
    """The audit actor of a session principal: an enrolled agent, or an attended one."""
    return f"agent:{principal}" if principal.startswith("ag_") else f"customer:{principal}"


def new_session_id() -> str:
    return "ss_" + secrets.token_urlsafe(15)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(eq=False)
class LiveSession:
    id: str
    mode: str
    principal: str
    group_id: int | None
    technician: str
    opened_by: str
    reason: str
    ticket: str
    capabilities: tuple[str, ...]
    host_key: asyncssh.SSHKey
    valid_until: float
    opened_at: float = field(default_factory=time.time)
    state: State = State.DIALING
    token_hash: str = ""
    ssh: asyncssh.SSHClientConnection | None = None
    tunnel: WebSocketTunnel | None = None
    notify: Callable[[str], Awaitable[Any]] | None = None
    last_activity: float = field(default_factory=time.monotonic)
    active_channels: int = 0
    channels: int = 0
    ready_at: float | None = None
    cert_serial: int | None = None
    closing: bool = False
    lost: BaseException | None = None
    remote_address: str = ""
    ready: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # Nobody may await an attended session's readiness: never warn about it.
        self.ready.add_done_callback(lambda f: f.cancelled() or f.exception())

    def __setattr__(self, name: str, value: Any) -> None:
        # Every move goes through the table (states.py); a wrong one raises here. The
        # first value is where the row already is (an attended session's live object is
        # made when the customer redeems the code: in ``consent``).
        if name == "state":
            old = self.__dict__.get("state")
            value = State(value) if old is None else states.check(old, value)
        object.__setattr__(self, name, value)

    def touch(self) -> None:
        self.last_activity = time.monotonic()
