"""Relay configuration: defaults, then a TOML file, then ``BACKLINE_*`` variables.

Later sources win. Every setting has a sensible default, so a bare
``backline-relay serve`` runs an embedded relay on loopback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs

from backline.common.tlspin import BadPin, is_spki, parse_pin, public_ca_name

ENV_PREFIX = "BACKLINE_"
TLS_MODES = ("self-signed", "files", "off")
LOG_FORMATS = ("text", "json")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why."""


SIEM_SCHEMES = ("https", "syslog+tcp", "syslog+tls")
_SIEM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


@dataclass
class SiemDestination:
    """One ``[[siem.destinations]]`` table: where the audit trail is streamed
    (relay/siem/, docs/siem-and-retention.md). ``name`` keys its durable cursor, so
    renaming a destination starts it again from the first event."""

    name: str
    url: str
    # A PEM file of the CA(s) that issue the collector's certificate (https and
    # syslog+tls); empty: the system's trust store.
    ca_file: str = ""
    # https: the HMAC-SHA256 key of X-Backline-Signature (at least 16 characters).
    secret: str = ""
    batch_size: int = 100
    max_batch_bytes: int = 1024 * 1024
    timeout_s: float = 10.0
    retry_max_s: float = 60.0

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    def validate(self) -> None:
        where = f"siem destination {self.name!r}"
        if not _SIEM_NAME.fullmatch(self.name):
            raise ConfigError(f"{where}: name is 1-64 of a-z 0-9 _ - (it keys the cursor)")
        if self.scheme not in SIEM_SCHEMES or "://" not in self.url:
            raise ConfigError(f"{where}: url must start with https://, syslog+tcp:// or "
                              "syslog+tls://")
        if self.scheme != "https":
            from backline.relay.siem.syslog import parse_url

            try:
                parse_url(self.url)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
        elif not urlsplit(self.url).hostname:
            raise ConfigError(f"{where}: url https://HOST[:PORT]/PATH needs a host")
        if self.scheme == "https" and len(self.secret) < 16:
            raise ConfigError(f"{where}: an https destination needs a secret of at least "
                              "16 characters (the receiver checks X-Backline-Signature)")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise ConfigError(f"{where}: ca_file {self.ca_file!r} is not a file")
        if self.ca_file:
            import ssl

            try:
                ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise ConfigError(f"{where}: ca_file {self.ca_file!r} holds no readable "
                                  f"PEM certificate ({exc})") from None
        if not 1 <= self.batch_size <= 1000:
            raise ConfigError(f"{where}: batch_size must be between 1 and 1000")
        if not 4096 <= self.max_batch_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"{where}: max_batch_bytes must be between 4096 and 16777216")
        if not 0.5 <= self.timeout_s <= 120 or not 1 <= self.retry_max_s <= 3600:
            raise ConfigError(f"{where}: timeout_s is 0.5-120 and retry_max_s 1-3600")

    def shown(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "url": hide_url_password(self.url),
                "secret": "***" if self.secret else ""}


def siem_destinations(raw: Any) -> list[SiemDestination]:
    """``[[siem.destinations]]`` (or a JSON list in ``BACKLINE_SIEM_DESTINATIONS``)."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw) if raw.strip() else []
        except ValueError as exc:
            raise ConfigError(f"siem destinations: not a JSON list ({exc})") from None
    if not isinstance(raw, list) or len(raw) > 16:
        raise ConfigError("siem destinations: a list of at most 16 tables")
    names = {f.name for f in dataclasses.fields(SiemDestination)}
    out = []
    for item in raw:
        if not isinstance(item, dict):
            raise ConfigError("siem destinations: each is a table (name, url, ...)")
        unknown = set(item) - names
        if unknown:
            raise ConfigError(f"siem destination: unknown setting(s) {sorted(unknown)}")
        try:
            out.append(SiemDestination(**item))
        except TypeError as exc:
            raise ConfigError(f"siem destination: {exc}") from None
    return out


def public_ca(path: str) -> str:
    """The subject of the CA in ``path`` if it is a public CA (common/tlspin.py)."""
    try:
        return public_ca_name(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"tls_ca_file {path!r} is not a readable PEM certificate ({exc})"
                          ) from None


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("backline-relay", appauthor=False))


@dataclass
class RelayConfig:
    data_dir: Path = field(default_factory=default_data_dir)
    listen_host: str = "127.0.0.1"
    listen_port: int = 8443
    # The URL agents and browsers use; defaults to the listen address.
    public_url: str = ""
    # self-signed: the relay makes and serves its own certificate (the default);
    # files: tls_cert_file/tls_key_file; off: a reverse proxy in front ends TLS.
    tls: str = "self-signed"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    # What agents pin when TLS ends at a proxy (tls = "off"): the SPKI pins
    # ("sha256//...") of the proxy's key(s), and/or a CA certificate file whose chain
    # agents verify (they are given the file: `backline-agent enroll --ca-file`). In the
    # other modes tls_pins adds backup pins. tls_fingerprint: the proxy certificate's
    # SHA-256, which agents pinned before SPKI pins (legacy; breaks at each renewal).
    tls_pins: list[str] = field(default_factory=list)
    tls_ca_file: str = ""
    # A tls_ca_file the system trusts by default (a public CA) is refused: pinning it
    # trusts any certificate it issues for this name. True accepts it, with a warning.
    tls_ca_allow_public: bool = False
    tls_fingerprint: str = ""
    database_url: str = ""
    heartbeat_s: int = 30
    web_session_hours: float = 12.0
    web_session_idle_minutes: float = 30.0
    require_totp_for_admins: bool = False
    login_failures_per_account: int = 5
    login_failures_per_address: int = 20
    login_window_s: int = 900
    # Failed sign-ins relay-wide (from browsers without a device cookie) per window.
    login_failures_global: int = 1000
    # Sign-ins that present this account's device cookie (a browser that signed in
    # before) have their own budget per cookie, untouched by strangers' failures.
    login_device_failures: int = 10
    login_device_days: float = 180.0
    # argon2 checks running at once, and how long one may wait for a turn. Each holds
    # 64 MiB and already runs four lanes in parallel, so one at a time uses two cores.
    argon2_concurrency: int = 1
    argon2_wait_s: float = 5.0
    audit_checkpoint_every: int = 100
    audit_checkpoint_seconds: int = 60
    # The checkpoints' origin line (c2sp.org/tlog-checkpoint); "" = backline-relay/<key id>.
    audit_origin: str = ""
    # Every checkpoint note is also appended here, outside the database
    # (docs/audit-proofs.md): "file:/path" (append-only, fsync) or "syslog+tcp://host:port".
    audit_checkpoint_sinks: list[str] = field(default_factory=list)
    # The evidence (bytes, before base64) GET /sessions/{id}/bundle builds in memory;
    # over it 413 (`backline-relay audit bundle` on the host has its own, higher limit).
    audit_bundle_max_bytes: int = 256 * 1024 * 1024
    # Addresses of reverse proxies whose X-Forwarded-For / -Proto headers are believed.
    trusted_proxies: list[str] = field(default_factory=list)
    # Browser origins besides public_url allowed to call the API and open WebSockets.
    extra_origins: list[str] = field(default_factory=list)
    log_level: str = "info"
    # "text": one escaped line per record; "json": one JSON object per line (collectors).
    log_format: str = "text"
    # How long a flood of refusals from one source (an address, an agent) is counted
    # before its one aggregated audit event is written (relay/audit_floods.py).
    audit_flood_window_s: float = 60.0
    # How long an agent's socket (/agent/enroll, /agent/connect, /agent/tunnel,
    # /agent/join) may stay silent before its first message; then it is closed, audited.
    agent_first_frame_timeout_s: float = 10.0
    event_loop: str = "auto"
    # Who runs TLS: "socket" (OpenSSL on the socket, relay/net/tls_socket.py: about half
    # the CPU per heartbeat) or "loop" (the event loop's own TLS, as uvicorn does it).
    tls_engine: str = "socket"
    # Connections that have not authenticated (docs/operator-guide.md, "Connection
    # limits"): caps reserved at accept time, 0 = computed from the descriptor limit
    # (half of RLIMIT_NOFILE overall, at most 16,384; a quarter of that per address),
    # and deadlines.
    max_unauthenticated_connections: int = 0
    max_unauthenticated_per_address: int = 0
    tls_handshake_timeout_s: float = 10.0
    request_head_timeout_s: float = 10.0
    request_body_timeout_s: float = 30.0
    request_body_min_bytes_per_s: int = 1024
    keepalive_timeout_s: float = 5.0
    websocket_auth_timeout_s: float = 15.0
    # Support sessions (docs/sessions.md): idle-out, hard cap, how long opening may take.
    session_idle_minutes: float = 15.0
    session_max_hours: float = 8.0
    session_open_timeout_s: float = 15.0
    # Terminal recordings (asciicast) keep output and resizes; keystrokes only when
    # this says so: they carry passwords (docs/operator-guide.md).
    record_keystrokes: bool = False
    # Attended-session codes: life, and wrong guesses allowed per address and in total.
    session_code_minutes: float = 10.0
    session_code_failures_per_address: int = 5
    session_code_window_s: int = 600
    session_code_failures_global: int = 50
    session_code_global_window_s: int = 60
    # First tries from addresses with no wrong code yet, relay-wide per global window.
    session_code_first_tries_global: int = 600
    # Agent health alerts and session events are POSTed here as JSON signed with
    # HMAC-SHA256(webhook_secret) in X-Backline-Signature (docs/diagnostics.md).
    webhook_url: str = ""
    webhook_secret: str = ""
    # Event types to send (``session.*`` matches a prefix); empty means all.
    webhook_events: list[str] = field(default_factory=list)
    # Offline fix-approver keys (OpenSSH public key lines, "ssh-ed25519 AAAA... name"):
    # the only keys whose signatures `POST /fixes/{id}/{v}/signatures` and
    # `backline-relay fix sign` accept (docs/fixes-relay.md). Agents decide themselves
    # which offline keys they require, in their local policy.
    fix_offline_keys: list[str] = field(default_factory=list)
    # The most output of one fix run kept (and asked of the agent); past it the agent
    # cuts, marks the cut and counts the rest (docs/fixes-relay.md).
    fix_max_output_bytes: int = 16 * 1024 * 1024
    # --- reports (issue 14, docs/reports.md "Scheduled delivery") ------------------
    # A management report sent on a schedule: "" (never), "daily" (the previous UTC
    # day, at report_hour_utc) or "weekly" (the previous Monday-to-Monday week, on
    # Mondays at report_hour_utc), through each of report_via: "webhook" (webhook_url,
    # signed with webhook_secret, type "report.management") and/or "smtp".
    report_schedule: str = ""
    report_hour_utc: int = 6
    report_group: str = ""
    report_via: list[str] = field(default_factory=list)
    report_recipients: list[str] = field(default_factory=list)
    smtp_host: str = ""
    smtp_port: int = 587
    # "starttls" (port 587), "tls" (implicit TLS, port 465) or "none" (loopback only).
    smtp_security: str = "starttls"
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_from: str = ""
    smtp_timeout_s: float = 30.0
    # A scheduled delivery that failed is tried again after this, then twice as long
    # each time, up to an hour (relay/reports/delivery.py).
    report_retry_s: float = 60.0
    # SIEM streaming of the audit trail: ``[[siem.destinations]]`` tables in the file
    # (docs/siem-and-retention.md).
    siem_destinations: list[SiemDestination] = field(default_factory=list)
    # Retention (``[retention]`` in the file, or these names): recordings and reports
    # older than this many days are deleted unless under a legal hold; 0 keeps them.
    retention_recordings_days: float = 0.0
    retention_reports_days: float = 0.0
    retention_interval_minutes: float = 60.0

    @property
    def effective_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = self.listen_host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - describing, not binding
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.listen_port}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'relay.db'}"

    def validate(self) -> None:
        if self.tls not in TLS_MODES:
            raise ConfigError(f"tls must be one of {', '.join(TLS_MODES)}, not {self.tls!r}")
        if self.tls == "files" and not (self.tls_cert_file and self.tls_key_file):
            raise ConfigError("tls = 'files' needs tls_cert_file and tls_key_file")
        for pin in self.tls_pins:
            try:
                ok = is_spki(parse_pin(pin))
            except BadPin:
                ok = False
            if not ok:
                raise ConfigError(f"tls_pins: {pin!r} is not an SPKI pin (sha256// and 44 "
                                  "base64 characters; docs/operator-guide.md shows how to "
                                  "compute one)")
        if not 1024 <= self.fix_max_output_bytes <= 1024**3:
            raise ConfigError("fix_max_output_bytes must be between 1024 and 1073741824")
        for line in self.fix_offline_keys:
            if not re.fullmatch(r"(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) [A-Za-z0-9+/=]{16,2048}"
                                r"( [^\x00-\x1f]{0,200})?", line.strip()):
                raise ConfigError(f"fix_offline_keys: {line[:60]!r} is not an OpenSSH public "
                                  "key line (ssh-ed25519 AAAA... name)")
        if self.tls_ca_file and not Path(self.tls_ca_file).is_file():
            raise ConfigError(f"tls_ca_file {self.tls_ca_file!r} is not a file")
        public = public_ca(self.tls_ca_file) if self.tls_ca_file else ""
        if public and not self.tls_ca_allow_public:
            raise ConfigError(
                f"tls_ca_file {self.tls_ca_file!r} is a public CA ({public}, "
                "in this system's default trust store): agents pinning it would trust ANY "
                "certificate it issues for the relay's name, to anyone who can get one. Pin "
                "the proxy's key (tls_pins) or a private CA instead; to accept it anyway, set "
                "tls_ca_allow_public = true")
        if self.tls == "off":
            fp = self.tls_fingerprint.replace(":", "").strip().lower()
            if fp and (len(fp) != 64 or any(c not in "0123456789abcdef" for c in fp)):
                raise ConfigError("tls_fingerprint must be 64 hex digits (colons allowed)")
            if not (self.tls_pins or self.tls_ca_file or fp):
                raise ConfigError(
                    "tls = 'off' (TLS ends at a proxy) needs tls_pins (the SPKI pin of the "
                    "proxy's key, which agents pin) or tls_ca_file (the CA that issues its "
                    "certificate); legacy: tls_fingerprint; see docs/operator-guide.md")
        if not 0 < self.listen_port < 65536:
            raise ConfigError("listen_port must be between 1 and 65535")
        if not self.effective_public_url.startswith("https://"):
            raise ConfigError("public_url must start with https:// (cookies are Secure-only)")
        if self.heartbeat_s < 5 or self.heartbeat_s > 600:
            raise ConfigError("heartbeat_s must be between 5 and 600")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format must be {' or '.join(LOG_FORMATS)}, "
                              f"not {self.log_format!r}")
        if self.audit_origin and not re.fullmatch(r"[^\s+]{1,200}", self.audit_origin):
            raise ConfigError("audit_origin must be 1 to 200 characters without spaces or '+'")
        for sink in self.audit_checkpoint_sinks:
            if not sink.startswith(("file:", "syslog+tcp://", "syslog+tls://")):
                raise ConfigError(f"audit_checkpoint_sinks: {sink!r} is not file:/path, "
                                  "syslog+tcp://host:port or syslog+tls://host:port")
            if sink.startswith("file:") and not Path(sink[5:]).expanduser().is_absolute():
                raise ConfigError(f"audit_checkpoint_sinks: {sink!r}: the file's path must "
                                  "be absolute")
        if not 1 <= self.audit_bundle_max_bytes <= 4 * 1024**3:
            raise ConfigError("audit_bundle_max_bytes must be between 1 and 4 GiB")
        if not 1 <= self.audit_flood_window_s <= 3600:
            raise ConfigError("audit_flood_window_s must be between 1 and 3600")
        if not 1 <= self.agent_first_frame_timeout_s <= 60:
            raise ConfigError("agent_first_frame_timeout_s must be between 1 and 60")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            raise ConfigError("event_loop must be auto, asyncio or uvloop")
        if self.tls_engine not in ("socket", "loop"):
            raise ConfigError("tls_engine must be socket or loop")
        if self.max_unauthenticated_connections < 0 or self.max_unauthenticated_per_address < 0:
            raise ConfigError("max_unauthenticated_connections and "
                              "max_unauthenticated_per_address must be 0 (automatic) or more")
        for name in ("tls_handshake_timeout_s", "request_head_timeout_s",
                     "request_body_timeout_s", "keepalive_timeout_s",
                     "websocket_auth_timeout_s"):
            if not 0.1 <= getattr(self, name) <= 300:
                raise ConfigError(f"{name} must be between 0.1 and 300 seconds")
        if not 1 <= self.request_body_min_bytes_per_s <= 1 << 30:
            raise ConfigError("request_body_min_bytes_per_s must be between 1 and 2**30")
        if not 0 < self.session_idle_minutes <= 24 * 60:
            raise ConfigError("session_idle_minutes must be more than 0 and at most 1440")
        if not 0 < self.session_max_hours <= 168:
            raise ConfigError("session_max_hours must be more than 0 and at most 168")
        if not 1 <= self.session_open_timeout_s <= 120:
            raise ConfigError("session_open_timeout_s must be between 1 and 120")
        if not 0 < self.session_code_minutes <= 60:
            raise ConfigError("session_code_minutes must be more than 0 and at most 60")
        if min(self.session_code_failures_per_address, self.session_code_failures_global,
               self.session_code_window_s, self.session_code_global_window_s,
               self.session_code_first_tries_global) < 1:
            raise ConfigError("session code limits and windows must be at least 1")
        if min(self.login_failures_per_account, self.login_failures_per_address,
               self.login_failures_global, self.login_device_failures,
               self.login_window_s) < 1:
            raise ConfigError("login limits and login_window_s must be at least 1")
        if not 0 < self.login_device_days <= 400:
            raise ConfigError("login_device_days must be more than 0 and at most 400")
        if not 1 <= self.argon2_concurrency <= 64:
            raise ConfigError("argon2_concurrency must be between 1 and 64 (each check "
                              "holds 64 MiB)")
        if not 0.1 <= self.argon2_wait_s <= 60:
            raise ConfigError("argon2_wait_s must be between 0.1 and 60")
        names = [d.name for d in self.siem_destinations]
        if len(set(names)) != len(names):
            raise ConfigError("siem destinations: each needs a name of its own")
        for dest in self.siem_destinations:
            dest.validate()
        if not (0 <= self.retention_recordings_days <= 36500
                and 0 <= self.retention_reports_days <= 36500):
            raise ConfigError("retention days must be between 0 (keep) and 36500")
        if not 1 <= self.retention_interval_minutes <= 7 * 24 * 60:
            raise ConfigError("retention_interval_minutes must be between 1 and 10080")
        if self.webhook_url:
            if not self.webhook_url.startswith(("https://", "http://")):
                raise ConfigError("webhook_url must be an http:// or https:// URL")
            if self.webhook_url.startswith("http://") and not _loopback_url(self.webhook_url):
                raise ConfigError("webhook_url must be https:// (plain http:// only to this "
                                  "machine: the alerts and reports it carries are not for "
                                  "the network in clear)")
            if len(self.webhook_secret) < 16:
                raise ConfigError("webhook_url needs a webhook_secret of at least 16 "
                                  "characters (receivers check the HMAC signature with it)")

        self._validate_reports()

    def _validate_reports(self) -> None:
        """The report schedule's settings (reports, issue 14)."""
        if self.report_schedule not in ("", "daily", "weekly"):
            raise ConfigError('report_schedule must be "", "daily" or "weekly"')
        if not 0 <= self.report_hour_utc <= 23:
            raise ConfigError("report_hour_utc must be between 0 and 23")
        if any(v not in ("webhook", "smtp") for v in self.report_via):
            raise ConfigError('report_via lists "webhook" and/or "smtp"')
        if self.report_schedule and not self.report_via:
            raise ConfigError("report_schedule needs report_via (webhook, smtp)")
        if "webhook" in self.report_via and (not self.webhook_url
                                             or len(self.webhook_secret) < 16):
            raise ConfigError("report_via webhook needs webhook_url and webhook_secret")
        if "smtp" in self.report_via:
            if not self.smtp_host or not self.smtp_from or not self.report_recipients:
                raise ConfigError("report_via smtp needs smtp_host, smtp_from and "
                                  "report_recipients")
            if len(self.report_recipients) > 100 or any(
                    not re.fullmatch(r"[^@\s,<>]{1,64}@[^@\s,<>]{1,255}", r)
                    for r in [*self.report_recipients, self.smtp_from]):
                raise ConfigError("report_recipients and smtp_from are plain e-mail "
                                  "addresses (at most 100 recipients)")
        if self.smtp_security not in ("starttls", "tls", "none"):
            raise ConfigError('smtp_security must be "starttls", "tls" or "none"')
        if (self.smtp_security == "none" and self.smtp_host
                and self.smtp_host not in ("127.0.0.1", "::1", "localhost")):
            raise ConfigError('smtp_security "none" (a password and reports in clear) is '
                              "only for an SMTP server on this machine")
        if not 1 <= self.report_retry_s <= 3600:
            raise ConfigError("report_retry_s must be between 1 and 3600 seconds")
        if not 1 <= self.smtp_port <= 65535 or not 1 <= self.smtp_timeout_s <= 300:
            raise ConfigError("smtp_port must be a port, smtp_timeout_s 1 to 300 seconds")

    def shown(self) -> dict[str, Any]:
        """The effective settings with secrets hidden, for ``config show``."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = str(value) if isinstance(value, Path) else value
        out["public_url"] = self.effective_public_url
        out["database_url"] = hide_url_password(self.effective_database_url)
        out["webhook_url"] = hide_url_password(self.webhook_url)
        out["webhook_secret"] = "***" if self.webhook_secret else ""
        out["smtp_password"] = "***" if self.smtp_password else ""
        out["siem_destinations"] = [d.shown() for d in self.siem_destinations]
        return out


def _loopback_url(url: str) -> bool:
    """Whether ``url`` names this machine (127.0.0.0/8, ::1, localhost)."""
    import ipaddress
    from urllib.parse import urlsplit

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hide_url_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _coerce(name: str, raw: Any, kind: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    if "SiemDestination" in kind_name:
        return siem_destinations(raw)
    try:
        if "Path" in kind_name:
            return Path(str(raw)).expanduser()
        if "bool" in kind_name:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(text)
            return text in ("1", "true", "yes", "on")
        if "list" in kind_name:
            if isinstance(raw, list):
                return [str(x) for x in raw]
            return [x.strip() for x in str(raw).split(",") if x.strip()]
        if "int" in kind_name:
            return int(raw)
        if "float" in kind_name:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot read {raw!r} as {kind_name}") from exc


def _sections(config_file: Path, table: dict[str, Any]) -> dict[str, Any]:
    """``[siem]`` and ``[retention]`` as the flat settings they stand for."""
    table = dict(table)
    siem = table.pop("siem", None)
    if siem is not None:
        if not isinstance(siem, dict) or set(siem) - {"destinations"}:
            raise ConfigError(f"config file {config_file}: [siem] holds only "
                              "[[siem.destinations]] tables")
        table["siem_destinations"] = siem.get("destinations", [])
    retention = table.pop("retention", None)
    if retention is not None:
        known = ("recordings_days", "reports_days", "interval_minutes")
        if not isinstance(retention, dict) or set(retention) - set(known):
            raise ConfigError(f"config file {config_file}: [retention] holds "
                              f"{', '.join(known)}")
        table.update({f"retention_{k}": v for k, v in retention.items()})
    return table


def load(
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> RelayConfig:
    """Defaults < TOML file < environment < explicit overrides (command-line flags)."""
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in dataclasses.fields(RelayConfig)}
    values: dict[str, Any] = {}

    data_dir_raw = (overrides or {}).get("data_dir") or env.get(ENV_PREFIX + "DATA_DIR")
    data_dir = Path(data_dir_raw).expanduser() if data_dir_raw else default_data_dir()
    if config_file is None and env.get(ENV_PREFIX + "CONFIG"):
        config_file = Path(env[ENV_PREFIX + "CONFIG"])
    if config_file is None and (data_dir / "relay.toml").exists():
        config_file = data_dir / "relay.toml"
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {config_file} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file}: {exc}") from exc
        table = _sections(config_file, table)
        for name, raw in table.items():
            if name not in fields:
                raise ConfigError(f"config file {config_file}: unknown setting {name!r}")
            values[name] = _coerce(name, raw, fields[name].type)
    for name, f in fields.items():
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(name, raw, f.type)
    for name, raw in (overrides or {}).items():
        if raw is not None:
            values[name] = _coerce(name, raw, fields[name].type)
    values["data_dir"] = values.get("data_dir", data_dir)
    cfg = RelayConfig(**values)
    cfg.validate()
    return cfg
