"""The sessions API: open, list, close, run capabilities, and attended codes.

Who may do what:
- open a session on an agent: ``agents:write`` and a grant on the agent's group
  (auditors never; they hold no write permission);
- see a session: ``agents:read`` and either a grant on its group or being the
  technician who opened it (admins and auditors see all);
- use a session (run capabilities, stream): only the technician it was opened for,
  because the certificate that opened it names them;
- close a session: that technician, or an admin.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from backline.common.protocol import CAPABILITY_RE
from backline.relay import agents
from backline.relay.api import models as m
from backline.relay.api.agents import agent_by_id, visible_group_ids
from backline.relay.api.browser_socket import admit
from backline.relay.api.edge import endpoint, reply, validated
from backline.relay.capabilities.base import Transport
from backline.relay.sessions.manager import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    LiveSession,
    SessionError,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
    audit_refusal,
)


def _api_error(err: SessionError) -> ApiError:
    """The API's answer to a session refusal; recorded once (where it arose, or here)."""
    return ApiError(err.status, err.code, err.detail, audited=err.audited)


def _text(value: str, name: str) -> str:
    value = value.strip()
    if any(not ch.isprintable() for ch in value):
        raise ApiError(400, "bad_field", f"{name} must be printable text on one line")
    return value


def _capabilities(asked: list[str] | None) -> tuple[str, ...]:
    caps = list(DEFAULT_CAPABILITIES) if asked is None else asked
    if not all(c in CAPABILITIES for c in caps) or len(set(caps)) != len(caps):
        raise ApiError(400, "bad_field", "capabilities is a list of distinct names from "
                                         + ", ".join(CAPABILITIES))
    return tuple(caps)


def may_see(relay: Relay, who: Principal, row: dict[str, Any]) -> bool:
    allowed = visible_group_ids(relay, who)
    return (allowed is None or row["technician"] == who.user.username
            or (row["group_id"] is not None and row["group_id"] in allowed))


def session_for(request: Request | WebSocket, relay: Relay, who: Principal, use: bool = False,
                close: bool = False) -> dict[str, Any]:
    """The session in the path, if ``who`` may see it (and use or close it)."""
    row = relay.sessions.row(request.path_params["session_id"])
    if row is None:
        raise ApiError(404, "not_found", "no such session")
    reason = ""
    if not may_see(relay, who, row):
        reason = "not_visible"
    elif use and row["technician"] != who.user.username:
        reason = "not_your_session"
    elif close and row["technician"] != who.user.username and who.user.role != "admin":
        reason = "not_your_session"
    if reason:
        raise ApiError(403, "forbidden", "only the technician who opened this session may "
                                         "use it" if reason == "not_your_session"
                       else "that session is not one you may see",
                       action="session.access.refused", target=f"session:{row['id']}",
                       metric="session_forbidden", reason=reason)
    return row


def _live(relay: Relay, row: dict[str, Any]) -> LiveSession:
    live = relay.sessions.get(row["id"])
    if live is None or live.state != "ready":
        raise ApiError(409, "not_open", f"the session is {row['state']}, not open")
    return live


SESSION = {"path": m.SessionPath, "noun": "session"}


@endpoint("agents:write", path=m.AgentPath, noun="agent", body=m.SessionOpen,
          answers={201: m.Session}, refuses=(409, 502, 504))
async def open_session(request: Request, relay: Relay, who: Principal, *,
                       path: m.AgentPath, body: m.SessionOpen) -> Response:
    """Open a support session on an agent: dial it, wait until SSH is ready (bounded).
    Body: ``{reason, ticket, capabilities}`` (all optional)."""
    agent = agent_by_id(relay, who, path.agent_id, acting=True)
    reason = _text(body.reason, "reason")
    ticket = _text(body.ticket, "ticket")
    capabilities = _capabilities(body.capabilities)
    known = agents.public_key_of(relay.engine, agent["id"])
    if known is None or agent["revoked"]:
        raise ApiError(409, "revoked", "the agent is revoked")
    try:
        row = await relay.sessions.open_managed(agent, known[0], who.user.username, who.actor,
                                                reason, ticket, capabilities, who.address)
    except SessionError as err:
        raise _api_error(err) from None
    return reply(m.Session, row, status=201)


@endpoint("agents:read", query=m.SessionQuery, answers={200: m.Sessions})
async def list_sessions(request: Request, relay: Relay, who: Principal, *,
                        query: m.SessionQuery) -> Response:
    """Sessions you may see, newest first; filter with ?state=open|waiting|closed and
    ?agent=ID; ?limit= up to 500."""
    rows = relay.sessions.rows(state=query.state or None, agent_id=query.agent or None,
                               limit=query.limit, group_ids=visible_group_ids(relay, who),
                               technician=who.user.username)
    return reply(m.Sessions, {"sessions": rows})


@endpoint("agents:read", **SESSION, answers={200: m.Session})
async def get_session(request: Request, relay: Relay, who: Principal, *,
                      path: m.SessionPath) -> Response:
    """One session: state, who opened it, why, when, how it ended."""
    return reply(m.Session, session_for(request, relay, who))


@endpoint("agents:write", **SESSION, answers={200: m.Session}, refuses=(409,))
async def close_session(request: Request, relay: Relay, who: Principal, *,
                        path: m.SessionPath) -> Response:
    """Close a session (or withdraw an unused session code)."""
    row = session_for(request, relay, who, close=True)
    live = relay.sessions.get(row["id"])
    if live is not None:
        await relay.sessions.close(live, "technician", actor=who.actor)
    elif row["state"] == "waiting" and relay.sessions.codes.withdraw(row["id"]):
        relay.record(who.actor, "session.code.withdraw", f"session:{row['id']}",
                     address=who.address)
    elif row["state"] != "closed" and row["state"] != "expired":
        raise ApiError(409, "elsewhere", "the session is held by another relay node")
    return reply(m.Session, relay.sessions.row(row["id"]))


@endpoint("agents:write", path=m.ChannelPath, noun="session", body=m.ChannelRequest,
          answers={200: m.ChannelResult}, refuses=(409, 502, 504))
async def run_channel(request: Request, relay: Relay, who: Principal, *,
                      path: m.ChannelPath, body: m.ChannelRequest) -> Response:
    """Run a capability in the session (one SSH channel) and return its output: one
    JSON value, JSON lines (a list) or text, with its size and SHA-256. Diagnostics
    take an optional body ``{"sections": [...]}``; a finished diagnostics run of a
    managed session is kept as a report (its id is in ``report``)."""
    capability = path.capability
    if not CAPABILITY_RE.fullmatch(capability):
        raise ApiError(400, "bad_field", "not a capability name")
    live = _live(relay, session_for(request, relay, who, use=True))
    _may_run(relay, who, live, capability)
    try:
        result = await relay.channels.run(live, capability, who.actor, body.model_dump(),
                                          who=who)
    except SessionError as err:
        raise _api_error(err) from None
    return reply(m.ChannelResult, result)


def _may_run(relay: Relay, who: Principal, live: LiveSession, capability: str) -> None:
    """A room that needs a permission beyond ``agents:write`` (``fix``: ``fixes:run``)."""
    needed = relay.channels.spec(capability).permission
    if needed is not None and not who.can(needed):
        raise ApiError(403, "forbidden", f"{needed} is needed to run {capability}",
                       action="session.channel.refused", target=f"session:{live.id}",
                       capability=capability)


@endpoint("agents:write", body=m.SessionOpen, answers={201: m.SessionCode})
async def create_session_code(request: Request, relay: Relay, who: Principal, *,
                              body: m.SessionOpen) -> Response:
    """Make an attended-session code (single use, short-lived) and the exact command
    the customer runs. Body: ``{reason, ticket, capabilities}`` (all optional)."""
    result = relay.sessions.codes.create(
        who.user.username, who.actor, _text(body.reason, "reason"),
        _text(body.ticket, "ticket"), _capabilities(body.capabilities), who.address)
    return reply(m.SessionCode, result, status=201)


# --- the browser's streaming socket --------------------------------------------------


async def stream_endpoint(ws: WebSocket) -> None:
    """``/api/v1/sessions/{id}/stream/{capability}``: a capability's channel on a
    browser socket. Most capabilities: their output line by line, as ``{"type":
    "line", "line": ...}`` then ``{"type": "exit", ...}``. A terminal (``shell``):
    the duplex protocol of docs/sessions.md ("The terminal") (``?cols=&rows=&term=``, or
    ``?terminal=ID`` to watch one that is open). A co-browse (``cobrowse``): JSON lines
    both ways (docs/cobrowse.md; ``?watch=1`` to watch the session's open one, seeing
    and never sending). The channel is the one runner's
    (:mod:`backline.relay.capabilities.runner`).

    Browsers can reach it: it is admitted by :mod:`backline.relay.api.browser_socket`
    (Origin, sign-in, TOTP, ``agents:write``) before accepting, like every browser
    socket."""
    relay: Relay = ws.app.state.relay
    who = await admit(ws, refused_action="session.stream.refused", permission="agents:write")
    if who is None:
        return
    capability = ws.path_params["capability"]
    watching = ws.query_params.get("terminal")
    watch = ws.query_params.get("watch")  # a co-browse's watcher: sees, never sends
    try:
        if not CAPABILITY_RE.fullmatch(capability):
            raise ApiError(400, "bad_field", "not a capability name")
        transport = relay.channels.spec(capability).transport
        misused = ("terminal= is only for a terminal" if watching is not None
                   and transport is not Transport.DUPLEX else
                   "watch=1 is only for a co-browse" if watch is not None
                   and (watch != "1" or transport is not Transport.JSON_DUPLEX) else "")
        if misused:
            # Only a terminal or a co-browse is watched: the relaxed (see, not use) check
            # below must never let another capability run. Said in words: a client's
            # mistake.
            err = ApiError(400, "bad_field", f"{misused}; {capability} is not one",
                           action="session.stream.refused", capability=capability)
            err.principal = who
            audit_refusal(relay, ws, err)
            await ws.accept()
            with contextlib.suppress(Exception):
                await ws.send_text(json.dumps({"type": "error", "error": err.code,
                                               "detail": err.detail}))
                await ws.close(4400)
            return
        # Watching a terminal needs only to see the session; running anything, to use it.
        live = _live(relay, session_for(ws, relay, who,
                                        use=watching is None and watch is None))
        _may_run(relay, who, live, capability)
    except ApiError as err:
        err.principal = who
        audit_refusal(relay, ws, err)
        await ws.close(4403 if err.status == 403 else 4400 + err.status % 100)
        return
    await ws.accept()
    try:
        try:
            await _serve(ws, relay, live, capability, who, watching)
        except SessionError as err:  # audited once, where it arose or here; said in words
            refusal = _api_error(err)
            refusal.principal = who
            refusal.action, refusal.target = "session.channel.refused", f"session:{live.id}"
            refusal.details.update(capability=capability, detail=err.detail[:200])
            audit_refusal(relay, ws, refusal)
            await ws.send_text(json.dumps({"type": "error", "error": err.code,
                                           "detail": err.detail}))
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await ws.close(1000)


async def _serve(ws: WebSocket, relay: Relay, live: LiveSession, capability: str,
                 who: Principal, watching: str | None) -> None:
    """The channel a stream socket asked for, by its room's transport."""
    spec = relay.channels.spec(capability)
    if spec.stream is not None:  # a conversational room reads its own first frame
        await spec.stream(relay.channels, ws, live, who.actor, who)
        return
    if spec.transport is Transport.DUPLEX:
        from backline.relay.capabilities import shell

        if watching is not None:
            if not m.OPAQUE_RE.fullmatch(watching):
                raise SessionError(400, "bad_field", "terminal is a terminal's id")
            await shell.join_terminal(relay.channels, ws, live, watching,
                                      who.user.username, who.actor)
        else:
            await shell.open_terminal(relay.channels, ws, live, who.user.username,
                                      who.actor, shell.pty_of(ws.query_params))
        return
    wanted = ws.query_params.get("sections")
    try:
        asked = {} if wanted is None else {"sections": wanted.split(",")[:64]}
        validated(m.ChannelRequest, asked, "parameter")
    except ApiError as err:
        raise SessionError(err.status, err.code, err.detail) from None
    request = relay.channels.request(live, capability, who.actor, asked)
    await relay.channels.stream_lines(ws, live, capability, who.actor, request)


ROUTES = [
    Route("/api/v1/agents/{agent_id}/sessions", open_session, methods=["POST"]),
    Route("/api/v1/sessions", list_sessions, methods=["GET"]),
    Route("/api/v1/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/api/v1/sessions/{session_id}", close_session, methods=["DELETE"]),
    Route("/api/v1/sessions/{session_id}/channels/{capability}", run_channel,
          methods=["POST"]),
    Route("/api/v1/session-codes", create_session_code, methods=["POST"]),
]

SOCKETS = [
    WebSocketRoute("/api/v1/sessions/{session_id}/stream/{capability}", stream_endpoint),
]
