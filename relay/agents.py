"""Enrolled agents: the registry in the database and who is online right now.

Everything an agent reports about itself is hostile input: it is bounded by the
protocol, stored as given and escaped wherever it is shown.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from backline.relay.db import writing
from backline.relay.schema import agents, groups

INFO_FIELDS = ("hostname", "os", "os_version", "arch", "version")


def new_agent_id() -> str:
    return "ag_" + secrets.token_urlsafe(15)


def register(conn: sa.Connection, group_id: int, public_key: bytes, info: dict[str, str],
             token_id: str, address: str) -> str:
    """Insert a newly enrolled agent inside the caller's transaction."""
    agent_id = new_agent_id()
    conn.execute(agents.insert().values(
        id=agent_id, group_id=group_id, public_key=public_key,
        **{k: str(info.get(k, ""))[:256] for k in INFO_FIELDS},
        label="", enrolled_at=time.time(), enroll_token_id=token_id,
        last_address=address[:64], health="[]"))
    return agent_id


def public_key_of(engine: sa.Engine, agent_id: str) -> tuple[bytes, int] | None:
    """``(public key, group id)`` of an agent that may connect, or ``None``."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(agents.c.public_key, agents.c.group_id).where(
            agents.c.id == agent_id, agents.c.revoked_at.is_(None))).first()
    return (bytes(row.public_key), row.group_id) if row else None


def stored_health(engine: sa.Engine, agent_id: str) -> str:
    """The health report last stored for an agent (JSON text; ``"[]"`` if none)."""
    with engine.connect() as conn:
        text = conn.execute(sa.select(agents.c.health).where(agents.c.id == agent_id)
                            ).scalar()
    return str(text or "[]")


def _row(r: Any, online: Presence) -> dict[str, Any]:
    conn = online.get(r["id"])
    return {
        "id": r["id"], "group": r["group"], "group_id": r["group_id"],
        **{k: r[k] for k in INFO_FIELDS}, "label": r["label"],
        "enrolled_at": r["enrolled_at"],
        "last_seen": conn.last_seen if conn else r["last_seen"],
        "last_address": conn.address if conn else r["last_address"],
        "online": conn is not None,
        "health": json.loads(r["health"] or "[]"),
        "revoked": r["revoked_at"] is not None,
    }


def _select() -> sa.Select[Any]:
    return (sa.select(agents, groups.c.name.label("group"))
            .join(groups, groups.c.id == agents.c.group_id))


def list_agents(engine: sa.Engine, online: Presence,
                group_ids: set[int] | None) -> list[dict[str, Any]]:
    q = _select().order_by(agents.c.hostname, agents.c.id)
    if group_ids is not None:
        q = q.where(agents.c.group_id.in_(group_ids or {-1}))
    with engine.connect() as conn:
        return [_row(r, online) for r in conn.execute(q).mappings()]


def get_agent(engine: sa.Engine, online: Presence, agent_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        r = conn.execute(_select().where(agents.c.id == agent_id)).mappings().first()
    return _row(r, online) if r else None


def update_agent(engine: sa.Engine, agent_id: str, **changes: Any) -> None:
    with writing(engine) as conn:
        conn.execute(agents.update().where(agents.c.id == agent_id).values(**changes))


class Connected:
    """One online agent, as the node holding its control socket sees it.

    :meth:`close` remembers why the relay closed the socket (``revoked``,
    ``replaced``): the ``agent.disconnect`` event says so instead of ``closed``, which
    would read as if the agent had left by itself. A class with slots, not a
    dataclass: ten thousand of them live for days."""

    __slots__ = ("_close", "address", "agent_id", "connected_at", "critical", "ended",
                 "group_id", "health", "last_seen", "pending_pings", "quiet", "send")

    def __init__(self, agent_id: str, group_id: int, address: str, connected_at: float,
                 send: Callable[[str], Any], close: Callable[[int, str], Any],
                 last_seen: float | None = None,
                 quiet: Callable[[bool], Any] | None = None) -> None:
        self.agent_id = agent_id
        self.group_id = group_id
        self.address = address
        self.connected_at = connected_at
        self.send = send
        self._close = close
        self.last_seen = time.time() if last_seen is None else last_seen
        self.pending_pings: dict[str, Any] = {}
        #: Puts the socket's reads on the shared timer or takes them off (lean sockets).
        self.quiet = quiet
        #: Why the relay closed this socket, once it did ("" until then).
        self.ended = ""
        #: The last health report stored, and its critical alerts: repeats of the same
        #: report are not written again, and only a change of critical alerts is audited.
        self.health: str | None = None
        self.critical: frozenset[str] = frozenset()

    def close(self, code: int, reason: str) -> Any:
        """Close the socket (``reason`` is also the disconnect's audit reason)."""
        if not self.ended:
            self.ended = reason
        return self._close(code, reason)


class Presence:
    """Who is connected to this node. ``last_seen`` reaches the database in batches,
    so 10,000 heartbeating agents cost one write every flush, not 333 a second."""

    def __init__(self) -> None:
        self._by_id: dict[str, Connected] = {}
        self._flushed_at = 0.0

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, agent_id: str) -> Connected | None:
        return self._by_id.get(agent_id)

    def add(self, conn: Connected) -> Connected | None:
        """Register ``conn``; return the older connection of the same agent, if any."""
        old = self._by_id.get(conn.agent_id)
        self._by_id[conn.agent_id] = conn
        return old

    def remove(self, conn: Connected) -> bool:
        if self._by_id.get(conn.agent_id) is conn:
            del self._by_id[conn.agent_id]
            return True
        return False

    def all(self) -> list[Connected]:
        return list(self._by_id.values())

    def flush_last_seen(self, engine: sa.Engine) -> int:
        """Write ``last_seen`` of the agents heard from since the last flush.

        While an agent is online the API answers from memory; the row matters after a
        disconnect (written then) or a crash (then it is at most one flush old)."""
        since, now = self._flushed_at, time.time()
        rows = [{"b_id": c.agent_id, "b_seen": c.last_seen, "b_addr": c.address}
                for c in self._by_id.values() if c.last_seen >= since]
        self._flushed_at = now
        if not rows:
            return 0
        stmt = (agents.update().where(agents.c.id == sa.bindparam("b_id"))
                .values(last_seen=sa.bindparam("b_seen"), last_address=sa.bindparam("b_addr")))
        with writing(engine) as conn:
            conn.execute(stmt, rows)
        return len(rows)
