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

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Any

import asyncssh
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from backline.common.diagnostics.request import DiagnosticsRequest, RequestError, parse_sections
from backline.common.protocol import CAPABILITY_RE
from backline.relay import agents
from backline.relay.api import models as m
from backline.relay.api.agents import agent_by_id, visible_group_ids
from backline.relay.api.browser_socket import admit
from backline.relay.api.edge import endpoint, reply, validated
from backline.relay.sessions.manager import (
    CAPABILITIES,
    DEFAULT_CAPABILITIES,
    EXIT_REFUSED,
    LiveSession,
    SessionError,
)
from backline.relay.state import Relay
from backline.relay.webauth import (
    ApiError,
    Principal,
    audit_refusal,
)

MAX_STREAM_LINE = 1024 * 1024
MAX_STREAM_BYTES = 64 * 1024 * 1024


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


def _channel_request(capability: str, data: m.ChannelRequest) -> bytes | None:
    """What is written to the channel before its input is closed: the diagnostics
    request (``{"sections": [...]}``, all when absent), nothing for the others."""
    if capability != "diagnostics":
        if data.model_fields_set:
            raise ApiError(400, "bad_field", f"{capability} takes no request body")
        return None
    try:
        return DiagnosticsRequest(parse_sections(data.sections)).encode()
    except RequestError as exc:
        raise ApiError(400, "bad_request", str(exc)) from None


def _checked_request(relay: Relay, who: Principal, live: LiveSession, capability: str,
                     data: m.ChannelRequest) -> bytes | None:
    """The channel's request, or its refusal audited as ``session.channel.refused``."""
    try:
        return _channel_request(capability, data)
    except ApiError as err:
        err.action, err.target = "session.channel.refused", f"session:{live.id}"
        err.details.update(capability=capability, detail=err.detail[:200])
        raise


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
    wanted = _checked_request(relay, who, live, capability, body)
    try:
        result = await relay.sessions.run_capability(live, capability, who.actor,
                                                     request=wanted)
    except SessionError as err:
        raise _api_error(err) from None
    return reply(m.ChannelResult, result)


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
    """``/api/v1/sessions/{id}/stream/{capability}``: a capability's output, line by
    line, as ``{"type": "line", "line": ...}`` then ``{"type": "exit", ...}``.

    Browsers can reach it: it is admitted by :mod:`backline.relay.api.browser_socket`
    (Origin, sign-in, TOTP, ``agents:write``) before accepting, like every browser
    socket."""
    relay: Relay = ws.app.state.relay
    who = await admit(ws, refused_action="session.stream.refused", permission="agents:write")
    if who is None:
        return
    capability = ws.path_params["capability"]
    try:
        if not CAPABILITY_RE.fullmatch(capability):
            raise ApiError(400, "bad_field", "not a capability name")
        live = _live(relay, session_for(ws, relay, who, use=True))
    except ApiError as err:
        err.principal = who
        audit_refusal(relay, ws, err)
        await ws.close(4403 if err.status == 403 else 4400 + err.status % 100)
        return
    await ws.accept()
    try:
        wanted = ws.query_params.get("sections")
        try:
            asked = {} if wanted is None else {"sections": wanted.split(",")[:64]}
            request = _checked_request(relay, who, live, capability,
                                       validated(m.ChannelRequest, asked, "parameter"))
        except ApiError as err:  # said in words: the page shows it
            err.principal = who
            audit_refusal(relay, ws, err)
            await ws.send_text(json.dumps({"type": "error", "error": err.code,
                                           "detail": err.detail}))
            return
        await _stream(ws, relay, live, capability, who, request)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        with contextlib.suppress(Exception):
            await ws.close(1000)


async def _stream(ws: WebSocket, relay: Relay, live: LiveSession, capability: str,
                  who: Principal, request: bytes | None) -> None:
    started = time.perf_counter()
    try:
        proc = await relay.sessions.open_channel(live, capability, who.actor, request)
    except SessionError as err:  # audited once, as the REST path does (unless it was)
        refusal = _api_error(err)
        refusal.principal = who
        audit_refusal(relay, ws, refusal)
        await ws.send_text(json.dumps({"type": "error", "error": err.code,
                                       "detail": err.detail}))
        return
    live.active_channels += 1
    live.channels += 1
    digest = hashlib.sha256()
    size = 0
    kept: list[bytes] | None = [] if capability == "diagnostics" else None
    gone = asyncio.ensure_future(_until_disconnect(ws))
    try:
        while True:
            reading = asyncio.ensure_future(proc.stdout.readline())
            done, _ = await asyncio.wait({reading, gone}, return_when=asyncio.FIRST_COMPLETED)
            if reading not in done:
                reading.cancel()
                proc.close()
                return
            try:
                line = reading.result()
            except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
                await _agent_gone(ws, relay, live, capability, who, exc)
                return
            if not line:
                break
            digest.update(line)
            size += len(line)
            if kept is not None:
                kept.append(line)
            live.touch()
            if len(line) > MAX_STREAM_LINE or size > MAX_STREAM_BYTES:
                proc.close()  # cut here, said and audited (finding 6)
                relay.record(who.actor, "session.channel", f"session:{live.id}",
                             capability=capability, agent=live.principal, exit_status=None,
                             bytes=size, sha256=digest.hexdigest(), streamed=True,
                             truncated=True, limit=MAX_STREAM_BYTES)
                await ws.send_text(json.dumps({"type": "error", "error": "too_large",
                                               "detail": "the output is too large to stream",
                                               "truncated": True, "bytes": size}))
                return
            await ws.send_text(json.dumps({"type": "line",
                                           "line": line.decode("utf-8", "replace")},
                                          ensure_ascii=False))
        await asyncio.wait_for(proc.wait_closed(), 10)
        err = await proc.stderr.read(16 * 1024) if proc.exit_status == EXIT_REFUSED else b""
    finally:
        gone.cancel()
        live.active_channels -= 1
        live.touch()
    if proc.exit_status == EXIT_REFUSED:
        refusal = relay.sessions.refusal_of(live, capability, who.actor, err)
        await ws.send_text(json.dumps({"type": "error", "error": refusal.code,
                                       "detail": refusal.detail}))
        return
    duration_ms = round((time.perf_counter() - started) * 1000, 1)
    relay.record(who.actor, "session.channel", f"session:{live.id}", capability=capability,
                 agent=live.principal, exit_status=proc.exit_status, bytes=size,
                 sha256=digest.hexdigest(), duration_ms=duration_ms, streamed=True)
    report = None
    if kept is not None and proc.exit_status == 0:
        report = relay.sessions.keep_report(live, who.actor, b"".join(kept))
    await ws.send_text(json.dumps({"type": "exit", "exit_status": proc.exit_status,
                                   "bytes": size, "sha256": digest.hexdigest(),
                                   "duration_ms": duration_ms, "report": report}))


async def _agent_gone(ws: WebSocket, relay: Relay, live: LiveSession, capability: str,
                      who: Principal, exc: BaseException) -> None:
    """The agent went away in the middle of a streamed channel: said, audited, and the
    session closed (its tunnel is gone)."""
    detail = f"{type(exc).__name__}: {exc}"[:200]
    relay.sessions.channel_failed(live, capability, who.actor, "agent_gone", detail)
    await ws.send_text(json.dumps({"type": "error", "error": "agent_gone",
                                   "detail": f"the agent went away during {capability}"}))
    if not live.closing:
        await relay.sessions.close(live, "agent_gone", detail)


async def _until_disconnect(ws: WebSocket) -> None:
    with contextlib.suppress(Exception):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


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
