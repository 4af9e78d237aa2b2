"""The audit-event catalogue: every action the relay records, what it means, its fields.

One declaration per action, grouped as the trail's readers think of them (as Teleport's
``lib/events/api.go`` names each event and its fields). :meth:`Relay.record` (and
``record_soon``, ``record_flood``) checks each event against it before it is written: an
action that is not here, a field not declared for it, a required field missing or a value
of the wrong type is a programming error. ``docs/audit-events.md`` is generated from this
module (``backline-relay audit events > docs/audit-events.md``) and a unit test fails when
the committed file is out of date, or when a literal action recorded anywhere in
``relay/`` is not declared here.

Adding an action is one declaration in its group below, e.g.::

    event("recording.played", CHANNELS, "a finished recording was replayed in the console",
          SESSION, need("sha256", str, "the recording's SHA-256"), ADDRESS)

``need`` is a field always present, ``may`` one that can be absent; the type is what
``isinstance`` checks (``int | None``: present, maybe null; a number is ``NUMBER``);
``flood=True`` when it is recorded through ``record_flood``, so that its trail may also
hold aggregated rows (:data:`FLOOD_SUMMARY`). A new field of an existing action is one
``may(...)`` (or ``need(...)``) line in its declaration. Shared fields keep declarations
short: refusals answered through :class:`~backline.relay.webauth.ApiError` carry
``*API_REFUSAL``, a browser socket's ``<name>.refused`` (the gate,
relay/api/browser_socket.py) carries ``*BROWSER_SOCKET_REFUSAL``. Build actions from
literals (``"a.refused" if x else "b.refused"``), never f-strings: the unit test can read
literals, and a reader can grep them.

What a violation does. With ``BACKLINE_AUDIT_STRICT=1`` (set by ``tests/conftest.py``, so
every test, and every relay process the tests start, runs with it) it raises
:class:`UncataloguedEvent`, and the log gets an ``audit catalogue violation`` line that
the test harness looks for when a relay stops (a raise inside a socket's task or a timer
is only logged). In production it does not raise: the error is logged and the event is
still written, with an ``uncatalogued`` field saying what was wrong. Raising there would
turn a refusal into a 500 and, worse, lose the event: an audit trail that drops what it
cannot describe is worse than one that says "this one is not in the catalogue".
"""

from __future__ import annotations

import logging
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, get_args

log = logging.getLogger("backline.relay.audit")

#: Set to ``1`` (tests) to raise on a violation instead of recording it marked.
STRICT_ENV = "BACKLINE_AUDIT_STRICT"
#: The detail a violating event is written with in production: what was wrong.
MARKER = "uncatalogued"
#: A JSON number: an int or a float.
NUMBER = int | float


class UncataloguedEvent(Exception):
    """An event that does not match the catalogue (only raised in strict mode)."""


@dataclass(frozen=True)
class Field:
    name: str
    type: Any  # a class or a union of classes, for isinstance
    meaning: str
    required: bool

    @cached_property
    def classes(self) -> tuple[type, ...]:
        """``type`` as a tuple (``isinstance`` is quicker with one than with a union)."""
        return get_args(self.type) if isinstance(self.type, types.UnionType) else (self.type,)


@dataclass(frozen=True)
class Event:
    action: str
    group: str
    meaning: str
    target: str
    fields: tuple[Field, ...]
    #: Recorded through ``record_flood``: aggregated rows of it may appear.
    flood: bool = False

    @cached_property
    def by_name(self) -> dict[str, Field]:
        return {f.name: f for f in self.fields}

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)


def need(name: str, type_: Any, meaning: str) -> Field:
    """A field every event of the action carries."""
    return Field(name, type_, meaning, True)


def may(name: str, type_: Any, meaning: str) -> Field:
    """A field some events of the action carry."""
    return Field(name, type_, meaning, False)


#: Every action, by name, in declaration order.
CATALOGUE: dict[str, Event] = {}

#: The groups, in the order the document shows them, with what they hold.
GROUPS: dict[str, str] = {}


def group(name: str, about: str) -> str:
    GROUPS[name] = about
    return name


def event(action: str, group_: str, meaning: str, target: str, *fields: Field,
          flood: bool = False) -> Event:
    """Declare one action (see the module's docstring)."""
    if action in CATALOGUE:
        raise ValueError(f"audit action {action!r} is declared twice")
    if group_ not in GROUPS:
        raise ValueError(f"audit action {action!r}: no group {group_!r}")
    names = [f.name for f in fields]
    if len(set(names)) != len(names) or MARKER in names or "aggregated" in names:
        raise ValueError(f"audit action {action!r}: fields declared twice or reserved")
    spec = Event(action, group_, meaning, target, tuple(fields), flood)
    CATALOGUE[action] = spec
    return spec


# --- shared fields and targets ------------------------------------------------------

ADDRESS = need("address", str, "the client's IP address (as the relay sees it, after "
                               "`trusted_proxies`)")
ADDRESS_IF_API = may("address", str, "the client's IP address; absent when done with "
                                     "`backline-relay` on the relay's host")
REASON = need("reason", str, "a stable code saying why")
DETAIL = need("detail", str, "what went wrong, in words (at most 200 characters)")
#: Every refusal audited through ``ApiError`` (relay/webauth.py ``audit_refusal``).
API_REFUSAL = (
    need("reason", str, "the error code answered (`forbidden`, `bad_field`...), or a "
                        "finer reason the refusal gives"),
    need("method", str, "the HTTP method, or `WEBSOCKET`"),
    ADDRESS,
)
#: Every refusal of a browser socket's gate (relay/api/browser_socket.py ``admit``): a
#: socket's ``<name>.refused`` action is declared with these, ``flood=True``.
BROWSER_SOCKET_REFUSAL = (
    need("reason", str, "`bad_origin`, `unauthenticated`, `totp_enrolment_required`, "
                        "`forbidden` (a permission missing)"),
    ADDRESS,
    may("origin", str, "the foreign Origin sent (`bad_origin`)"),
    may("method", str, "`WEBSOCKET` (`forbidden`)"),
)
AGENT_ID = need("agent", str, "the agent's id")
CAPABILITY = need("capability", str, "the capability's name (`info`, `diagnostics`...)")

SESSION = "`session:ID`"
AGENT = "`agent:ID`"
USER = "`user:NAME` (the account itself)"
PATH = "the request path"
RELAY = "`relay`"

#: The fields of an aggregated row (relay/audit_floods.py): it has the action of what
#: it counts, ``aggregated: true``, and these instead of the action's own fields.
FLOOD_SUMMARY = (
    need("aggregated", bool, "always `true`: this row counts events, it is not one"),
    need("count", int, "how many events of this action from this source were counted"),
    need("source", str, "whose they were: an address (an IPv6 /64 as one), an agent, a "
                        "user; `*` when more sources than the table holds flooded at once"),
    need("first", NUMBER, "Unix time of the first one counted"),
    need("last", NUMBER, "Unix time of the last one counted"),
    need("window_s", NUMBER, "the window they were counted in (`audit_flood_window_s`)"),
    need("reasons", dict, "their `reason`s and how often each came (at most 10 kept)"),
    need("addresses", dict, "their `address`es and how often each came (at most 10 kept)"),
)

#: The summary as an event (not in the catalogue), for the check.
_SUMMARY = Event("", "", "", "", FLOOD_SUMMARY, flood=True)

AUTH = group("auth", "Signing in and out, passwords, second factors, API tokens in use, "
                     "and the console's live socket.")
USERS = group("users", "Accounts, groups and what they are granted, enrollment tokens and "
                       "API tokens.")
AGENTS = group("agents", "Agents enrolling, connecting and leaving, their health, and what "
                         "technicians do to them.")
SESSIONS = group("sessions", "Support sessions: opening, attended-session codes, the "
                             "customer's consent, the tunnel, closing.")
CHANNELS = group("channels", "What runs inside a session: one SSH channel per capability, "
                             "and what is kept of it.")
FIXES = group("fixes", "Approved fixes (docs/fixes-relay.md): the catalogue, four-eyes "
                       "approval, signatures, revocations, and every run, each with the "
                       "manifest's `digest`.")
AUDIT = group("audit", "Exporting the trail itself.")
SYSTEM = group("system", "The relay process: set-up, start and stop, TLS, webhooks.")
EXPORT = group("export", "Streaming the trail to a SIEM, retention of recordings and "
               "reports, legal holds (docs/siem-and-retention.md).")
FLOODS = group("floods", "Refusals at the edge that anyone can repeat at will (connections, "
                         "requests, sockets): recorded through the flood aggregation, so "
                         "past the first few a minute per source they come as aggregated "
                         "rows.")

# --- auth ---------------------------------------------------------------------------

event("auth.login", AUTH, "a user signed in (a browser session began)", USER,
      ADDRESS, need("totp", bool, "whether a second factor was checked"))
event("auth.login.failed", AUTH, "a sign-in was refused: wrong username, password or code",
      "`user:NAME` (the name given)", *API_REFUSAL, flood=True)
event("auth.login.rate_limited", AUTH, "a sign-in was refused unread: an attempt limit "
      "was reached", "`user:NAME` (the name given)",
      need("reason", str, "which limit was reached (`account`, `address`, `device`...), "
                          "or why the password check could not run"),
      ADDRESS, flood=True)
event("auth.logout", AUTH, "a user ended their browser session", "the actor", ADDRESS)
event("auth.password.changed", AUTH, "a user replaced their password", "the actor", ADDRESS,
      need("other_sessions_ended", int, "the account's other browser sessions signed out"))
event("auth.password.refused", AUTH, "a password change was refused: the current password "
      "was wrong", "the actor", *API_REFUSAL)
event("auth.reauth.rate_limited", AUTH, "a signed-in user's password or code check was "
      "refused unread: too many wrong ones", "the actor",
      need("reason", str, "which limit (`user`), or `busy`"), ADDRESS, flood=True)
event("auth.totp.begin", AUTH, "a user started enrolling an authenticator (a new secret)",
      "the actor", ADDRESS)
event("auth.totp.enabled", AUTH, "a user finished enrolling an authenticator", "the actor",
      ADDRESS)
event("auth.totp.refused", AUTH, "enrolling or replacing an authenticator was refused "
      "(a wrong code, or a replacement without password and code)", "the actor",
      *API_REFUSAL)
event("api_token.use", AUTH, "a request or socket authenticated with an API token", PATH,
      need("method", str, "the HTTP method, or `WEBSOCKET`"), ADDRESS)
event("api_token.refused", AUTH, "a bearer token was refused (unknown, forged, expired, "
      "revoked, outside its CIDRs, or its owner disabled)", PATH, *API_REFUSAL, flood=True)
event("live.refused", AUTH, "the console's live-updates socket (`/api/v1/live`) was refused",
      "`/api/v1/live`", *BROWSER_SOCKET_REFUSAL, flood=True)

# --- users --------------------------------------------------------------------------

event("user.create", USERS, "an account was created", "`user:NAME`",
      need("role", str, "its role"), ADDRESS_IF_API)
event("user.update", USERS, "an account's role, disabled flag or TOTP requirement changed "
      "(only the changed ones are present)", "`user:NAME`",
      may("role", str, "the new role"), may("disabled", bool, "disabled or enabled again"),
      may("totp_required", bool, "whether a second factor is required"), ADDRESS)
event("user.reset_password", USERS, "an account got a new one-time password "
      "(`backline-relay user reset-password`)", "`user:NAME`")
event("group.create", USERS, "a group of agents was created", "`group:NAME`", ADDRESS_IF_API)
event("group.grant", USERS, "a technician was granted a group", "`group:ID`",
      need("user", str, "the username granted"), ADDRESS_IF_API)
event("group.ungrant", USERS, "a technician's grant of a group was withdrawn", "`group:ID`",
      need("user", str, "the username"), ADDRESS)
event("enroll_token.create", USERS, "an enrollment token was made", "`enroll_token:ID`",
      need("group", str, "the group its agents join"),
      need("uses", int, "how many enrollments it allows"),
      need("ttl", str, "its lifetime as given (`1h`, `7d`)"), ADDRESS_IF_API)
event("enroll_token.revoke", USERS, "an enrollment token was revoked", "`enroll_token:ID`",
      ADDRESS_IF_API)
event("enroll_token.refused", USERS, "making or revoking an enrollment token was refused "
      "(a group not granted)", "`group:NAME` or `enroll_token:ID`", *API_REFUSAL)
event("api_token.create", USERS, "an API token was made", "`api_token:ID`",
      need("name", str, "its name"), need("scopes", list, "its permissions"),
      need("ttl", str, "its lifetime as given"),
      need("allowed_cidrs", list, "the networks it may be used from (empty: any)"), ADDRESS)
event("api_token.create.refused", USERS, "an API token asking for permissions its maker "
      "does not hold was refused", "the actor", *API_REFUSAL,
      need("scopes", list, "the permissions asked for and not held"))
event("api_token.revoke", USERS, "an API token was revoked", "`api_token:ID`", ADDRESS)

# --- agents -------------------------------------------------------------------------

event("agent.enroll", AGENTS, "an agent enrolled with a token", AGENT,
      need("enroll_token", str, "the token's id"), need("group", str, "the group it joined"),
      ADDRESS, need("hostname", str, "the host name it reported"),
      need("os", str, "its operating system"), need("arch", str, "its architecture"))
event("agent.enroll.refused", AGENTS, "an enrollment was refused (bad frame, bad signature, "
      "a token forged, used up, expired or revoked, or a silent socket)",
      "`enroll_token:ID` when known, else empty", REASON, DETAIL, ADDRESS,
      may("hostname", str, "the host name it reported"), flood=True)
event("agent.auth.refused", AGENTS, "an agent's control-socket sign-in was refused "
      "(unknown or revoked agent, bad signature, silence)", "`agent:ID` when named, else empty",
      REASON, DETAIL, ADDRESS, flood=True)
event("agent.connect", AGENTS, "an enrolled agent's control socket authenticated", AGENT,
      ADDRESS, need("version", str, "the agent's version"))
event("agent.disconnect", AGENTS, "an agent's control socket ended", AGENT,
      need("reason", str, "why: `closed` (the agent left), `revoked`, `replaced`, "
                          "`idle timeout`, `protocol error: CODE`, `relay shutdown`"),
      ADDRESS)
event("agent.protocol_error", AGENTS, "an agent (or a stranger on an agent's socket) broke "
      "the protocol or RFC 6455; the socket was closed", "`agent:ID`, or the path",
      REASON, DETAIL, ADDRESS, may("close_code", int, "the WebSocket close code sent"),
      flood=True)
event("agent.health.alert", AGENTS, "an agent's set of critical health alerts changed",
      AGENT, need("reason", str, "`critical`"), need("alerts", list, "every alert's id"),
      need("critical", list, "the critical alerts' ids"), flood=True)
event("agent.health.cleared", AGENTS, "an agent's critical health alerts all cleared", AGENT,
      need("reason", str, "`cleared`"), need("cleared", list, "the ids that cleared"),
      flood=True)
event("agent.label", AGENTS, "a technician set an agent's label", AGENT,
      need("label", str, "the new label"), ADDRESS)
event("agent.ping", AGENTS, "a technician pinged an agent over its control socket", AGENT,
      need("rtt_ms", NUMBER | None, "the round trip in ms; null when it timed out"), ADDRESS)
event("agent.revoke", AGENTS, "an agent was revoked (its sockets closed, sessions ended)",
      AGENT, ADDRESS)
event("agent.access.refused", AGENTS, "a user asked for an agent in a group they are not "
      "granted", AGENT, *API_REFUSAL, need("group", str, "the agent's group"))

# --- sessions -----------------------------------------------------------------------

_SESSION_END = (
    need("reason", str, "why: `technician`, `customer`, `idle`, `max_duration`, "
                        "`agent_closed`, `revoked`, `relay_shutdown`, `relay_restart`..."),
    may("agent", str, "the agent's id (or the attended session's principal); absent "
                      "for `relay_restart`"),
    may("mode", str, "`managed` or `attended`; absent for `relay_restart`"),
    may("channels", int, "how many channels ran; absent for `relay_restart`"),
    may("duration_s", NUMBER, "seconds since it opened; absent for `relay_restart`"),
    may("detail", str, "more about the reason, in words"),
)

event("session.open", SESSIONS, "a technician opened a managed session (the agent is "
      "dialled)", SESSION, AGENT_ID, need("mode", str, "`managed`"),
      need("reason", str, "why, as the technician wrote it"),
      need("ticket", str, "the ticket reference given"),
      need("capabilities", list, "the capabilities asked for"), ADDRESS)
event("session.open.failed", SESSIONS, "a session ended before it was ready (dial failed or "
      "timed out, SSH failed, declined, consent timed out...)", SESSION, *_SESSION_END)
event("session.start", SESSIONS, "a session's SSH connection is ready", SESSION, AGENT_ID,
      need("mode", str, "`managed` or `attended`"),
      need("setup_ms", NUMBER, "ms from opening to ready"),
      need("cert_serial", str, "the serial of the SSH certificate issued for it"),
      need("cert_valid_before", int, "when that certificate expires (Unix time)"),
      need("tunnel_address", str, "the address the agent's tunnel came from"))
event("session.end", SESSIONS, "a ready session ended", SESSION, *_SESSION_END)
event("session.code.create", SESSIONS, "a technician made an attended-session code", SESSION,
      need("reason", str, "why"), need("ticket", str, "the ticket reference"),
      need("capabilities", list, "the capabilities asked for"),
      need("expires_at", NUMBER, "when the code expires (Unix time)"), ADDRESS)
event("session.code.withdraw", SESSIONS, "an unused attended-session code was withdrawn",
      SESSION, ADDRESS)
event("session.join", SESSIONS, "a customer's agent joined with a right code", SESSION,
      need("principal", str, "the attended session's principal"),
      need("technician", str, "who made the code"),
      need("hostname", str, "the host name it reported"), need("os", str, "its OS"), ADDRESS)
event("session.join.refused", SESSIONS, "a join was refused (malformed, wrong, used or "
      "expired code, silence)", "`session-code`", REASON, ADDRESS,
      may("detail", str, "what went wrong, in words"),
      may("hostname", str, "the host name it reported"), flood=True)
event("session.join.rate_limited", SESSIONS, "a join was refused unread: too many wrong codes",
      "`session-code`", need("reason", str, "which limit"), ADDRESS, flood=True)
event("session.join.protocol_error", SESSIONS, "a joined customer's agent broke the protocol; "
      "the session ends", SESSION, REASON, DETAIL, ADDRESS, flood=True)
event("session.join.accepted", SESSIONS, "the customer said yes", SESSION)
event("session.join.declined", SESSIONS, "the customer said no", SESSION)
event("session.tunnel.refused", SESSIONS, "an agent's tunnel socket was refused (no session "
      "waiting for it, a bad token, a bad frame, silence)", SESSION, REASON, ADDRESS,
      may("detail", str, "what went wrong, in words"), flood=True)
event("session.agent.refused", SESSIONS, "an agent spoke for a session that is not its own",
      SESSION, REASON, need("message", str, "the message type it sent"), flood=True)
event("session.access.refused", SESSIONS, "a user asked for a session they may not see or "
      "use", SESSION, *API_REFUSAL)

# --- channels -----------------------------------------------------------------------

event("session.channel", CHANNELS, "a capability's channel finished (run to the end, or cut "
      "at the size limit)", SESSION, CAPABILITY, AGENT_ID,
      need("exit_status", int | None, "the channel's exit status; null when cut"),
      need("bytes", int, "bytes of output received (kept)"),
      need("sha256", str, "the SHA-256 of that output"),
      may("duration_ms", NUMBER, "how long it ran"),
      may("truncated", bool, "whether the output was cut at the limit"),
      may("limit", int, "the limit it was cut at"),
      may("bytes_kept", int, "bytes kept when cut"),
      may("bytes_dropped", int, "bytes that arrived past the limit before the close"),
      may("streamed", bool, "run through the console's stream socket (not REST)"),
      may("terminal", str, "the terminal's id (`shell`)"),
      may("recording", str, "the id of its recording (`shell`)"),
      may("recording_bytes", int, "the size of that recording (`shell`)"),
      may("closed_by", str, "who ended the terminal: `agent`, `console`, `session_closed` "
                            "(`shell`, `cobrowse`)"),
      may("cobrowse", str, "the co-browse's id (`cobrowse`)"),
      may("lines", int, "agent lines relayed and recorded (`cobrowse`)"),
      may("dropped_lines", int, "agent lines dropped as not the contract's (`cobrowse`)"),
      may("split_snapshots", int, "rrweb events received whole in `rrweb_part` lines "
                                  "(`cobrowse`)"),
      may("split_abandoned", int, "events in `rrweb_part` lines never completed: "
                                  "interrupted, out of order, too large, too slow "
                                  "(`cobrowse`)"))
event("session.channel.refused", CHANNELS, "a capability's channel was refused (not in the "
      "session, a bad request, refused by the agent's policy or the customer)", SESSION,
      CAPABILITY, REASON, may("agent", str, "the agent's id"),
      may("detail", str, "what was wrong, in words"),
      may("method", str, "the HTTP method, or `WEBSOCKET` (a bad request)"),
      may("address", str, "the client's IP address (a bad request)"))
event("session.channel.failed", CHANNELS, "a capability's channel failed (could not open, "
      "timed out, the agent went away, its recording could not be written, a bad message "
      "on a terminal)", SESSION, CAPABILITY, AGENT_ID, REASON, DETAIL,
      may("terminal", str, "the terminal's id (`shell`)"),
      may("bytes", int, "output bytes relayed before it ended (`shell`)"),
      may("recording", str, "the recording kept of the terminal that failed (`shell`)"),
      may("sha256", str, "the SHA-256 of that recording"),
      may("recording_bytes", int, "that recording's size (`recording_not_filed`)"),
      may("after", str, "what had ended the terminal before the recording failed"),
      may("cobrowse", str, "the co-browse's id (`cobrowse`)"),
      may("lines", int, "agent lines relayed and recorded (`cobrowse`)"),
      may("dropped_lines", int, "agent lines dropped as not the contract's (`cobrowse`)"),
      may("split_snapshots", int, "rrweb events received whole in `rrweb_part` lines "
                                  "(`cobrowse`)"),
      may("split_abandoned", int, "events in `rrweb_part` lines never completed: "
                                  "interrupted, out of order, too large, too slow "
                                  "(`cobrowse`)"))
event("recording.stored", CHANNELS, "a channel's recording was kept as a blob (a "
      "terminal's asciicast v2, a co-browse's agent JSON lines)", SESSION,
      need("recording", str, "the recording's id"), CAPABILITY,
      need("sha256", str, "the SHA-256 of the recording file"),
      need("bytes", int, "its size"), need("duration_s", NUMBER, "how long it lasted"),
      need("keystrokes", bool, "whether input was recorded too (`record_keystrokes`)"))
event("recording.played", CHANNELS, "a recording was fetched to be replayed in the console",
      "`recording:ID`", need("session", str, "the session's id"),
      need("sha256", str, "the SHA-256 it was checked against"),
      need("bytes", int, "its size"), ADDRESS)
event("recording.refused", CHANNELS, "fetching a recording was refused (a session the user "
      "may not see) or failed (the stored file is damaged)", "`recording:ID`", *API_REFUSAL,
      may("session", str, "the session's id (a file the trail does not vouch for: "
                          "`digest_mismatch`, `row_altered`, `not_in_trail`)"),
      may("trail_sha256", str, "the SHA-256 the trail recorded for it"),
      may("actual_sha256", str, "what the stored file (or row) says instead"))
event("terminal.join", CHANNELS, "another console joined an open terminal (as a viewer)",
      SESSION, need("terminal", str, "the terminal's id"),
      need("role", str, "`view` (typing needs control)"))
event("terminal.control", CHANNELS, "the console in control of a terminal handed it to "
      "another", SESSION, need("terminal", str, "the terminal's id"),
      need("to", str, "the username given control"), need("by", str, "who gave it"))
event("terminal.input.dropped", CHANNELS, "a view-only console typed, resized or granted; "
      "dropped (audited once per console)", SESSION,
      need("terminal", str, "the terminal's id"), need("what", str, "what it sent"),
      need("reason", str, "`view_only`"))
event("terminal.viewer.dropped", CHANNELS, "a console was hung up from a terminal: it fell "
      "a window behind (`too_slow`), or its user's access was withdrawn; `not_closed`: "
      "hung up (or the terminal ended), it took nothing for 10 s, and its socket was "
      "aborted", SESSION,
      need("terminal", str, "the terminal's id"), REASON,
      need("role", str, "`control` or `view`"),
      may("user", str, "whose access was withdrawn"))
COBROWSE = need("cobrowse", str, "the co-browse's id (`cb_...`)")
ROLE = need("role", str, "`control` (the session's technician) or `watch` (`?watch=1`)")
event("cobrowse.consent", CHANNELS, "the customer answered a co-browse question in the "
      "agent's own window (to view, to let the technician control, or to open an address the "
      "technician proposed without control)", SESSION, COBROWSE,
      need("what", str, "`view`, `control` or `propose_url`"),
      need("answer", str, "`yes`, `no` or `timeout`"))
event("cobrowse.control.requested", CHANNELS, "the technician asked the customer for control "
      "of the co-browsed page", SESSION, COBROWSE)
event("cobrowse.control.granted", CHANNELS, "the agent said the customer granted control: the "
      "technician's input goes on from now", SESSION, COBROWSE)
event("cobrowse.control.revoked", CHANNELS, "control ended: the agent said it was revoked "
      "(the customer), or the technician released it", SESSION, COBROWSE,
      need("before", str, "the control state before"),
      may("by", str, "`technician` when the technician released it"))
event("cobrowse.url.proposed", CHANNELS, "the technician proposed a URL to the customer's "
      "co-browse window (scheme, host and path only: a query may carry a token)", SESSION,
      COBROWSE, need("url", str, "scheme://host/path, at most 300 characters"))
event("cobrowse.navigated", CHANNELS, "the co-browsed page moved to another URL (the agent's "
      "word; scheme, host and path only)", SESSION, COBROWSE,
      need("url", str, "scheme://host/path, at most 300 characters"))
event("cobrowse.message.refused", CHANNELS, "a console's co-browse frame was refused and not "
      "sent to the agent (malformed, from a watcher, input without control, over the rate, "
      "the agent not taking any); audited once per console and reason for floods", SESSION,
      COBROWSE, REASON, ROLE, DETAIL, may("what", str, "the message's type"))
event("cobrowse.agent_line.dropped", CHANNELS, "the agent sent a co-browse line that is not "
      "one of the contract's (not JSON, unknown type, over 1 MiB): dropped, neither shown "
      "nor recorded; audited for the first, counted in `session.channel`", SESSION,
      COBROWSE, REASON, need("bytes", int, "the line's size"))
event("cobrowse.viewer.dropped", CHANNELS, "a console was hung up from a co-browse: it fell "
      "too far behind (`too_slow`), or its user's access was withdrawn; `not_closed`: hung "
      "up (or the co-browse ended), it took nothing for 10 s, and its socket was aborted",
      SESSION, COBROWSE,
      REASON, ROLE, may("user", str, "whose access was withdrawn"))
event("cobrowse.join", CHANNELS, "a console joined an open co-browse to watch (`?watch=1`)",
      SESSION, COBROWSE, ROLE)
event("session.stream.refused", CHANNELS, "the console's stream socket for a capability was "
      "refused at the browser-socket gate, or asked something it cannot", "the socket's path",
      *BROWSER_SOCKET_REFUSAL,
      may("capability", str, "the capability asked for (e.g. `terminal=` on one that is not "
          "a terminal)"), flood=True)
event("diagnostics.report", CHANNELS, "a finished diagnostics run was kept as a report",
      AGENT, need("report", str, "the report's id"), need("session", str, "the session's id"),
      need("sha256", str, "the SHA-256 of the kept stream"),
      need("findings", int, "how many findings"),
      need("worst", str, "the worst severity found, or `none`"))
event("diagnostics.report.refused", CHANNELS, "a diagnostics stream was not kept (too large "
      "or not a whole report)", AGENT, need("session", str, "the session's id"),
      need("reason", str, "`too_large` or `malformed`"),
      may("bytes", int, "its size (too large)"), may("error", str, "what was malformed"))

# --- fixes --------------------------------------------------------------------------

FIX = "`fix:ID@VERSION`"
DIGEST = need("digest", str, "the manifest's digest (`sha256:...` of its canonical bytes): "
                             "exactly which version")
FIX_WHERE = (may("address", str, "the client's IP address; absent when done with "
                                 "`backline-relay` on the relay's host"),
             may("method", str, "the HTTP method (`POST`), absent from the CLI"))
FIX_REFUSAL = (REASON, may("digest", str, "the manifest's digest, when there is one"),
               may("detail", str, "what was wrong, in words"), *FIX_WHERE)
RUN = need("run", str, "the run's id (`fr_...`, `GET /api/v1/fix-runs/{id}`)")
RUN_FIELDS = (DIGEST, RUN, need("session", str, "the session it runs in"), AGENT_ID)

event("fix.submitted", FIXES, "a new fix version was submitted (it needs an approval)", FIX,
      DIGEST, need("author", str, "who submitted it (the only one who may not approve it)"),
      need("source", str, "`api`, `cli` or `library` (the shipped starter library)"),
      need("risk", str, "`low`, `medium` or `high`"), *FIX_WHERE)
event("fix.submit.refused", FIXES, "a fix version was not taken (it exists: versions are "
      "immutable; or its manifest is invalid)", FIX, *FIX_REFUSAL)
event("fix.approved", FIXES, "an approver who is not the author approved one version: the "
      "relay signed its canonical bytes with its fix key", FIX, DIGEST,
      need("approver", str, "who approved"), need("author", str, "who submitted it"),
      need("key", str, "the fix key's fingerprint (`SHA256:...`)"), *FIX_WHERE)
event("fix.approve.refused", FIXES, "an approval was refused (`self_approval`: the author "
      "approving their own version; `revoked`, `already_approved`, `damaged`)", FIX,
      *FIX_REFUSAL, may("approver", str, "who asked"), may("author", str, "who submitted it"))
event("fix.signature.added", FIXES, "an offline approver's signature (a key the relay never "
      "holds, one of `fix_offline_keys`) was added to a version", FIX, DIGEST,
      need("key", str, "the signer's fingerprint"), need("kind", str, "`offline`"),
      *FIX_WHERE)
event("fix.signature.refused", FIXES, "an offline signature was refused (not by a configured "
      "key, not over this version, malformed, a duplicate)", FIX, *FIX_REFUSAL)
event("fix.revoked", FIXES, "a version was revoked (never lifted); the signed list was sent "
      "to the agents that take it", FIX, DIGEST,
      need("serial", int, "the revocation list's new serial"),
      need("why", str, "the reason given"),
      need("agents_sent", int, "online agents the new list (or its announcement) was sent "
                               "to"),
      may("delivery", str, "`control`: the list rode in the control message; `fetch`: it "
                           "is too long for one frame, so the message announced it and "
                           "agents fetch it from `GET /agent/fix-revocations`"), *FIX_WHERE)
event("fix.revoke.refused", FIXES, "a revocation was refused (`already_revoked`; "
      "`too_many`: the list holds as many entries as agents accept)", FIX,
      *FIX_REFUSAL)
event("fix.run.requested", FIXES, "a technician asked for a fix to run on an agent (the "
      "request was sent to it)", SESSION, *RUN_FIELDS, need("fix", str, "`ID@VERSION`"),
      need("params", list, "the names of the parameters given (their values are in the run "
                           "record)"),
      may("finding", str, "the diagnostics rule it was run for"),
      may("bulk", str, "the bulk run it is part of"),
      may("sent_digest", str, "the digest of what was sent, when it differs from `digest` "
                            "(the stored manifest no longer matches its approval)"))
event("fix.run.damaged", FIXES, "the relay found the stored version damaged when asked to run "
      "it (it no longer parses, or no longer has the digest it was submitted and approved "
      "under); the request is still sent unchanged, so that the agent, the authority, "
      "refuses it (`fix.run.refused` side `agent`)", SESSION, *RUN_FIELDS, REASON,
      need("fix", str, "`ID@VERSION`"), DETAIL,
      need("sent_digest", str, "the digest of what was sent (`unparsable` when it no "
                               "longer parses)"),
      may("bulk", str, "the bulk run it is part of"))
event("fix.run.refused", FIXES, "a fix run was refused, by the relay (not approved, revoked, "
      "bad parameters, no `fixes:run`) or by the agent (`side`: `agent`; its reason: "
      "`bad_signature`, `digest_mismatch`, `revoked`, `platform`, `params`, `consent`, "
      "`policy`, `agent_error`: it could not prepare the run...)", SESSION, REASON,
      need("side", str, "`relay` or `agent`"),
      may("digest", str, "the manifest's digest"), may("run", str, "the run's id"),
      may("agent", str, "the agent's id"), may("fix", str, "`ID@VERSION` asked for"),
      may("detail", str, "what was wrong, in words"), may("bulk", str, "the bulk run"),
      *FIX_WHERE)
event("fix.run.consent", FIXES, "the customer answered the agent's consent prompt", SESSION,
      *RUN_FIELDS, need("answer", str, "`yes`"))
event("fix.run.started", FIXES, "the agent started the fix script", SESSION, *RUN_FIELDS,
      may("pid", int, "the script's process id on the agent"))
event("fix.run.ended", FIXES, "a fix run ended: what ran, how it ended, and the kept output",
      SESSION, *RUN_FIELDS,
      need("exit_status", int | None, "the script's exit status (null: killed by a signal)"),
      need("output_sha256", str, "the SHA-256 of the kept raw output, as the agent reported "
                                 "it"),
      need("kept_bytes", int, "output bytes kept (at most the cap)"),
      need("output_bytes", int, "output bytes the script wrote in all"),
      need("verify_passed", bool | None, "the verify script's verdict (null: none)"),
      need("duration_ms", NUMBER, "how long it ran, as the agent measured it"),
      need("output_ok", bool, "whether the output the relay kept has the agent's SHA-256"),
      may("signal", str, "the signal that ended it"), may("timed_out", bool, "killed at its "
                                                                              "timeout"),
      may("cancelled", bool, "cancelled"), may("cut", bool, "output cut at the cap"),
      may("blob", str, "the SHA-256 naming the kept output blob"),
      may("bulk", str, "the bulk run it is part of"))
event("fix.run.cancelled", FIXES, "a technician cancelled a running fix", SESSION,
      *RUN_FIELDS)
event("fix.run.failed", FIXES, "a fix run failed on the relay's side (`agent_gone`, "
      "`protocol`: an agent line that breaks the contract (out of order, twice, "
      "malformed; one entry a run, the channel is closed), `digest_mismatch`: the agent's "
      "`checked` names another digest than the approved one, `output_mismatch`: the kept "
      "output does not have the agent's SHA-256, `timeout`, `cancel_unacknowledged`: the "
      "agent did not end within the bound after a cancel)", SESSION, *RUN_FIELDS, REASON,
      DETAIL, may("checked_digest", str, "the digest in the agent's `checked` line "
                  "(`digest_mismatch`)"))
event("fix.run.recheck", FIXES, "after a run from a finding, its diagnostics were run again",
      SESSION, *RUN_FIELDS, need("finding", str, "the rule"),
      need("cleared", bool | None, "whether the finding is gone (null: could not tell)"))
event("fix.bulk.started", FIXES, "a bulk run of one approved version over a group's online "
      "agents began", "`fix_bulk:ID`", DIGEST, need("fix", str, "`ID@VERSION`"),
      need("group", str, "the group"), need("total", int, "online agents it runs on"),
      need("concurrency", int, "how many at once"), *FIX_WHERE)
event("fix.bulk.agent", FIXES, "one agent's result in a bulk run (one per agent, also one "
      "that could not be reached or refused)", "`fix_bulk:ID`", DIGEST, AGENT_ID,
      need("status", str, "`ended`, `refused`, `failed` or `error`"),
      need("ok", bool, "exit status 0 and verify (if any) passed"),
      need("exit_status", int | None, "the script's exit status"),
      need("verify_passed", bool | None, "the verify script's verdict"),
      may("run", str, "the run's id"), may("error", str, "what went wrong"))
event("fix.bulk.ended", FIXES, "a bulk run ended (one `fix.run.*` trail per agent)",
      "`fix_bulk:ID`", DIGEST, need("total", int, "agents"),
      need("ok", int, "runs that ended with exit status 0 (and verify, if any, passed)"),
      need("failed", int, "the others"), need("duration_ms", NUMBER, "how long it took"))

_SELF_SERVICE = "(docs/fixes-relay.md, \"Self-service runs reported by agents\")"
event("fix.self_service.ended", FIXES, "a customer's own run of a cached fix (`backline-agent "
      "fix run`), **as the agent claims it**: the relay saw none of it, and checked only "
      "that the version and its digest are one it approved, that the report is well "
      "formed and that this run was not recorded before " + _SELF_SERVICE, AGENT, AGENT_ID,
      need("run", str, "the run's id, made by the agent (`sr_...`): recorded once per agent"),
      need("fix", str, "`ID@VERSION`"), DIGEST,
      need("exit_status", int | None, "the script's exit status (null: ended by `signal`)"),
      may("signal", str, "the signal that ended it"),
      need("timed_out", bool, "killed at its timeout"),
      need("verify_passed", bool | None, "the verify script's verdict (null: none)"),
      need("ok", bool, "exit status 0, not timed out nor signalled, verify not failed: "
                       "what the management report counts as a fix that worked"),
      need("output_sha256", str, "the SHA-256 of its output, as the agent says (the "
                                 "output itself stays on the customer's machine)"),
      need("started_at", NUMBER, "when it started, by the agent's clock"),
      need("ended_at", NUMBER, "when it ended, by the agent's clock"),
      need("clock_offset_s", NUMBER, "the relay's time at receipt minus the agent's "
                                     "`sent_at`: how far the agent's clock is behind"),
      need("started_at_relay", NUMBER, "`started_at` on the relay's clock (the report "
                                       "places the run by it)"),
      need("ended_at_relay", NUMBER, "`ended_at` on the relay's clock"), ADDRESS)
event("fix.self_service.refused", FIXES, "an agent's report of a self-service run was "
      "refused: `rate_limited` (the agent sends it again later), `unknown_version` (no "
      "such version here, or another digest: forged, or another relay's), `too_old` (sent "
      "over 30 days after the run started), or a protocol "
      "code (`bad_field`, `unknown_field`, `missing_field`, `too_large`...: the message "
      "broke its schema or size, and the control socket was closed) " + _SELF_SERVICE,
      AGENT, REASON, DETAIL, may("run", str, "the run's id, when the message was readable"),
      may("fix", str, "`ID@VERSION`, when readable"),
      may("digest", str, "the digest claimed, when readable"), ADDRESS, flood=True)

# --- audit --------------------------------------------------------------------------

event("audit.export", AUDIT, "the trail was exported as JSON lines: through the API "
      "(`GET /api/v1/audit/export`) or `backline-relay audit export` on the relay's host "
      "(recorded before the first line is written, so the export holds its own event)",
      "`audit`",
      need("since", NUMBER | None, "from when (Unix time); null: from the start"),
      may("checkpoints", bool, "the signed checkpoints were exported instead of the events "
                               "(`--checkpoints`)"),
      may("output", str, "the file written (`-o`); absent: standard output, or the API"),
      ADDRESS_IF_API)

# --- proofs (issue 14, helper proofs: relay/audit_bundle.py, docs/audit-proofs.md) -----

PROOFS = group("proofs", "Proofs that travel: evidence bundles of a session's events and "
                         "recordings with their Merkle inclusion proofs.")
event("audit.bundle.exported", PROOFS, "a session's evidence bundle was exported (through "
      "the API, or `backline-relay audit bundle` on the relay's host)", SESSION,
      need("session", str, "the session's id"),
      need("events", int, "how many of its audit events the bundle holds"),
      need("blobs", int, "how many recordings and fix outputs it holds"),
      need("size", int, "the tree size of the checkpoint its proofs lead to"),
      ADDRESS_IF_API)
event("audit.bundle.refused", PROOFS, "a session's evidence bundle was refused: over "
      "its limit of events or of evidence bytes (the API answers 413; `backline-relay "
      "audit bundle` exits 1), or another was being built (503: they are built one at a "
      "time)", SESSION,
      need("session", str, "the session's id"),
      need("reason", str, "`too_many_events`, `too_much_evidence` or `busy`"),
      need("limit", int, "the limit (events, bytes of evidence, or bundles at once)"),
      need("amount", int, "how far it got when refused (events, bytes, or bundles "
           "being built)"),
      ADDRESS_IF_API, flood=True)
event("audit.sink.failed", PROOFS, "a checkpoint sink could not take checkpoint notes "
      "(aggregated: the first failures one by one, the rest of the minute as one)",
      "`sink:SPEC` (as configured: `file:PATH`, `syslog+tls://...`)",
      need("reason", str, "`write_failed`, `send_failed` or `queue_full`"),
      need("error", str, "the error"), flood=True)

# --- system -------------------------------------------------------------------------

event("relay.init", SYSTEM, "the relay's data directory was set up (`backline-relay init`)",
      RELAY, need("admin", str, "the first administrator's username"),
      need("url", str, "the relay's public URL"),
      need("fingerprint", str, "its TLS certificate's SHA-256"))
event("relay.start", SYSTEM, "the relay started serving", RELAY,
      need("url", str, "its public URL"), need("fingerprint", str, "its certificate's SHA-256"),
      may("clock_offset", float, "seconds the trail's clock is shifted by: only ever in a "
          "test (relay/reports/clock.py); a real trail never has it"))
event("relay.stop", SYSTEM, "the relay stopped cleanly (a signed checkpoint follows)", RELAY)
event("relay.tls_reload", SYSTEM, "the TLS certificate was loaded again (SIGHUP)", RELAY,
      need("fingerprint", str, "the certificate's SHA-256"),
      need("pins", list, "the SPKI pins now announced"),
      need("key_changed", bool, "whether the key (the first pin) changed"))
event("relay.tls_reload.refused", SYSTEM, "a TLS reload was refused; the old certificate "
      "stays", RELAY, DETAIL)
event("relay.cert_rotate", SYSTEM, "the self-signed certificate was renewed "
      "(`backline-relay cert rotate`)", RELAY,
      need("new_key", bool, "whether the next key was promoted"),
      need("fingerprint", str, "the new certificate's SHA-256"),
      need("pins", list, "the SPKI pins now announced"))
event("webhook.failed", SYSTEM, "webhook deliveries were given up or dropped",
      "the webhook URL", need("reason", str, "`no_event_loop`, `queue_full`, `shutdown`, or "
                                             "the last delivery error"),
      may("event_type", str, "the event's type"), may("event_id", str, "the delivery's id"),
      may("attempts", int, "how many times it was tried"),
      may("dropped", int, "how many deliveries were dropped"))

# --- export: SIEM streaming, retention, legal holds (helper siem) -------------------

SIEM_DEST = need("destination", str, "the destination's URL without credentials or path")
event("siem.failed", EXPORT, "a SIEM destination started failing (or is still failing, "
      "every ten minutes); retries in between are only logged", "`siem:NAME`", SIEM_DEST,
      need("reason", str, "the last delivery error"),
      need("failures", int, "failed attempts so far in this outage"),
      need("after_seq", int, "the last event delivered"), flood=True)
event("siem.recovered", EXPORT, "a failing SIEM destination took events again",
      "`siem:NAME`", SIEM_DEST, need("failures", int, "failed attempts in the outage"),
      need("down_s", NUMBER, "how long it failed"), flood=True)
event("siem.cursor_mismatch", EXPORT, "at start, a SIEM destination's cursor named an "
      "event the trail does not hold (restored from a backup behind it?): streaming "
      "resumes after the last event the trail confirms", "`siem:NAME`", SIEM_DEST,
      need("copy", str, "`table` (siem_cursors) or `file` (siem/NAME.cursor)"),
      need("cursor_seq", int, "the seq the cursor said was sent"),
      need("cursor_hash", str, "the hash the cursor said it had"),
      need("trail_hash", str, "the trail's hash at that seq (empty: past the head)"),
      need("head", int, "the trail's last seq"),
      need("resumed_after", int, "the seq streaming resumes after"))
KIND = need("kind", str, "`recording`, `diagnostics_report` or `fix_output`")
event("retention.deleted", EXPORT, "a recording's or report's content was deleted by "
      "retention (its row and digest stay)", "`recording:ID`, `report:ID` or `fix_run:ID`",
      KIND, need("id", str, "the recording's, report's or run's id"),
      need("session", str, "the session it belongs to"), AGENT_ID,
      need("sha256", str, "the SHA-256 of what was deleted, as the trail recorded it"),
      need("age_days", NUMBER, "its age when deleted"),
      need("days", NUMBER, "the retention period that applied"))
event("retention.run", EXPORT, "a retention run ended (periodic, or `backline-relay "
      "retention run`)", RELAY, need("deleted", int, "items deleted"),
      need("held", int, "items past their age kept by a legal hold"),
      need("trigger", str, "`periodic` or `cli`"))
HOLD_FIELDS = (need("hold", str, "the hold's id (`lh_...`)"),
               need("scope", str, "`session`, `agent` or `group`"),
               need("subject", str, "the held session's or agent's id, or the group's name"),
               need("reason", str, "why (the matter, the request), as given"))
event("legal_hold.placed", EXPORT, "a legal hold was placed: retention keeps what it covers",
      "`legal_hold:ID`", *HOLD_FIELDS, ADDRESS_IF_API)
event("legal_hold.lifted", EXPORT, "a legal hold was lifted: retention applies again",
      "`legal_hold:ID`", *HOLD_FIELDS, ADDRESS_IF_API)
event("legal_hold.refused", EXPORT, "placing or lifting a legal hold was refused",
      "`legal_hold:ID` or the subject", *API_REFUSAL)

# --- floods -------------------------------------------------------------------------

event("connection.refused", FLOODS, "a connection was refused at accept: a cap on "
      "connections that have not authenticated was reached", "empty",
      need("reason", str, "which cap"), ADDRESS, flood=True)
event("connection.timeout", FLOODS, "a connection that had not authenticated was closed at "
      "a deadline", "empty",
      need("reason", str, "the phase: TLS handshake, request head, body, WebSocket auth..."),
      ADDRESS, flood=True)
event("request.refused", FLOODS, "an API request was refused (the default of `ApiError`: "
      "unauthenticated, CSRF, forbidden, bad input, unknown path...)", PATH, *API_REFUSAL,
      may("origin", str, "the foreign Origin sent"), flood=True)
event("request.error", FLOODS, "a request met an unhandled error (answered with a generic "
      "500; the log has the frames)", PATH, need("method", str, "the HTTP method"),
      need("error", str, "the exception's class"), ADDRESS,
      need("started", bool, "whether the answer had begun (then the connection is cut)"),
      flood=True)
event("websocket.refused", FLOODS, "a WebSocket from a foreign Origin was refused", PATH,
      need("reason", str, "`bad_origin`"), need("origin", str, "the Origin sent"), ADDRESS,
      flood=True)
event("websocket.protocol_error", FLOODS, "a browser-side WebSocket broke RFC 6455 or a size "
      "limit; it was closed", PATH, REASON, DETAIL,
      need("close_code", int, "the close code sent"), ADDRESS, flood=True)


# --- review (helper timeline, issue 14: relay/api/timeline.py) ----------------------

REVIEW = group("review", "An auditor's review of a session: its timeline, the evidence shown "
               "in it, and searches for sessions (docs/audit-review.md).")
event("timeline.viewed", REVIEW, "someone opened a session's timeline (its first page; later "
      "pages of the same view are not recorded again)", SESSION,
      need("events", int, "events on the first page"),
      need("evidence", int, "pieces of evidence listed"),
      may("flagged", list, "the ids of the pieces shown as missing: in the trail with no "
          "record or content on the relay, or on the relay with no event of the trail "
          "(at most 50)"), ADDRESS)
event("evidence.viewed", REVIEW, "a piece of a session's evidence other than a recording "
      "(a fix run's output, a diagnostics report) was served, checked against the trail: "
      "from the timeline (`GET /api/v1/sessions/{id}/evidence/{id}`), "
      "`GET /api/v1/fix-runs/{id}/output` or `GET /api/v1/reports/{id}`", SESSION,
      need("evidence", str, "its id (`fr_...`, a report's id)"),
      need("kind", str, "`fix_output` or `diagnostics`"),
      need("sha256", str, "the SHA-256 the trail recorded and it was checked against"),
      need("bytes", int, "its size"), ADDRESS)
event("evidence.refused", REVIEW, "fetching a fix run's output or a diagnostics report was "
      "refused (by any of the paths of `evidence.viewed`): it is not the session's, or the "
      "trail does not vouch for it (`digest_mismatch`, `row_altered`, `not_in_trail`), or "
      "its content was deleted by retention (`deleted_by_retention`), or the stored file "
      "cannot be read (`damaged`)",
      SESSION, *API_REFUSAL,
      may("evidence", str, "its id"),
      may("trail_sha256", str, "the SHA-256 the trail recorded"),
      may("actual_sha256", str, "what the stored file (or row) says instead"))
event("session.search", REVIEW, "someone searched for sessions (by agent, technician, "
      "ticket, time, capability, outcome or terminal text)", "`sessions`",
      need("filters", list, "the names of the filters given (their values may be private: "
                            "only `text`'s word count is kept)"),
      may("words", int, "how many words the text search looked for"),
      need("found", int, "how many sessions were answered"), ADDRESS)
# --- reports (issue 14: session outcomes, management reports) ------------------------

REPORTS = group("reports", "Session outcomes set by technicians, and management reports "
                           "(docs/reports.md): exported, delivered on their schedule.")
event("session.outcome", REPORTS, "a closed session's outcome was set (when closing it, or "
      "later: each change is one more event, the earlier ones stay)", SESSION,
      need("outcome", str, "`resolved`, `not_resolved` or `escalated`"),
      need("note", str, "the technician's note (at most 1024 characters)"),
      need("ticket", str, "the session's ticket reference (empty: none)"),
      may("previous", str, "the outcome it replaced, when it was set before"),
      may("agent", str, "the session's agent"), ADDRESS)
event("session.outcome.refused", REPORTS, "setting a session's outcome was refused (the "
      "session is not closed yet)", SESSION, *API_REFUSAL)
REPORT_PERIOD = (need("group", str, "the group it covers (empty: all)"),
                 need("since", NUMBER, "its period's start (Unix time)"),
                 need("until", NUMBER, "its period's end (Unix time)"))
event("report.exported", REPORTS, "a management report was exported: downloaded as CSV "
      "(`GET /api/v1/management-reports/csv`) or printed as JSON by `backline-relay report "
      "show` on the relay's host", "`report`",
      need("format", str, "`csv` (the API) or `json` (the CLI)"), *REPORT_PERIOD,
      ADDRESS_IF_API)
event("report.viewed", REPORTS, "a management report was fetched to be shown (the console's "
      "page, also what it prints: `GET /api/v1/management-reports`), or what one of its "
      "numbers is made of (`.../members`)", "`report`", *REPORT_PERIOD,
      may("metric", str, "the number whose members were listed (`.../members`)"),
      may("key", str, "its key (a technician, a finding, a trend bucket; empty: none)"),
      ADDRESS)
event("report.delivered", REPORTS, "a scheduled management report was delivered (by the "
      "schedule, or `backline-relay report send`)",
      "the webhook URL or `mailto:` the recipients",
      need("via", str, "`webhook` or `smtp`"), need("group", str, "the group (empty: all)"),
      need("since", NUMBER, "its period's start"), need("until", NUMBER, "its period's end"),
      may("recipients", int, "how many e-mail recipients"),
      may("attempt", int, "the schedule's attempt that delivered it (1: the first); "
                          "absent from `report send`"),
      may("late_s", NUMBER, "seconds after its due time (a period caught up after the "
                            "relay was down, or retried, is late); absent from `report "
                            "send`"))
event("report.delivery.failed", REPORTS, "a scheduled management report could not be "
      "delivered", "the webhook URL or `mailto:` the recipients",
      need("via", str, "`webhook` or `smtp`"), DETAIL,
      may("group", str, "the group (empty: all); absent from `report send`"),
      may("since", NUMBER, "its period's start; absent from `report send`"),
      may("until", NUMBER, "its period's end; absent from `report send`"),
      may("attempt", int, "the schedule's attempt (1: the first)"),
      may("retry_in_s", NUMBER, "when the schedule tries this period again (doubling "
                                "from `report_retry_s`, at most an hour)"))
event("report.delivery.skipped", REPORTS, "periods owed to a way were not caught up: more "
      "than seven were missed (the relay was down, or deliveries failed, for that long); "
      "the newest seven are delivered", "the webhook URL or `mailto:` the recipients",
      need("via", str, "`webhook` or `smtp`"), need("group", str, "the group (empty: all)"),
      need("count", int, "how many periods were skipped"),
      need("since", NUMBER, "the first skipped period's start"),
      need("until", NUMBER, "the last skipped period's end"))


# --- checking -----------------------------------------------------------------------


def problems(action: str, details: Mapping[str, Any], *, flooding: bool = False) -> list[str]:
    """What is wrong with an event, by the catalogue (empty: nothing)."""
    spec = CATALOGUE.get(action)
    if spec is None:
        return [f"action {action!r} is not in the catalogue (relay/audit_events.py)"]
    wrong: list[str] = []
    if flooding and not spec.flood:
        wrong.append("recorded through record_flood but not declared flood=True")
    declared, required = spec.by_name, spec.required
    if details.get("aggregated") is True:
        if not spec.flood:
            wrong.append("an aggregated row of an action not declared flood=True")
        declared, required = _SUMMARY.by_name, _SUMMARY.required
    undeclared: list[str] = []
    mistyped: list[str] = []
    for name, value in details.items():
        spec_field = declared.get(name)
        if spec_field is None:
            if name != MARKER:
                undeclared.append(name)
        elif not isinstance(value, spec_field.classes):
            mistyped.append(f"{name} is {type(value).__name__}")
    if undeclared:
        wrong.append(f"undeclared fields: {', '.join(sorted(undeclared))}")
    missing = [name for name in required if name not in details]
    if missing:
        wrong.append(f"missing fields: {', '.join(missing)}")
    if mistyped:
        wrong.append(f"wrong types: {', '.join(mistyped)}")
    return wrong


def strict() -> bool:
    return os.environ.get(STRICT_ENV, "") == "1"


def checked(action: str, details: dict[str, Any], *, flooding: bool = False
            ) -> dict[str, Any]:
    """``details`` when the event fits the catalogue; otherwise the violation is logged
    and raised (strict mode) or returned marked (production: see the module's
    docstring)."""
    wrong = problems(action, details, flooding=flooding)
    if not wrong:
        return details
    text = "; ".join(wrong)
    log.error("audit catalogue violation: %r: %s", action, text)
    if strict():
        raise UncataloguedEvent(f"{action!r}: {text}")
    return {**details, MARKER: text[:500]}


# --- the document -------------------------------------------------------------------


def type_name(type_: Any) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
             dict: "object", type(None): "null"}
    if type_ is NUMBER:
        return "number"
    parts = get_args(type_) if isinstance(type_, types.UnionType) else (type_,)
    return " or ".join(names.get(p, p.__name__) for p in parts)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _field_rows(fields: tuple[Field, ...]) -> list[str]:
    rows = ["| field | type | | meaning |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | {type_name(f.type)} | {'required' if f.required else 'optional'}"
             f" | {_cell(f.meaning)} |" for f in fields]
    return rows


def markdown() -> str:
    """``docs/audit-events.md``."""
    out = [
        "# Audit events",
        "",
        "<!-- Generated from relay/audit_events.py by `backline-relay audit events`; "
        "do not edit. -->",
        "",
        "Every action the relay writes to its audit trail, with its fields. Each event "
        "also has `seq`, `time`, `actor` (`user:NAME`, `token:ID(NAME)`, `agent:ID`, "
        "`customer@ADDRESS`, `anonymous@ADDRESS`, `cli:NAME`, `system`, `relay`), "
        "`action`, `target` and the hashes of the chain ([security.md](security.md#the-"
        "audit-trail)). The fields below are its `details`. The relay checks every event "
        "against this catalogue before writing it; one that does not match (a bug) is "
        f"logged as an error and written with an `{MARKER}` field saying what was wrong.",
        "",
        "Actions marked *flood* are refusals that can be repeated at will: the first few a "
        "minute from one source are written one by one, the rest as one aggregated row of "
        "the same action (`audit_flood_window_s`, relay/audit_floods.py) with these fields "
        "instead of the action's own:",
        "",
        *_field_rows(FLOOD_SUMMARY),
        "",
    ]
    for name, about in GROUPS.items():
        events = [e for e in CATALOGUE.values() if e.group == name]
        out += [f"## {name}", "", about, ""]
        out += [f"- [`{e.action}`](#{e.action.replace('.', '')})" for e in events]
        out.append("")
        for e in events:
            out += [f"### {e.action}", "", f"{e.meaning[0].upper()}{e.meaning[1:]}."
                    + (" *Flood* (may come aggregated)." if e.flood else ""), "",
                    f"Target: {e.target}.", ""]
            out += [*_field_rows(e.fields), ""] if e.fields else ["No fields.", ""]
    return "\n".join(out).rstrip("\n") + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
