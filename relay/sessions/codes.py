"""Attended sessions' codes: made for a technician, redeemed once by a customer.

A code is shown as a few digits; the relay keeps only its keyed hash, so a copy of the
database opens nothing. Redeeming is atomic (one conditional UPDATE from ``waiting``),
so two customers typing the same code, even on two nodes, open one session. Attempts
are reserved in :class:`backline.relay.auth_limits.JoinCodeLimits` before the lookup.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from backline.common import sessioncode
from backline.relay.auth_limits import JoinCodeLimits
from backline.relay.db import writing
from backline.relay.schema import support_sessions
from backline.relay.sessions import states
from backline.relay.sessions.session import CodeRefused, LiveSession, new_session_id
from backline.relay.sessions.states import State

if TYPE_CHECKING:
    from backline.relay.sessions.host import SessionHost

#: Makes the live session of a redeemed code (``SessionManager._new_live``).
NewLive = Callable[..., LiveSession]

__all__ = ["SessionCodes", "join_command"]


class SessionCodes:
    def __init__(self, relay: SessionHost, new_live: NewLive) -> None:
        self.relay = relay
        self.new_live = new_live
        self.limits = JoinCodeLimits(relay.config)

    def code_hash(self, digits: str) -> str:
        return hmac.new(self.relay.cookie_secret.encode(), b"session-code:" + digits.encode(),
                        hashlib.sha256).hexdigest()

    def create(self, technician: str, actor: str, reason: str, ticket: str,
                    capabilities: tuple[str, ...], address: str) -> dict[str, Any]:
        now = time.time()
        expires = now + self.relay.config.session_code_minutes * 60
        session_id = new_session_id()
        with writing(self.relay.engine) as conn:
            for _ in range(10):  # a clash with a live code is one in millions; try again
                digits = sessioncode.generate()
                code_hash = self.code_hash(digits)
                clash = conn.execute(sa.select(support_sessions.c.id).where(
                    support_sessions.c.code_hash == code_hash,
                    support_sessions.c.state == State.WAITING)).first()
                if clash is None:
                    break
            conn.execute(support_sessions.insert().values(
                id=session_id, mode="attended", technician=technician, opened_by=actor,
                reason=reason, ticket=ticket, capabilities=",".join(capabilities),
                state=states.check(None, State.WAITING), node=self.relay.origin,
                created_at=now, code_hash=code_hash, code_expires_at=expires))
        self.relay.record(actor, "session.code.create", f"session:{session_id}",
                          reason=reason, ticket=ticket, capabilities=list(capabilities),
                          expires_at=round(expires, 3), address=address)
        shown = sessioncode.display(digits)
        return {"session_id": session_id, "code": shown, "expires_at": round(expires, 3),
                "command": join_command(self.relay.origin, self.relay.token_pins[0], shown)}

    def retry_after(self, address: str) -> tuple[float, str]:
        """Seconds until ``address`` may try a code, and the limit (see
        :meth:`JoinCodeLimits.retry_after`); reserved for real by :meth:`redeem`."""
        return self.limits.retry_after(address)

    def failed(self, address: str) -> None:
        """Count a malformed join request from ``address`` as a wrong code."""
        self.limits.fail(address)

    def redeem(self, digits: str, address: str, hostname: str,
                    host_key_raw: bytes) -> LiveSession:
        """Use a code (once, atomically, across nodes); the attended session it opens.

        The attempt is reserved in the code limits first (raising ``CodeRateLimited``
        past one), and settled after the lookup: a wrong, used or expired code stays
        counted."""
        attempt = self.limits.reserve(address)
        failed = True
        try:
            self.relay.metrics.auth_checks.labels("join_code").inc()
            session = self._redeem(digits, address, hostname, host_key_raw)
            failed = False
            return session
        finally:
            attempt.settle("failed" if failed else "succeeded")

    def _redeem(self, digits: str, address: str, hostname: str,
                host_key_raw: bytes) -> LiveSession:
        code_hash = self.code_hash(digits)
        now = time.time()
        principal = "at_" + secrets.token_urlsafe(15)
        with writing(self.relay.engine) as conn:
            row = conn.execute(sa.select(support_sessions).where(
                support_sessions.c.code_hash == code_hash,
                support_sessions.c.state == State.WAITING)).mappings().first()
            if row is None:
                used = conn.execute(sa.select(support_sessions.c.id).where(
                    support_sessions.c.code_hash == code_hash)).first()
                raise CodeRefused("code_used" if used else "code_unknown")
            if row["code_expires_at"] <= now:
                raise CodeRefused("code_expired")
            done = conn.execute(support_sessions.update().where(
                support_sessions.c.id == row["id"], support_sessions.c.state == State.WAITING
            ).values(state=states.check(State.WAITING, State.CONSENT), agent_id=principal,
                     opened_at=now, remote_hostname=hostname[:256], remote_address=address[:64]))
            if done.rowcount != 1:
                raise CodeRefused("code_used")
        capabilities = tuple(c for c in row["capabilities"].split(",") if c)
        session = self.new_live(mode="attended", principal=principal, group_id=None,
                                 technician=row["technician"], opened_by=row["opened_by"],
                                 reason=row["reason"], ticket=row["ticket"],
                                 capabilities=capabilities, host_key_raw=host_key_raw,
                                 session_id=row["id"], state=State.CONSENT)
        session.remote_address = address
        return session

    def withdraw(self, session_id: str) -> bool:
        """Cancel a code nobody has used yet."""
        with writing(self.relay.engine) as conn:
            done = conn.execute(support_sessions.update().where(
                support_sessions.c.id == session_id, support_sessions.c.state == State.WAITING
            ).values(state=states.check(State.WAITING, State.CLOSED), closed_at=time.time(),
                     close_reason="withdrawn"))
        return bool(done.rowcount == 1)


def join_command(origin: str, pin: str, code: str) -> str:
    """What the customer types: the relay's URL and key pin travel with the code, so the
    agent trusts exactly this relay without an enrollment."""
    return f"backline-agent join --relay {origin} --pin {pin} {code}"
