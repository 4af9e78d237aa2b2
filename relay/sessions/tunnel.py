"""The SSH client the relay runs over an agent's tunnel, and why such a connection ended."""

from __future__ import annotations

import asyncssh

from backline.relay.sessions.session import LiveSession


class TunnelClient(asyncssh.SSHClient):
    """Remembers why the agent's side ended the connection."""

    def __init__(self, session: LiveSession) -> None:
        self.session = session

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.lost = exc
