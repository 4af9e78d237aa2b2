"""Agents: list, show, rename or move, ping, revoke."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backline.relay import agents, users
from backline.relay.api import models as m
from backline.relay.api.edge import (
    Ok,
    endpoint,
    reply,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
)


def visible_group_ids(relay: Relay, who: Principal) -> set[int] | None:
    return users.granted_group_ids(relay.engine, who.user)


def agent_for(request: Request, relay: Relay, who: Principal, acting: bool) -> dict[str, Any]:
    """The agent named in the path (checked by the route's path model), if ``who`` may
    see (and act on) it."""
    return agent_by_id(relay, who, request.path_params["agent_id"], acting)


def agent_by_id(relay: Relay, who: Principal, agent_id: str, acting: bool) -> dict[str, Any]:
    """The agent ``agent_id``, if ``who`` may see (and act on) it; refusals audited."""
    agent = agents.get_agent(relay.engine, relay.presence, agent_id[:64])
    if agent is None:
        raise ApiError(404, "not_found", "no such agent")
    allowed = visible_group_ids(relay, who)
    if who.user.role == "auditor" and acting:
        allowed = set()
    if allowed is not None and agent["group_id"] not in allowed:
        raise ApiError(403, "forbidden", "that agent is not in a group you are granted",
                       action="agent.access.refused", target=f"agent:{agent['id']}",
                       metric="group_forbidden", reason="group_not_granted",
                       group=agent["group"])
    return agent


AGENT = {"path": m.AgentPath, "noun": "agent"}


@endpoint("agents:read", query=m.AgentQuery, answers={200: m.Agents})
async def list_agents(request: Request, relay: Relay, who: Principal, *,
                      query: m.AgentQuery) -> Response:
    """Agents you may see; filter with ?group=, ?status=online|offline and ?q=text."""
    rows = agents.list_agents(relay.engine, relay.presence, visible_group_ids(relay, who))
    group = query.group
    status = query.status
    text = query.q.lower()
    if group:
        rows = [a for a in rows if a["group"] == group]
    if status in ("online", "offline"):
        rows = [a for a in rows if a["online"] == (status == "online")]
    if text:
        rows = [a for a in rows if any(text in str(a[k]).lower() for k in
                                       ("id", "hostname", "os", "label", "group"))]
    return reply(m.Agents, {"agents": rows})


@endpoint("agents:read", **AGENT, answers={200: m.Agent})
async def get_agent(request: Request, relay: Relay, who: Principal, *,
                    path: m.AgentPath) -> Response:
    """One agent with everything it reported."""
    return reply(m.Agent, agent_by_id(relay, who, path.agent_id, acting=False))


@endpoint("agents:write", **AGENT, body=m.AgentPatch, answers={200: m.Agent})
async def patch_agent(request: Request, relay: Relay, who: Principal, *, path: m.AgentPath,
                      body: m.AgentPatch) -> Response:
    """Set an agent's label (a name technicians give it)."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    label = body.label
    agents.update_agent(relay.engine, agent["id"], label=label)
    relay.record(who.actor, "agent.label", f"agent:{agent['id']}", label=label,
                 address=who.address)
    relay.bus.publish({"type": "agent", "agent_id": agent["id"], "group_id": agent["group_id"],
                       "changed": {"label": label}})
    return reply(m.Agent, agents.get_agent(relay.engine, relay.presence, agent["id"]))


@endpoint("agents:write", **AGENT, answers={200: m.Ping}, refuses=(409, 504))
async def ping_agent(request: Request, relay: Relay, who: Principal, *,
                     path: m.AgentPath) -> Response:
    """Round trip over the agent's control socket, in milliseconds."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    conn = relay.presence.get(agent["id"])
    if conn is None:
        raise ApiError(409, "offline", "the agent is offline")
    from backline.relay.control import ping

    rtt = await ping(relay, conn)
    relay.record(who.actor, "agent.ping", f"agent:{agent['id']}", rtt_ms=rtt,
                 address=who.address)
    if rtt is None:
        raise ApiError(504, "timeout", "the agent did not answer within 10 s")
    return reply(m.Ping, {"rtt_ms": rtt})


@endpoint("groups:write", **AGENT)
async def revoke_agent(request: Request, relay: Relay, who: Principal, *,
                       path: m.AgentPath) -> Response:
    """Revoke an agent: it can no longer connect, and is disconnected now."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    agents.update_agent(relay.engine, agent["id"], revoked_at=time.time())
    conn = relay.presence.get(agent["id"])
    if conn is not None:
        await conn.close(4003, "revoked")
    relay.record(who.actor, "agent.revoke", f"agent:{agent['id']}", address=who.address)
    await relay.sessions.close_matching("agent_revoked", who.actor, agent_id=agent["id"])
    return reply(Ok, {})


ROUTES = [
    Route("/api/v1/agents", list_agents, methods=["GET"]),
    Route("/api/v1/agents/{agent_id}", get_agent, methods=["GET"]),
    Route("/api/v1/agents/{agent_id}", patch_agent, methods=["PATCH"]),
    Route("/api/v1/agents/{agent_id}", revoke_agent, methods=["DELETE"]),
    Route("/api/v1/agents/{agent_id}/ping", ping_agent, methods=["POST"]),
]
