"""The diagnostics settings: what to resolve, what to reach, and the rules' thresholds.

They live in the agent's config file (TOML), whose path is ``--config``, else
``$BACKLINE_AGENT_CONFIG``, else ``agent.toml`` in the state directory. This module
reads only its own two tables, ``[diagnostics]`` and ``[thresholds]``, so other parts
of the agent (policy, for one) can keep their tables in the same file. Unknown keys
inside these two tables are refused: a misspelt threshold silently ignored would
make a rule quietly stop firing.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The report schema (and what it pulls in) is imported only to check ``disabled``:
# the idle agent reads this file for the health check's interval alone.

ENV_CONFIG = "BACKLINE_AGENT_CONFIG"
CONFIG_NAME = "agent.toml"

# name -> (default, what it means). Rules refer to them as "${thresholds.name}".
THRESHOLDS: dict[str, tuple[float, str]] = {
    "disk_used_pct": (90, "a mount this full (percent) is almost full"),
    "disk_critical_pct": (98, "a mount this full (percent) is full"),
    "inode_used_pct": (90, "a file system with this share of inodes used (percent)"),
    "memory_used_pct": (90, "memory in use (percent, of total minus available)"),
    "memory_pressure_avg60": (10, "Linux PSI: share of time tasks stalled on memory (percent)"),
    "swap_used_pct": (80, "swap in use (percent)"),
    "load_per_cpu": (2.0, "5-minute load average per logical CPU"),
    "cpu_pct": (95, "CPU busy over the sample (percent)"),
    "iowait_pct": (30, "CPU time waiting for I/O over the sample (percent)"),
    "clock_skew_s": (30, "clock offset against the relay (seconds) that breaks codes"),
    "clock_skew_critical_s": (300, "clock offset (seconds) that breaks TLS and Kerberos"),
    "cert_expiry_days": (14, "warn when a certificate expires within this many days"),
    "uptime_days": (60, "running this long without a reboot (days)"),
    "zombie_processes": (20, "zombie processes (parents not reaping)"),
    "process_mem_pct": (50, "one process holding this share of memory (percent)"),
    "log_errors": (40, "error-level log entries among the most recent (count)"),
    "interface_error_pct": (1.0, "packets with errors or drops on an interface (percent)"),
    "dns_slow_ms": (1000, "a DNS lookup slower than this (milliseconds)"),
}
DEFAULT_THRESHOLDS: dict[str, float] = {k: float(v) for k, (v, _) in THRESHOLDS.items()}

MAX_NAMES = 16
MAX_ENDPOINTS = 16


class ConfigError(ValueError):
    """A diagnostics setting that cannot work; the message names the file and key."""


@dataclass
class DiagnosticsConfig:
    """Everything one diagnostics run needs to know besides the machine itself."""

    dns_names: list[str] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    # Collectors the customer switched off (privacy): reported as unavailable.
    disabled: list[str] = field(default_factory=list)
    timeout_s: float = 1.5
    network_timeout_s: float = 1.2
    # Seconds between scheduled health checks; 0 switches them off.
    health_interval_s: float = 300.0
    # From the enrollment, when there is one: the relay is always an endpoint to check.
    relay_url: str | None = None
    relay_fingerprint: str | None = None
    agent_id: str | None = None
    source: str = "defaults"


_DIAG_KEYS = {"dns_names", "endpoints", "disabled", "timeout_s", "network_timeout_s",
              "health_interval_s"}


def config_path(state_root: Path | None, explicit: Path | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Path | None, bool]:
    """Where the config file is, and whether it must exist (it must when named)."""
    env = os.environ if environ is None else environ
    if explicit is not None:
        return explicit, True
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser(), True
    if state_root is not None:
        return state_root / CONFIG_NAME, False
    return None, False


def load_config(state_root: Path | None = None, explicit: Path | None = None,
                environ: Mapping[str, str] | None = None) -> DiagnosticsConfig:
    """Read the config file (if any) and the enrollment (if any) into one config."""
    path, required = config_path(state_root, explicit, environ)
    table: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh)
        except FileNotFoundError as exc:
            if required:
                raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror or exc}") from exc
    cfg = from_tables(table, str(path) if table else "defaults")
    if state_root is not None:
        _add_enrollment(cfg, state_root)
    return cfg


def from_tables(table: Mapping[str, Any], source: str = "defaults") -> DiagnosticsConfig:
    """Build a config from parsed TOML (``[diagnostics]`` and ``[thresholds]``)."""
    cfg = DiagnosticsConfig(source=source)
    diag = table.get("diagnostics", {})
    limits = table.get("thresholds", {})
    if not isinstance(diag, dict) or not isinstance(limits, dict):
        raise ConfigError(f"{source}: [diagnostics] and [thresholds] must be tables")
    for key, value in diag.items():
        if key not in _DIAG_KEYS:
            raise ConfigError(f"{source}: unknown setting diagnostics.{key} "
                              f"(known: {', '.join(sorted(_DIAG_KEYS))})")
        if key in ("dns_names", "endpoints", "disabled"):
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{source}: diagnostics.{key} must be a list of strings")
            limit = MAX_ENDPOINTS if key == "endpoints" else MAX_NAMES
            if len(value) > limit:
                raise ConfigError(f"{source}: diagnostics.{key} holds at most {limit} entries")
            setattr(cfg, key, [v.strip() for v in value])
        else:
            floor = 0 if key == "health_interval_s" else 0.05  # 0: no scheduled check
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    floor <= value <= 86400):
                raise ConfigError(f"{source}: diagnostics.{key} must be a number of seconds "
                                  f"from {floor:g} to 86400")
            setattr(cfg, key, float(value))
    for key, value in limits.items():
        if key not in DEFAULT_THRESHOLDS:
            raise ConfigError(f"{source}: unknown threshold {key!r} "
                              f"(known: {', '.join(sorted(DEFAULT_THRESHOLDS))})")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{source}: threshold {key} must be a number")
        cfg.thresholds[key] = float(value)
    for endpoint in cfg.endpoints:
        parse_endpoint(endpoint)  # raises ConfigError for a malformed one
    if cfg.disabled:
        _check_disabled(cfg.disabled, source)
    if cfg.network_timeout_s > cfg.timeout_s:
        cfg.network_timeout_s = cfg.timeout_s * 0.8
    return cfg


def _add_enrollment(cfg: DiagnosticsConfig, state_root: Path) -> None:
    import json

    try:
        data = json.loads((state_root / "enrollment.json").read_text())
    except (OSError, ValueError):
        return
    if isinstance(data, dict) and isinstance(data.get("relay_url"), str):
        cfg.relay_url = data["relay_url"]
        # The relay's key pin (or, not yet migrated, its certificate's hash). With a
        # pinned CA there is no leaf pin to check here: the CA is not the system's.
        pins = data.get("pins")
        fingerprint = data.get("fingerprint")
        if data.get("ca_pem"):
            fingerprint = None
        elif isinstance(pins, list) and pins and isinstance(pins[0], str):
            fingerprint = pins[0]
        cfg.relay_fingerprint = fingerprint if isinstance(fingerprint, str) and fingerprint \
            else None
        agent_id = data.get("agent_id")
        cfg.agent_id = agent_id if isinstance(agent_id, str) else None


@dataclass(frozen=True)
class Endpoint:
    """One reachability target: ``tcp`` (host:port), ``http`` or ``https`` (a URL)."""

    target: str
    kind: str
    host: str
    port: int
    path: str = "/"
    pin: str | None = None


def parse_endpoint(text: str, pin: str | None = None) -> Endpoint:
    """``host:port``, ``[v6]:port``, ``http://...`` or ``https://...``."""
    from urllib.parse import urlsplit

    raw = text.strip()
    if "://" in raw:
        parts = urlsplit(raw)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"endpoint {raw!r}: only http:// and https:// URLs, or host:port")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise ConfigError(f"endpoint {raw!r}: bad port") from exc
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return Endpoint(raw, parts.scheme, parts.hostname, port, path, pin)
    host, sep, port_text = raw.rpartition(":")
    host = host.strip("[]")
    # ASCII digits only: "²".isdigit() is true (int() then raises) and "٣" is port 3
    if (not sep or not host or not port_text.isascii() or not port_text.isdigit()
            or not 0 < int(port_text) < 65536):
        raise ConfigError(f"endpoint {raw!r}: expected host:port or an http(s) URL")
    return Endpoint(raw, "tcp", host, int(port_text), "/", pin)


def _check_disabled(disabled: Any, source: str) -> None:
    from backline.common.diagnostics.schema import SECTIONS

    unknown = set(disabled) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: diagnostics.disabled names unknown collectors "
                          f"{sorted(unknown)} (known: {', '.join(SECTIONS)})")
