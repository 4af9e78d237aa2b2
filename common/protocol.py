"""The control protocol between agent and relay, as a sans-I/O core.

Nothing here touches a socket: the asyncio layers in the agent and the relay feed
received text frames in and send out what these functions return. That keeps the
rules of the protocol (what a message may contain, which message may come when)
in one place that both sides import and that property-based tests can hammer.

Every frame is one JSON object of at most ``MAX_FRAME_BYTES`` UTF-8 bytes with a
protocol version ``v`` and a ``type``. Anything else is a :class:`ProtocolError`,
never another exception: the relay closes such a connection and keeps serving.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from backline.common import keys

VERSION = 1
MAX_FRAME_BYTES = 64 * 1024
#: A revocation list must fit one control frame with room to spare.
MAX_REVOCATIONS_B64 = 56 * 1024
#: The first agent version that takes ``fix_revocations``: an older agent refuses a
#: message type it does not know (and would drop its control socket, again and again),
#: so the relay sends it only to agents whose ``auth`` says this version or later.
FIX_REVOCATIONS_SINCE = (0, 2, 0)


def takes_fix_revocations(version: str) -> bool:
    """Whether an agent of ``version`` (``auth.version``, e.g. ``0.2.0``) knows
    ``fix_revocations``; an unparsable version is taken as too old."""
    match = re.match(r"^(\d{1,6})\.(\d{1,6})\.(\d{1,6})", version)
    return match is not None and tuple(int(g) for g in match.groups()) >= FIX_REVOCATIONS_SINCE
NONCE_BYTES = 32
AUTH_CONTEXT = b"backline/control-auth/v1"
ENROLL_CONTEXT = b"backline/enroll/v1"

AGENT_ID_RE = re.compile(r"^ag_[A-Za-z0-9_-]{10,40}$")
# The SSH principal of a session: an enrolled agent's id, or ``at_...`` for an
# attended (``join``) session whose machine is not enrolled.
PRINCIPAL_RE = re.compile(r"^(ag|at)_[A-Za-z0-9_-]{10,40}$")
SESSION_ID_RE = re.compile(r"^ss_[A-Za-z0-9_-]{10,40}$")
CAPABILITY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
SESSION_CODE_RE = re.compile(r"^[0-9]{9}$")
_B64_RE = re.compile(r"^[A-Za-z0-9_-]*={0,2}$")
_STD_B64_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")  # standard base64 (fix revocations)
_HEX64_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_CAPABILITIES = 16
#: A self-service fix run's id, made by ``backline-agent fix run`` (agent/fix_reports.py):
#: the relay's key for "this run was recorded already" (with the agent's id).
FIX_REPORT_RUN_RE = re.compile(r"^sr_[A-Za-z0-9_-]{16,32}$")
_FIX_ID_RE = re.compile(r"^[a-z][a-z0-9-]{1,47}$")  # common/fixes/manifest.py ID_RE
_FIX_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_SIGNAL_RE = re.compile(r"^[A-Za-z0-9_+-]{1,16}$")
#: Unix times in a fix report: after 2001-09-09, before 2286 (a clock at 0 is no time).
_UNIX_TIME = (1e9, 1e10)


class ProtocolError(Exception):
    """A frame that breaks the protocol; ``code`` is stable and machine-readable.
    ``msg_type``: the frame's type when it named a known one (the relay audits a broken
    ``fix_report`` as a refused report, not only as a protocol error)."""

    def __init__(self, code: str, message: str, msg_type: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.msg_type = msg_type


# --- field rules -----------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    required: bool = True
    max_len: int | None = None
    pattern: re.Pattern[str] | None = None
    bounds: tuple[float, float] | None = None  # a number's smallest and largest value


#: The heartbeat periods an agent accepts in ``welcome``: never 0 or less (a loop of
#: heartbeats with no pause), never so long that failures go unnoticed for hours. The
#: relay's own setting is narrower (5 to 600); 1 lets tests play a fast relay.
HEARTBEAT_S_RANGE = (1, 600)


def _s(max_len: int, required: bool = True, pattern: re.Pattern[str] | None = None) -> Field:
    return Field(str, required, max_len, pattern)


_INFO_FIELDS = ("hostname", "os", "os_version", "arch", "version")

# One schema per message type; fields not listed are refused, so nothing unchecked
# can ride along into the store or the console.
SCHEMAS: dict[str, dict[str, Field]] = {
    # relay -> agent
    "challenge": {"nonce": _s(64, pattern=_B64_RE), "relay_time": Field((int, float))},
    "welcome": {"agent_id": _s(64), "heartbeat_s": Field(int, bounds=HEARTBEAT_S_RANGE),
                "relay_time": Field((int, float))},
    "hb_ack": {"relay_time": Field((int, float))},
    "ping": {"id": _s(64)},
    "error": {"code": _s(64), "message": _s(1024)},
    "enrolled": {
        "agent_id": _s(64),
        "group": _s(128),
        "ca_public_key": _s(4096),
        "audit_public_key": _s(4096),
        # The relay's fix-approval keys (OpenSSH lines); absent from relays before fixes.
        "fix_keys": Field(list, required=False),
        "control_url": _s(2048),
        "heartbeat_s": Field(int),
    },
    # agent -> relay
    "auth": {
        "agent_id": _s(64, pattern=AGENT_ID_RE),
        "signature": _s(128, pattern=_B64_RE),
        "version": _s(64),
    },
    # ``ack``: answer this one with ``hb_ack`` (absent means yes, as before it existed).
    "hb": {"stats": Field(dict, required=False), "ack": Field(bool, required=False)},
    "pong": {"id": _s(64)},
    "health": {"alerts": Field(list)},
    "enroll": {
        "token": _s(256),
        "public_key": _s(64, pattern=_B64_RE),
        "signature": _s(128, pattern=_B64_RE),
        **{name: _s(256) for name in _INFO_FIELDS},
    },
    # --- support sessions (docs/sessions.md) ---
    # relay -> agent, on the control socket (or the join socket): open the tunnel.
    "dial": {
        "session_id": _s(64, pattern=SESSION_ID_RE),
        "url": _s(2048),
        "token": _s(128, pattern=_B64_RE),
        "technician": _s(128),
        "reason": _s(512),
        "ticket": _s(128),
        "capabilities": Field(list),
    },
    # relay -> agent: the session is over (the SSH connection closes too).
    "session_end": {"session_id": _s(64, pattern=SESSION_ID_RE), "reason": _s(256)},
    # agent -> relay: the dial could not be carried out.
    "dial_failed": {"session_id": _s(64, pattern=SESSION_ID_RE), "reason": _s(512)},
    # agent -> relay: end this session; the customer ended it, or the agent is stopping.
    "session_ended": {"session_id": _s(64, pattern=SESSION_ID_RE),
                      "reason": _s(16, pattern=re.compile(r"^(customer|agent_stopping)$"))},
    # agent -> relay: the first (and only text) frame on /agent/tunnel/{session_id}.
    "tunnel": {"token": _s(128, pattern=_B64_RE)},
    # agent -> relay on /agent/join: a session code and the key the SSH server will use.
    "join": {
        "code": _s(9, pattern=SESSION_CODE_RE),
        "public_key": _s(64, pattern=_B64_RE),
        **{name: _s(256) for name in _INFO_FIELDS},
    },
    # relay -> agent: who is asking, and the CA and principal their certificate has.
    "join_offer": {
        "session_id": _s(64, pattern=SESSION_ID_RE),
        "principal": _s(64, pattern=PRINCIPAL_RE),
        "technician": _s(128),
        "reason": _s(512),
        "ticket": _s(128),
        "ca_public_key": _s(4096),
        "capabilities": Field(list),
    },
    # agent -> relay: the customer's answer.
    "consent": {"answer": _s(3, pattern=re.compile(r"^(yes|no)$"))},
    # agent -> relay (issue 14): one self-service fix run (``backline-agent fix run``),
    # as the agent claims it, from its outbox (agent/fix_reports.py); sent again until
    # the relay answers ``fix_report_ack`` for its ``run_id``. Times are the agent's
    # clock; ``sent_at`` lets the relay put them on its own (docs/protocol.md). No
    # ``exit_status``: killed by ``signal``.
    "fix_report": {
        "run_id": _s(36, pattern=FIX_REPORT_RUN_RE),
        "fix": _s(48, pattern=_FIX_ID_RE),
        "version": Field(int, bounds=(1, 2**31 - 1)),
        "digest": _s(71, pattern=_FIX_DIGEST_RE),
        "exit_status": Field(int, required=False, bounds=(-2**31, 2**32 - 1)),
        "signal": _s(16, required=False, pattern=_SIGNAL_RE),
        "timed_out": Field(bool),
        "verify": _s(6, pattern=re.compile(r"^(passed|failed|none)$")),
        "output_sha256": _s(64, pattern=_HEX64_RE),
        "started_at": Field((int, float), bounds=_UNIX_TIME),
        "ended_at": Field((int, float), bounds=_UNIX_TIME),
        "sent_at": Field((int, float), bounds=_UNIX_TIME),
    },
    # relay -> agent: what became of the ``fix_report`` of ``run_id``: ``recorded``,
    # ``duplicate`` (recorded before: both mean "forget it"), or ``refused`` with a
    # ``reason`` (``rate_limited``: send it again later; any other: it never will be).
    "fix_report_ack": {
        "run_id": _s(36, pattern=FIX_REPORT_RUN_RE),
        "status": _s(9, pattern=re.compile(r"^(recorded|duplicate|refused)$")),
        "reason": _s(32, required=False),
    },
    # relay -> agent (issue 12): the signed fix revocation list, after ``welcome`` and
    # whenever a revocation is added; only to agents that can take it
    # (:func:`takes_fix_revocations`). ``list_b64``: the list's canonical bytes
    # (common/fixes/revocation.py ``encode_message``), ``signature``: an armored SSH
    # signature over them.
    # An announcement (both empty: fetch the list) names what it announces, so an agent
    # that fetched it already skips the fetch: the list's ``serial`` and the SHA-256
    # (hex) of the fetch answer's body, also its ETag.
    "fix_revocations": {"list_b64": _s(MAX_REVOCATIONS_B64, pattern=_STD_B64_RE),
                        "signature": _s(8192),
                        "serial": Field(int, required=False, bounds=(1, 2**53)),
                        "sha256": _s(64, required=False, pattern=_HEX64_RE)},
}

RELAY_TO_AGENT = frozenset({"challenge", "welcome", "hb_ack", "ping", "error", "enrolled",
                            "dial", "session_end", "join_offer", "fix_revocations",
                            "fix_report_ack"})
AGENT_TO_RELAY = frozenset({"auth", "hb", "pong", "health", "enroll", "dial_failed",
                            "session_ended", "tunnel", "join", "consent", "fix_report"})

MAX_STATS_KEYS = 32
MAX_ALERTS = 32


# One encoder and one decoder for the process: ``json.dumps``/``json.loads`` with any
# option build a new one per call, which a relay answering 333 heartbeats a second pays
# for every time (docs/benchmarks.md, "Idle agents").
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
_SCAN = _DECODER.scan_once
# A text of at most this many characters cannot exceed the byte limit (UTF-8 takes at
# most 4 bytes a character), so short frames skip the re-encoding that measures them.
_SURELY_SHORT = MAX_FRAME_BYTES // 4


def encode(msg_type: str, **fields: Any) -> str:
    """Build one frame; the sender's own messages are validated too."""
    msg = {"v": VERSION, "type": msg_type, **fields}
    validate(msg)
    text = _ENCODER.encode(msg)
    if len(text) > _SURELY_SHORT and len(text.encode()) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame over {MAX_FRAME_BYTES} bytes")
    return text


def max_encoded_bytes(*msg_types: str) -> int:
    """The most UTF-8 bytes :func:`encode` can write for a valid message of any of
    ``msg_types``: the size limit of a socket that only carries those (the relay's
    pre-authentication sockets), or of one message type (``fix_report``). Each field
    at its ``max_len``, every character at its longest (6 bytes: ``encode`` writes a
    control character as ``\\u00XX``, any other as itself, at most 4 bytes), with the
    names, quotes and separators. Only for types whose fields are all bounded strings
    or bounded numbers (an integer at its longer bound, any other number at 24
    characters: the longest ``repr`` of a float), or booleans."""
    most = 0
    for msg_type in msg_types:
        size = len(_ENCODER.encode({"v": VERSION, "type": msg_type}))
        for name, rule in SCHEMAS[msg_type].items():
            size += len(name) + 4  # ,"name":
            if rule.kind is str and rule.max_len is not None:
                size += 2 + 6 * rule.max_len
            elif rule.kind is bool:
                size += 5
            elif rule.kind is int and rule.bounds is not None:
                size += max(len(str(int(b))) for b in rule.bounds)
            elif rule.bounds is not None and rule.kind in ((int, float), float):
                size += 24
            else:
                raise ValueError(f"{msg_type}: {name} is not bounded")
        most = max(most, size)
    return most


_HB_KEYS = frozenset({"v", "type", "stats", "ack"})


class HeartbeatClock:
    """The agent's side of heartbeats: when to ask the relay for an answer, and when to
    give up on a relay that does not give one.

    Every heartbeat tells the relay the agent is alive, but most need no answer: the
    connection itself says the relay is there (a relay that stops or restarts closes
    it, and on Linux ``TCP_USER_TIMEOUT`` ends one whose heartbeats are not even
    acknowledged by the relay's host), and an answer to every heartbeat was a fifth of
    a relay's CPU at 10,000 idle agents (docs/benchmarks.md, "Idle agents"). So a
    heartbeat asks for ``hb_ack`` only after ``ASK_AFTER`` periods without any frame
    from the relay, which catches a relay process that hangs with its sockets open;
    after ``GIVE_UP_AFTER`` periods of silence, that answer did not come and the agent
    reconnects. Times are the caller's monotonic clock, in seconds."""

    ASK_AFTER = 3.5  #: periods of silence before a heartbeat asks (every 4th when idle)
    GIVE_UP_AFTER = 5.5  #: periods of silence after which the relay counts as gone

    __slots__ = ("heard", "period")

    def __init__(self, period_s: float, now: float) -> None:
        self.period = period_s
        self.heard = now

    def heard_from_relay(self, now: float) -> None:
        """Any frame from the relay shows it is alive."""
        self.heard = now

    def tick(self, now: float) -> bool | None:
        """At a heartbeat tick: whether this heartbeat asks for an answer, or ``None``
        when the relay has been silent too long and the connection should be dropped."""
        silent = now - self.heard
        if silent > self.GIVE_UP_AFTER * self.period:
            return None
        return silent >= self.ASK_AFTER * self.period


def refuses_hb_ack(msg: dict[str, Any]) -> bool:
    """Whether a relay's ``error`` refuses the ``ack`` field of ``hb``: what a relay
    from before that field says (and then closes) at an agent's first heartbeat. The
    agent then leaves the field out, and such a relay answers every heartbeat."""
    return (msg["type"] == "error" and msg["code"] == "unknown_field"
            and msg["message"] == "hb: unexpected field 'ack'")


def encode_hb_ack(relay_time: float) -> str:
    """``encode("hb_ack", relay_time=...)`` without the generic path: the answer to
    every heartbeat. ``repr`` of a finite float is what JSON writes for it."""
    value = round(float(relay_time), 3)
    if not math.isfinite(value):
        raise ProtocolError("bad_field", "hb_ack: relay_time must be a finite number")
    return f'{{"v":{VERSION},"type":"hb_ack","relay_time":{value!r}}}'


def decode(frame: str | bytes, allowed: frozenset[str] | None = None) -> dict[str, Any]:
    """Parse and validate one received frame, or raise :class:`ProtocolError`."""
    if isinstance(frame, bytes | bytearray | memoryview):
        frame = bytes(frame)
        if len(frame) > MAX_FRAME_BYTES:
            raise ProtocolError("too_large", f"frame over {MAX_FRAME_BYTES} bytes")
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError("bad_encoding", "frame is not UTF-8") from exc
    if not isinstance(frame, str):
        raise ProtocolError("bad_frame", "frame is neither text nor bytes")
    if len(frame) > _SURELY_SHORT and (len(frame) > MAX_FRAME_BYTES or len(
            frame.encode("utf-8", "surrogatepass")) > MAX_FRAME_BYTES):
        raise ProtocolError("too_large", f"frame over {MAX_FRAME_BYTES} bytes")
    try:
        try:
            # The decoder's C scanner alone, when the object fills the frame (what
            # agents send): ``decode`` adds two whitespace matches per message around
            # it. Anything else (whitespace, trailing bytes, an error) goes the long way.
            msg, end = _SCAN(frame, 0)
            if end != len(frame):
                raise StopIteration(end)
        except StopIteration:
            msg = _DECODER.decode(frame)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("bad_json", "frame is not valid JSON") from exc
    validate(msg)
    if allowed is not None and msg["type"] not in allowed:
        raise ProtocolError("unexpected_type", f"{msg['type']!r} is not expected here")
    return msg


def validate(msg: Any) -> None:
    """Check a decoded message against its schema."""
    if not isinstance(msg, dict):
        raise ProtocolError("bad_frame", "frame is not a JSON object")
    if msg.get("v") != VERSION or isinstance(msg.get("v"), bool):
        raise ProtocolError("bad_version", f"protocol version must be {VERSION}")
    msg_type = msg.get("type")
    if not isinstance(msg_type, str) or msg_type not in SCHEMAS:
        raise ProtocolError("unknown_type", "unknown message type")
    if msg_type == "hb":  # what a relay reads 333 times a second at 10,000 agents
        for name in msg:
            if name not in _HB_KEYS:
                raise ProtocolError("unknown_field", f"hb: unexpected field {name[:40]!r}")
        if "stats" in msg:
            if not isinstance(msg["stats"], dict):
                raise ProtocolError("bad_field", "hb: stats has the wrong type")
            _check_stats(msg["stats"])
        if "ack" in msg and not isinstance(msg["ack"], bool):
            raise ProtocolError("bad_field", "hb: ack has the wrong type")
        return
    try:
        _check_fields(msg_type, msg)
    except ProtocolError as err:
        err.msg_type = msg_type
        raise


def _check_fields(msg_type: str, msg: dict[str, Any]) -> None:
    """A message of a known type (not ``hb``) against its schema."""
    schema = SCHEMAS[msg_type]
    for name in msg:
        if name not in ("v", "type") and name not in schema:
            raise ProtocolError("unknown_field", f"{msg_type}: unexpected field {name[:40]!r}")
    for name, rule in schema.items():
        if name not in msg:
            if rule.required:
                raise ProtocolError("missing_field", f"{msg_type}: missing {name}")
            continue
        value = msg[name]
        # bool is an int in Python; a protocol number is never a boolean.
        if (isinstance(value, bool) and rule.kind is not bool) or not isinstance(
                value, rule.kind):
            raise ProtocolError("bad_field", f"{msg_type}: {name} has the wrong type")
        if rule.bounds is not None and not rule.bounds[0] <= value <= rule.bounds[1]:
            raise ProtocolError("bad_field", f"{msg_type}: {name} must be between "
                                             f"{rule.bounds[0]} and {rule.bounds[1]}")
        if rule.max_len is not None and len(value) > rule.max_len:
            raise ProtocolError("bad_field", f"{msg_type}: {name} is too long")
        if rule.pattern is not None and not rule.pattern.fullmatch(value):
            raise ProtocolError("bad_field", f"{msg_type}: {name} is malformed")
    if msg_type == "health":
        _check_alerts(msg["alerts"])
    if msg_type == "enrolled" and "fix_keys" in msg:
        fix_keys = msg["fix_keys"]
        if len(fix_keys) > 16 or not all(isinstance(k, str) and len(k) <= 4096 for k in fix_keys):
            raise ProtocolError("bad_field", "enrolled: fix_keys is malformed")
    if msg_type in ("dial", "join_offer"):
        check_capabilities(msg["capabilities"], msg_type)
    if msg_type == "fix_report":
        _check_fix_report(msg)


def _check_fix_report(msg: dict[str, Any]) -> None:
    """A run starts before it ends, and is reported after it ended (the agent's clock
    all three; the agent makes sure of it, :mod:`backline.agent.fix_reports`); a run
    with no exit status was ended by a signal, and one with both is no run."""
    if not msg["started_at"] <= msg["ended_at"] <= msg["sent_at"]:
        raise ProtocolError("bad_field", "fix_report: started_at <= ended_at <= sent_at")
    if ("exit_status" in msg) == ("signal" in msg):
        raise ProtocolError("bad_field", "fix_report: exit_status or signal, one of them")


def check_capabilities(names: Any, where: str = "capabilities") -> None:
    """A short list of distinct capability names (``info``, ``diagnostics``, ...)."""
    if (not isinstance(names, list) or len(names) > MAX_CAPABILITIES
            or not all(isinstance(n, str) and CAPABILITY_RE.fullmatch(n) for n in names)
            or len(set(names)) != len(names)):
        raise ProtocolError("bad_field", f"{where}: capabilities must be up to "
                            f"{MAX_CAPABILITIES} distinct short lowercase names")


def _check_stats(stats: dict[str, Any]) -> None:
    if len(stats) > MAX_STATS_KEYS:
        raise ProtocolError("bad_field", "hb: too many stats")
    for key, value in stats.items():
        if len(key) > 64 or isinstance(value, bool) or not isinstance(value, int | float):
            raise ProtocolError("bad_field", "hb: stats are short names with numbers")


def _check_alerts(alerts: list[Any]) -> None:
    if len(alerts) > MAX_ALERTS:
        raise ProtocolError("bad_field", "health: too many alerts")
    for alert in alerts:
        if not isinstance(alert, dict) or set(alert) - {"id", "severity", "message"}:
            raise ProtocolError("bad_field", "health: an alert is {id, severity, message}")
        for key in ("id", "severity", "message"):
            if not isinstance(alert.get(key), str) or len(alert[key]) > 512:
                raise ProtocolError("bad_field", f"health: alert {key} must be a short string")
        if alert["severity"] not in ("info", "warning", "critical"):
            raise ProtocolError("bad_field", "health: severity is info, warning or critical")


# --- signatures --------------------------------------------------------------------


def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64d(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ProtocolError("bad_field", "not base64url") from exc


def auth_payload(nonce: bytes, agent_id: str, relay_fingerprint: str) -> bytes:
    """What an agent signs to log in: the relay's fresh nonce, bound to the relay's TLS
    key pin the agent matched (its certificate's hash for agents that still pin it), so
    a signature is good for one connection to one relay."""
    return b"\0".join([AUTH_CONTEXT, nonce, agent_id.encode(), relay_fingerprint.encode()])


def enroll_payload(token: str, public_key: bytes, relay_fingerprint: str) -> bytes:
    """What an enrolling agent signs: proof it holds the key it registers."""
    return b"\0".join([ENROLL_CONTEXT, token.encode(), public_key, relay_fingerprint.encode()])


# --- relay side --------------------------------------------------------------------


@dataclass
class RelayHandshake:
    """The relay's half of the control handshake: challenge, then one ``auth``."""

    relay_fingerprint: str
    #: Further values the agent's signature may be bound to: the relay's SPKI pins
    #: besides its certificate hash (relay/tls_identity.py says which binds what).
    also_bound: tuple[str, ...] = ()
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(NONCE_BYTES))
    agent_id: str | None = None
    authenticated: bool = False

    def challenge(self, now: float) -> str:
        return encode("challenge", nonce=b64e(self.nonce), relay_time=round(now, 3))

    def receive_auth(self, frame: str | bytes) -> dict[str, Any]:
        """Parse the agent's answer; the caller looks up the key and calls :meth:`verify`."""
        msg = decode(frame, frozenset({"auth"}))
        self.agent_id = msg["agent_id"]
        return msg

    def verify(self, msg: dict[str, Any], public_key_raw: bytes) -> bool:
        try:
            signature = b64d(msg["signature"])
        except ProtocolError:
            return False
        self.authenticated = any(
            keys.verify(public_key_raw, signature, auth_payload(self.nonce, msg["agent_id"], b))
            for b in dict.fromkeys([self.relay_fingerprint, *self.also_bound]) if b)
        return self.authenticated


_FROM_AUTHENTICATED_AGENT = frozenset({"hb", "pong", "health", "dial_failed",
                                       "session_ended", "fix_report"})


def parse_agent_message(frame: str | bytes) -> dict[str, Any]:
    """A frame from an authenticated agent."""
    return decode(frame, _FROM_AUTHENTICATED_AGENT)


# --- agent side --------------------------------------------------------------------


def answer_challenge(
    frame: str | bytes, agent_id: str, private_key: keys.PrivateKey, relay_fingerprint: str,
    version: str,
) -> str:
    """The agent's reply to a challenge: sign the nonce, bound to this relay."""
    signature = private_key.sign(challenge_payload(frame, agent_id, relay_fingerprint))
    return auth_answer(agent_id, signature, version)


def challenge_payload(frame: str | bytes, agent_id: str, relay_fingerprint: str) -> bytes:
    """What :func:`answer_challenge` signs for ``frame``, for a caller that signs
    elsewhere (the running agent signs in a child process: agent/keychild.py)."""
    msg = decode(frame, frozenset({"challenge", "error"}))
    if msg["type"] == "error":
        raise ProtocolError(msg["code"], msg["message"])
    nonce = b64d(msg["nonce"])
    if len(nonce) != NONCE_BYTES:
        raise ProtocolError("bad_field", "challenge nonce has the wrong length")
    return auth_payload(nonce, agent_id, relay_fingerprint)


def auth_answer(agent_id: str, signature: bytes, version: str) -> str:
    """The ``auth`` frame carrying a signature of :func:`challenge_payload`."""
    return encode("auth", agent_id=agent_id, signature=b64e(signature), version=version)


def parse_relay_message(frame: str | bytes) -> dict[str, Any]:
    """A frame from the relay after the handshake (or an ``error`` at any time)."""
    return decode(frame, RELAY_TO_AGENT)
