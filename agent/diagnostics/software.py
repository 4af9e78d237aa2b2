"""Software collectors: failed services, recent error logs, proxy settings, browsers.

These ask the system's own tools (systemctl, journalctl, ``--version``) with a
timeout each and no shell, and fall back or report "unavailable" where a tool is
missing: a container has no running systemd, macOS has no journal. Everything they
read is bounded (50 log lines of at most 500 characters, and so on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import plistlib
import re
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from backline.agent.diagnostics.collectors import Context, Result, Unavailable
from backline.agent.diagnostics.runner import in_thread, run_command, which
from backline.common.diagnostics.schema import clean

MAX_LOG_LINES = 50
MAX_SERVICES = 50

# --- services ------------------------------------------------------------------------


def _no_services(manager: str = "") -> dict[str, Any]:
    return {"available": False, "manager": manager, "failed": [], "failed_count": 0}


def _systemd_running() -> bool:
    return platform.system() == "Linux" and os.path.isdir("/run/systemd/system")


def _service(unit: Any, load: Any, active: Any, sub: Any, description: Any) -> dict[str, str]:
    return {"unit": clean(unit, 128), "load": clean(load, 32), "active": clean(active, 32),
            "sub": clean(sub, 32), "description": clean(description, 200)}


async def collect_services(ctx: Context) -> Result:
    if not which("systemctl"):
        raise Unavailable("no service manager this agent knows (systemd) on this machine",
                          _no_services())
    if not _systemd_running():
        raise Unavailable("systemd is installed but is not the init system here "
                          "(a container?)", _no_services("systemd"))
    timeout = ctx.timeout_s * 0.8
    result = await run_command(["systemctl", "--failed", "--output=json", "--no-pager",
                                "--plain", "--no-legend"], timeout)
    failed: list[dict[str, str]] = []
    try:
        rows = json.loads(result.stdout) if result.returncode == 0 else None
    except ValueError:
        rows = None
    if isinstance(rows, list):
        failed = [_service(r.get("unit", ""), r.get("load", ""), r.get("active", ""),
                           r.get("sub", ""), r.get("description", ""))
                  for r in rows if isinstance(r, dict)]
    else:  # older systemd: no JSON output for list-units
        text = await run_command(["systemctl", "--failed", "--no-pager", "--plain",
                                  "--no-legend"], timeout)
        if text.returncode != 0:
            raise RuntimeError(clean(text.stderr.strip() or "systemctl failed", 200))
        for line in text.stdout.splitlines():
            f = line.split(None, 4)
            if len(f) >= 4:
                failed.append(_service(*f[:4], f[4] if len(f) > 4 else ""))
    data = {"available": True, "manager": "systemd", "failed": failed[:MAX_SERVICES],
            "failed_count": len(failed)}
    if not failed:
        return data, "no failed services"
    return data, f"{len(failed)} failed: {', '.join(s['unit'] for s in failed[:4])}"


# --- logs ----------------------------------------------------------------------------

_ERROR_WORDS = re.compile(r"\b(error|err|crit|critical|alert|emerg|fatal|panic|fail(ed|ure)?)\b",
                          re.IGNORECASE)
_SYSLOG_FILES = ("/var/log/syslog", "/var/log/messages")
TAIL_BYTES = 256 * 1024


def _journal_entry(raw: dict[str, Any]) -> dict[str, Any]:
    message = raw.get("MESSAGE", "")
    if isinstance(message, list):  # journald sends non-UTF-8 messages as byte arrays
        message = bytes(b for b in message if isinstance(b, int) and 0 <= b < 256)
    try:
        when = dt.datetime.fromtimestamp(int(raw["__REALTIME_TIMESTAMP"]) / 1e6, dt.UTC)
        stamp = when.isoformat(timespec="seconds")
    except (KeyError, ValueError, TypeError, OverflowError):
        stamp = ""
    unit = raw.get("_SYSTEMD_UNIT") or raw.get("SYSLOG_IDENTIFIER") or raw.get("_COMM") or ""
    try:
        priority: int | None = int(raw.get("PRIORITY", ""))
    except (TypeError, ValueError):
        priority = None
    return {"time": stamp, "unit": clean(unit, 128), "priority": priority,
            "message": clean(message, 500)}


def _has_journal() -> bool:
    return bool(which("journalctl")) and (
        _systemd_running() or os.path.isdir("/var/log/journal"))


async def _journal(timeout: float) -> list[dict[str, Any]] | None:
    if not _has_journal():
        return None
    result = await run_command(["journalctl", "-p", "err", "-n", str(MAX_LOG_LINES),
                                "--since=-24h", "--output=json", "--no-pager", "-q"],
                               timeout, limit=512 * 1024)
    if result.returncode != 0:
        return None
    entries = []
    for line in result.stdout.splitlines()[-MAX_LOG_LINES:]:
        try:
            raw = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict):
            entries.append(_journal_entry(raw))
    return entries


def _syslog_tail() -> tuple[str, list[dict[str, Any]]] | None:
    for name in _SYSLOG_FILES:
        path = Path(name)
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - TAIL_BYTES))
                text = fh.read(TAIL_BYTES).decode("utf-8", "replace")
        except OSError:
            continue
        lines = [ln for ln in text.splitlines()[1:] if _ERROR_WORDS.search(ln)]
        entries = [{"time": "", "unit": "", "priority": None, "message": clean(ln, 500)}
                   for ln in lines[-MAX_LOG_LINES:]]
        return name, entries
    return None


async def collect_logs(ctx: Context) -> Result:
    entries = await _journal(ctx.timeout_s * 0.8)
    source = "journald"
    if entries is None:
        found = await in_thread(_syslog_tail, timeout=ctx.timeout_s, key="syslog")
        if found is None:
            raise Unavailable("no readable system log (journald or /var/log/syslog)",
                              {"source": "none", "entries": [], "error_count": 0})
        source, entries = found
    data = {"source": source, "entries": entries, "error_count": len(entries)}
    if not entries:
        return data, f"no recent errors ({source})"
    last = entries[-1]["message"][:80]
    return data, f"{len(entries)} recent error entries ({source}); last: {last}"


# --- proxy ---------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """Keep a proxy URL's user name but never its password."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return clean(url, 256)
        netloc = f"{parts.username}:***@{parts.hostname}"
        if parts.port:
            netloc += f":{parts.port}"
        return clean(urlunsplit(parts._replace(netloc=netloc)), 256)
    except ValueError:
        return "(unreadable proxy setting)"


def _proxy() -> Result:
    # Environment variables everywhere; the system settings too on macOS and Windows.
    found = urllib.request.getproxies()
    no_proxy = clean(found.pop("no", ""), 500)
    proxies = [{"scheme": clean(k, 16), "url": redact_url(v)} for k, v in sorted(found.items())]
    data = {"configured": bool(proxies), "proxies": proxies[:8], "no_proxy": no_proxy}
    if not proxies:
        return data, "no proxy configured"
    return data, "; ".join(f"{p['scheme']}: {p['url']}" for p in proxies[:3])


async def collect_proxy(ctx: Context) -> Result:
    return await in_thread(_proxy, timeout=ctx.timeout_s, key="proxy")


# --- browsers ------------------------------------------------------------------------

_ON_PATH = {
    "google-chrome": "chrome", "google-chrome-stable": "chrome", "chromium": "chromium",
    "chromium-browser": "chromium", "firefox": "firefox", "firefox-esr": "firefox",
    "microsoft-edge": "edge", "microsoft-edge-stable": "edge", "brave-browser": "brave",
    "opera": "opera", "vivaldi": "vivaldi",
}
_MAC_APPS = {
    "Google Chrome.app": "chrome", "Chromium.app": "chromium", "Firefox.app": "firefox",
    "Microsoft Edge.app": "edge", "Brave Browser.app": "brave", "Safari.app": "safari",
}
_WINDOWS_PATHS = {
    r"Google\Chrome\Application\chrome.exe": "chrome",
    r"Microsoft\Edge\Application\msedge.exe": "edge",
    r"Mozilla Firefox\firefox.exe": "firefox",
}
_VERSION = re.compile(r"(\d+)(?:\.\d+)+")


def _version_of(text: str) -> tuple[str | None, int | None]:
    match = _VERSION.search(text)
    if not match:
        return None, None
    return clean(match.group(0), 32), int(match.group(1))


def _find_browsers() -> list[tuple[str, str, str | None]]:
    """(kind, path, version if known without running anything)."""
    found: list[tuple[str, str, str | None]] = []
    seen: set[str] = set()
    system = platform.system()
    if system == "Darwin":
        for app, kind in _MAC_APPS.items():
            plist = Path("/Applications") / app / "Contents" / "Info.plist"
            try:
                info = plistlib.loads(plist.read_bytes())
            except (OSError, plistlib.InvalidFileException, ValueError):
                continue
            found.append((kind, str(plist.parent.parent), str(info.get(
                "CFBundleShortVersionString", "")) or None))
        return found
    if system == "Windows":
        roots = {os.environ.get(v, "") for v in ("PROGRAMFILES", "PROGRAMFILES(X86)",
                                                 "LOCALAPPDATA")}
        for root in sorted(r for r in roots if r):
            for rel, kind in _WINDOWS_PATHS.items():
                path = Path(root) / rel
                if path.exists() and str(path) not in seen:
                    seen.add(str(path))
                    found.append((kind, str(path), None))
        return found
    for name, kind in _ON_PATH.items():
        path = which(name)
        if path is None:
            continue
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        found.append((kind, path, None))
    return found


async def _version(path: str, known: str | None, timeout: float) -> str | None:
    """The version text: known already (macOS Info.plist), or from ``--version``
    (not on Windows, where browsers open a window instead of printing it)."""
    if known is not None or platform.system() == "Windows":
        return known
    try:
        result = await run_command([path, "--version"], timeout, limit=4096)
    except (OSError, TimeoutError):
        return None
    return (result.stdout or result.stderr).strip()[:200] or None


async def collect_browsers(ctx: Context) -> Result:
    found = await in_thread(_find_browsers, timeout=ctx.timeout_s, key="browsers")
    timeout = ctx.timeout_s * 0.8
    outputs = await asyncio.gather(*(_version(path, known, timeout)
                                     for _, path, known in found))
    installed = []
    for (kind, path, _), output in zip(found, outputs, strict=True):
        version, major = _version_of(output or "")
        installed.append({"name": kind, "path": clean(path, 256), "version": version,
                          "major": major})
    data = {"installed": installed, "count": len(installed)}
    if not installed:
        return data, "no supported browser found"
    return data, ", ".join(f"{b['name']} {b['version'] or '?'}" for b in installed[:5])
