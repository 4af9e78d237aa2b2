"""What the REST API accepts and answers, as pydantic models (see :mod:`.edge`).

Bounds here are the relay's rules, not decoration: a field's ``max_length``, range
or pattern is checked before any handler runs, and is what the OpenAPI document
shows. Usernames follow :data:`backline.relay.users.USERNAME_RE`, group names
:data:`~backline.relay.users.GROUP_RE`; TOTP codes are six ASCII digits.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field

from backline.relay.api.edge import Body, DbId, Params, Reply, UnixTime, whole
from backline.relay.roles import ROLES

Role = Literal["admin", "technician", "approver", "auditor"]
assert set(ROLES) == set(Role.__args__)  # type: ignore[attr-defined]

USERNAME = r"^[a-z0-9][a-z0-9._-]{0,63}$"
GROUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$"
TOTP = r"^[0-9]{6}$"
#: An id the relay made (``ag_…``, ``ss_…``, ``et_…``, hex): URL-safe, bounded.
OPAQUE_ID = r"^[A-Za-z0-9_.-]{1,64}$"
OPAQUE_RE = re.compile(OPAQUE_ID)

def _tidy(lower: bool) -> BeforeValidator:
    """Names are taken as people type them: spaces around them dropped (and usernames
    lowercased, as sign-in does) before the pattern is checked."""
    return BeforeValidator(lambda v: (v.strip().lower() if lower else v.strip())
                           if isinstance(v, str) else v)


# Bounds first, then the validator: so the pattern reaches the JSON Schema.
Username = Annotated[str, Field(pattern=USERNAME, max_length=64), _tidy(lower=True)]
#: A username in a path: exactly as stored.
PathUsername = Annotated[str, Field(pattern=USERNAME, max_length=64)]
Text = Annotated[str, Field(max_length=512)]
Ttl = Annotated[str, Field(pattern=r"^[0-9]{1,9}[smhd]$", max_length=16,
                           description="30m, 1h, 7d (at most 90d)")]
OpaqueId = Annotated[str, Field(pattern=OPAQUE_ID, max_length=64)]


# --- path parameters ---------------------------------------------------------------


class AgentPath(Params):
    agent_id: OpaqueId


class GrantPath(Params):
    group_id: DbId
    username: PathUsername


class UserPath(Params):
    user_id: DbId


class TokenPath(Params):
    token_id: OpaqueId


class SessionPath(Params):
    session_id: OpaqueId


class ChannelPath(Params):
    session_id: OpaqueId
    # Checked by the handler (a 400, not the 404 of an id that names nothing).
    capability: Annotated[str, Field(max_length=64, description="a capability name, "
                                     "^[a-z][a-z0-9_-]{0,31}$")]


class ReportPath(Params):
    report_id: OpaqueId


# --- auth --------------------------------------------------------------------------


class Login(Body):
    # Not held to USERNAME_RE: a sign-in with any name is a failed sign-in (counted),
    # not a 400 that tells which names cannot exist. Control characters are refused
    # all the same: they would forge log lines.
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
    password: Annotated[str, Field(max_length=1024)]
    totp: Annotated[str, Field(max_length=16)] = ""


class User(Reply):
    id: int
    username: str
    role: Role
    must_change_password: bool
    totp_enabled: bool
    totp_required: bool
    disabled: bool


class SignedIn(Reply):
    user: User
    csrf_token: str


class Me(Reply):
    user: User
    permissions: list[str]
    csrf_token: str | None
    totp_enrolment_required: bool


class PasswordChange(Body):
    current: Annotated[str, Field(max_length=1024)]
    new: Annotated[str, Field(max_length=1024)]


class PasswordChanged(Reply):
    ok: Literal[True] = True
    other_sessions_ended: int


class TotpSecret(Reply):
    secret: str
    uri: str
    qr_svg: str


class TotpReplace(Body):
    """Replacing an *active* authenticator: the account's password and a current code
    from it (the attempt limits check them; empty when enrolling the first one)."""

    password: Annotated[str, Field(max_length=1024)] = ""
    code: Annotated[str, Field(max_length=16)] = ""


class TotpConfirm(Body):
    code: Annotated[str, Field(pattern=TOTP, description="six ASCII digits")]


# --- agents ------------------------------------------------------------------------


class AgentQuery(Params):
    group: Annotated[str, Field(max_length=128)] = ""
    status: Literal["online", "offline", ""] = ""
    q: Annotated[str, Field(max_length=128)] = ""


class Agent(Reply):
    model_config = ConfigDict(extra="forbid")

    id: str
    group: str
    group_id: int
    hostname: str
    os: str
    os_version: str
    arch: str
    version: str
    label: str
    enrolled_at: float
    last_seen: float | None
    last_address: str | None
    online: bool
    health: list[dict[str, Any]] = Field(description="the agent's own report: hostile text")
    revoked: bool


class Agents(Reply):
    agents: list[Agent]


class AgentPatch(Body):
    label: Annotated[str, Field(max_length=256)]


class Ping(Reply):
    rtt_ms: float


# --- groups and users --------------------------------------------------------------


class Group(Reply):
    id: int
    name: str
    description: str
    granted: list[str]


class Groups(Reply):
    groups: list[Group]


class GroupCreate(Body):
    name: Annotated[str, Field(pattern=GROUP_NAME, max_length=128), _tidy(lower=False)]
    description: Annotated[str, Field(max_length=512)] = ""


class GroupCreated(Reply):
    id: int
    name: str


class Users(Reply):
    users: list[User]


class UserCreate(Body):
    username: Username
    role: Role


class UserCreated(Reply):
    user: User
    one_time_password: str


class UserPatch(Body):
    role: Role | None = None
    disabled: bool | None = None
    totp_required: bool | None = None


class UserOne(Reply):
    user: User


# --- tokens ------------------------------------------------------------------------


class EnrollToken(Reply):
    id: str
    group: str
    uses: int
    max_uses: int
    expires_at: float
    created_by: str
    created_at: float
    revoked_at: float | None
    state: Literal["active", "revoked", "expired", "used up"]


class EnrollTokens(Reply):
    tokens: list[EnrollToken]


class EnrollTokenCreate(Body):
    group: Annotated[str, Field(min_length=1, max_length=128)]
    uses: Annotated[int, Field(ge=1, le=100_000)] = 1
    ttl: Ttl = "1h"


class EnrollTokenCreated(Reply):
    id: str
    token: str
    command: str


Scope = Literal["agents:read", "agents:write", "audit:read", "enroll:read", "enroll:write",
                "groups:read", "groups:write", "users:read", "users:write",
                "apitokens:write"]


class ApiToken(Reply):
    id: str
    name: str
    user_id: int
    scopes: list[str]
    allowed_cidrs: list[str]
    expires_at: float
    revoked_at: float | None
    created_at: float
    last_used_at: float | None


class ApiTokens(Reply):
    tokens: list[ApiToken]
    scopes: list[str]


class ApiTokenCreate(Body):
    name: Annotated[str, Field(min_length=1, max_length=128)]
    scopes: Annotated[list[Scope], Field(min_length=1, max_length=16)]
    ttl: Ttl = "30d"
    allowed_cidrs: Annotated[list[Annotated[str, Field(max_length=64)]],
                             Field(max_length=32)] = []


class ApiTokenCreated(Reply):
    id: str
    token: str


# --- audit -------------------------------------------------------------------------


class AuditQuery(Params):
    actor: Annotated[str, Field(max_length=256)] = ""
    action: Annotated[str, Field(max_length=128)] = ""
    target: Annotated[str, Field(max_length=256)] = ""
    since: UnixTime | None = None
    until: UnixTime | None = None
    before: whole(1, 2**62) | None = None
    limit: whole(1, 500, "at most 500") = 50


class AuditEvent(Reply):
    seq: int
    time: float
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class AuditPage(Reply):
    events: list[AuditEvent]
    next_before: int | None


class AuditVerify(Reply):
    ok: bool
    events: int
    checkpoint_seq: int | None
    broken_seq: int | None
    reason: str
    summary: str
    root: str = ""


class ExportQuery(Params):
    format: Literal["jsonl"] = "jsonl"
    since: UnixTime | None = None


# --- sessions ----------------------------------------------------------------------


class SessionOpen(Body):
    reason: Annotated[str, Field(max_length=512)] = ""
    ticket: Annotated[str, Field(max_length=128)] = ""
    capabilities: Annotated[list[Annotated[str, Field(max_length=32)]],
                            Field(max_length=16)] | None = None


class Session(Reply):
    id: str
    mode: Literal["managed", "attended"]
    agent_id: str | None
    group_id: int | None
    technician: str
    reason: str
    ticket: str
    capabilities: list[str]
    state: str
    created_at: float
    opened_at: float | None
    ready_at: float | None
    closed_at: float | None
    close_reason: str | None
    setup_ms: float | None
    code_expires_at: float | None
    remote_hostname: str | None
    remote_address: str | None
    channels: int | None
    # The outcome (migration 0010): null until the technician sets it.
    outcome: Literal["resolved", "not_resolved", "escalated"] | None = None
    outcome_note: str = ""
    outcome_by: str | None = None
    outcome_at: float | None = None


class Sessions(Reply):
    sessions: list[Session]


class SessionQuery(Params):
    state: Literal["open", "waiting", "consent", "dialing", "ready", "closed", ""] = ""
    agent: Annotated[str, Field(max_length=64)] = ""
    limit: whole(1, 500, "at most 500") = 100


#: A fix parameter's value as the API takes it (checked against the fix's schema later).
FixParamValue = Annotated[str, Field(max_length=4096)] | int | bool
FixParams = Annotated[dict[Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,31}$",
                                                max_length=32)], FixParamValue],
                      Field(max_length=16)]


class ChannelRequest(Body):
    sections: Annotated[list[Annotated[str, Field(max_length=64)]],
                        Field(max_length=64)] | None = None
    # The fix room (relay/capabilities/fix.py): "ID@VERSION", its parameters, and the
    # diagnostics rule it is run for (re-checked afterwards).
    fix: Annotated[str, Field(max_length=64, pattern=r"^[a-z][a-z0-9-]{1,47}@[0-9]{1,10}$")
                   ] | None = None
    params: FixParams | None = None
    finding: Annotated[str, Field(max_length=80, pattern=r"^[a-z0-9][a-z0-9._-]{0,79}$")
                       ] | None = None


class ChannelResult(Reply):
    """A capability's output: the agent's word, returned as data (``output`` is any
    JSON value, a list of them, text, or null for binary output)."""

    model_config = ConfigDict(extra="allow")

    capability: str
    exit_status: int | None
    duration_ms: float
    bytes: int
    sha256: str
    truncated: bool
    format: Literal["json", "jsonl", "text", "binary"]
    output: Any = None
    report: str | None = None


class SessionCode(Reply):
    session_id: str
    code: str
    expires_at: float
    command: str


# --- reports -----------------------------------------------------------------------


class ReportQuery(Params):
    limit: whole(1, 200, "at most 200") = 50


class ReportRow(Reply):
    id: str
    agent_id: str
    session_id: str
    technician: str
    created_at: float
    sha256: str
    size: int
    findings: int
    worst: str
    #: When retention deleted its content (the row and digest stay); null: kept.
    deleted_at: float | None = None


class Reports(Reply):
    reports: list[ReportRow]


class Report(ReportRow):
    report: dict[str, Any]


# --- recordings --------------------------------------------------------------------


class RecordingPath(Params):
    recording_id: OpaqueId


class RecordingRow(Reply):
    id: str
    capability: str
    started_at: float
    duration_s: float
    bytes: int
    sha256: str
    technician: str
    keystrokes: bool
    #: When retention deleted its content (the row and digest stay); null: kept.
    deleted_at: float | None = None


class Recordings(Reply):
    recordings: list[RecordingRow]


# --- audit proofs (issue 14, helper proofs: relay/api/audit.py) ----------------------


class InclusionQuery(Params):
    seq: whole(1, 2**31 - 1)
    size: whole(1, 2**31 - 1) | None = None


class ConsistencyQuery(Params):
    from_: Annotated[whole(1, 2**31 - 1), Field(alias="from")]
    to: whole(1, 2**31 - 1)


class AuditCheckpoint(Reply):
    size: int
    root: str
    origin: str
    note: str
    verifier_key: str


class InclusionProof(Reply):
    seq: int
    size: int
    leaf_hash: str
    proof: list[str]
    checkpoint: str


class ConsistencyProof(Reply):
    size1: int
    size2: int
    from_root: str
    to_root: str
    proof: list[str]


class AuditBundle(Reply):
    """A session's evidence bundle (relay/audit_bundle.py; docs/audit-proofs.md): served
    as a download, described here so the API document names its shape."""

    format: str
    session: str
    created: float
    origin: str
    verifier_key: str
    checkpoint: str
    manifest: str
    events: list[dict[str, Any]]
    blobs: list[dict[str, Any]]
    absent: list[dict[str, Any]]
