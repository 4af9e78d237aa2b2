"""Network collectors: interfaces and routes, DNS, endpoint reachability, clock offset.

Every probe has its own deadline inside the collector's, so one dead endpoint costs
its own timeout and the section still lists every other endpoint. Names are
resolved in daemon threads (:func:`runner.in_thread`) rather than through the event
loop's resolver, whose pool thread could keep a one-shot ``diagnose`` from exiting.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import ipaddress
import platform
import socket
import ssl
import struct
import time
from typing import Any

import psutil

from backline.agent.diagnostics import relaytime
from backline.agent.diagnostics.collectors import ClockReference, Context, Result
from backline.agent.diagnostics.config import Endpoint, parse_endpoint
from backline.agent.diagnostics.runner import in_thread, run_command, which
from backline.common import __version__
from backline.common.diagnostics.schema import clean, number
from backline.common.tlspin import client_context, pin_matches

MAX_INTERFACES = 32
MAX_ROUTES = 50
MAX_ADDRESSES = 8

# --- relay clock, as heard on the control socket -------------------------------------

def remember_relay_time(relay_time: float) -> None:
    """Called when a control message carries ``relay_time``; later runs use it."""
    relaytime.remember(relay_time)


def relay_clock() -> ClockReference | None:
    seen = relaytime.seen()
    return None if seen is None else ClockReference(*seen)


# --- interfaces and routes -----------------------------------------------------------

RTF_UP, RTF_GATEWAY, RTF_REJECT = 0x1, 0x2, 0x200


def _ipv4_hex(text: str) -> str:
    return socket.inet_ntoa(struct.pack("<I", int(text, 16)))


def _proc_routes() -> list[dict[str, str]] | None:
    """Linux routing tables from /proc (no subprocess needed)."""
    routes: list[dict[str, str]] = []
    try:
        with open("/proc/net/route") as fh:
            lines = fh.read(256 * 1024).splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        f = line.split()
        if len(f) < 8 or f[0] == "lo":
            continue
        flags = int(f[3], 16)
        if not flags & RTF_UP or flags & RTF_REJECT:
            continue
        prefix = bin(int(f[7], 16)).count("1")
        gateway = _ipv4_hex(f[2]) if flags & RTF_GATEWAY else ""
        routes.append({"destination": f"{_ipv4_hex(f[1])}/{prefix}", "gateway": gateway,
                       "interface": clean(f[0], 32)})
    try:
        with open("/proc/net/ipv6_route") as fh:
            lines6 = fh.read(256 * 1024).splitlines()
    except OSError:
        lines6 = []
    for line in lines6:
        f = line.split()
        if len(f) < 10 or f[9] == "lo":
            continue
        flags = int(f[8], 16)
        if not flags & RTF_UP or flags & RTF_REJECT:
            continue
        dest = ipaddress.IPv6Address(bytes.fromhex(f[0]))
        if dest.is_multicast or dest.is_link_local:
            continue
        hop = ipaddress.IPv6Address(bytes.fromhex(f[4]))
        routes.append({"destination": f"{dest}/{int(f[1], 16)}",
                       "gateway": "" if hop.is_unspecified else str(hop),
                       "interface": clean(f[9], 32)})
    return routes


async def _netstat_routes(timeout: float) -> list[dict[str, str]] | None:
    """Elsewhere (macOS, BSD, Windows): the destination/gateway columns of netstat."""
    if not which("netstat"):
        return None
    result = await run_command(["netstat", "-rn"], timeout)
    routes = []
    for line in result.stdout.splitlines():
        f = line.split()
        if len(f) < 2 or not (f[0] == "default" or f[0][:1].isdigit() or ":" in f[0]):
            continue
        routes.append({"destination": clean(f[0], 64), "gateway": clean(f[1], 64),
                       "interface": clean(f[-1], 32)})
    return routes


def _is_default(destination: str) -> bool:
    return destination in ("default", "0.0.0.0", "0.0.0.0/0", "::/0", "::")  # noqa: S104


def _interfaces() -> list[dict[str, Any]]:
    stats = psutil.net_if_stats()
    addrs = psutil.net_if_addrs()
    counters = psutil.net_io_counters(pernic=True)
    out = []
    for name in sorted(stats)[:MAX_INTERFACES]:
        st = stats[name]
        io = counters.get(name)
        packets = (io.packets_recv + io.packets_sent) if io else 0
        bad = (io.errin + io.errout + io.dropin + io.dropout) if io else 0
        families = (socket.AF_INET, socket.AF_INET6)
        addresses = [clean(a.address, 64) for a in addrs.get(name, []) if a.family in families]
        out.append({"name": clean(name, 32), "is_up": bool(st.isup),
                    "is_loopback": "loopback" in (st.flags or "") or name.startswith("lo"),
                    "mtu": int(st.mtu), "speed_mbps": int(st.speed),
                    "addresses": addresses[:MAX_ADDRESSES],
                    "rx_errors": io.errin if io else 0, "tx_errors": io.errout if io else 0,
                    "rx_dropped": io.dropin if io else 0, "tx_dropped": io.dropout if io else 0,
                    "error_pct": round(100.0 * bad / packets, 3) if packets else 0.0})
    return out


async def collect_network(ctx: Context) -> Result:
    interfaces = await in_thread(_interfaces, timeout=ctx.timeout_s, key="interfaces")
    source = "none"
    routes: list[dict[str, str]] | None = None
    if platform.system() == "Linux":
        routes = await in_thread(_proc_routes, timeout=ctx.timeout_s, key="routes")
        source = "proc" if routes is not None else "none"
    if routes is None:
        routes = await _netstat_routes(ctx.timeout_s * 0.8)
        source = "netstat" if routes is not None else "none"
    default = next((r for r in routes or [] if _is_default(r["destination"])), None)
    up = [i for i in interfaces if i["is_up"] and not i["is_loopback"]]
    data = {"interfaces": interfaces, "routes": (routes or [])[:MAX_ROUTES],
            "has_default_route": None if routes is None else default is not None,
            "default_gateway": (default["gateway"] or None) if default else None,
            "route_source": source, "up_count": len(up)}
    summary = f"{len(up)} interface(s) up ({', '.join(i['name'] for i in up[:4]) or 'none'})"
    if routes is None:
        summary += "; routes unknown"
    elif default:
        summary += f"; default route via {default['gateway'] or default['interface']}"
    else:
        summary += "; no default route"
    return data, summary


# --- DNS -----------------------------------------------------------------------------


def _resolvers() -> list[str] | None:
    try:
        with open("/etc/resolv.conf") as fh:
            text = fh.read(64 * 1024)
    except OSError:
        return None
    found = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            found.append(clean(parts[1], 64))
    return found[:MAX_ADDRESSES]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def names_to_resolve(ctx: Context) -> list[str]:
    """The configured names, then the relay's and each endpoint's host name."""
    names = list(ctx.config.dns_names)
    for endpoint in endpoints_to_check(ctx):
        names.append(endpoint.host)
    out: list[str] = []
    for name in names:
        if name and not _is_ip(name) and name not in out:
            out.append(name)
    return out[:16]


_GAI_NOT_FOUND = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n)}


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        if exc.errno in _GAI_NOT_FOUND:
            return "not_found"
        if exc.errno == getattr(socket, "EAI_AGAIN", None):
            return "temporary"
    return "other"


def describe_error(exc: BaseException) -> str:
    """A short human phrase for a network error ("connection refused", ...)."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return f"name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


async def _lookup(name: str, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        infos = await in_thread(socket.getaddrinfo, name, None, 0, socket.SOCK_STREAM,
                                timeout=timeout, key=f"dns:{name}")
        addresses = list(dict.fromkeys(str(i[4][0]) for i in infos))
        error, kind = None, None
    except Exception as exc:
        addresses = []
        error = (f"timed out after {timeout:g} s" if isinstance(exc, TimeoutError)
                 else str(getattr(exc, "strerror", None) or exc))
        kind = _error_kind(exc)
    return {"name": clean(name, 256), "ok": error is None,
            "addresses": [clean(a, 64) for a in addresses[:MAX_ADDRESSES]],
            "ms": number((time.perf_counter() - started) * 1000, 1),
            "error": None if error is None else clean(error, 200), "error_kind": kind}


async def collect_dns(ctx: Context) -> Result:
    resolvers = await in_thread(_resolvers, timeout=ctx.timeout_s, key="resolv.conf")
    names = names_to_resolve(ctx)
    lookups = await asyncio.gather(*(_lookup(n, ctx.config.network_timeout_s) for n in names))
    failed = [x for x in lookups if not x["ok"]]
    data = {"resolvers": resolvers or [],
            "resolver_count": None if resolvers is None else len(resolvers),
            "lookups": list(lookups), "lookup_count": len(lookups), "failed_count": len(failed)}
    if not names:
        summary = "no names to resolve (configure diagnostics.dns_names)"
    else:
        summary = f"{len(lookups) - len(failed)} of {len(lookups)} names resolved"
        if failed:
            summary += f"; failing: {', '.join(x['name'] for x in failed[:3])}"
    if resolvers is not None:
        summary += f"; servers: {', '.join(resolvers[:3]) or 'none'}"
    return data, summary


# --- endpoints -----------------------------------------------------------------------


def endpoints_to_check(ctx: Context) -> list[Endpoint]:
    """The relay first (its certificate pinned), then the configured endpoints."""
    out: list[Endpoint] = []
    cfg = ctx.config
    if cfg.relay_url:
        try:
            relay = parse_endpoint(cfg.relay_url.rstrip("/") + "/healthz",
                                   pin=cfg.relay_fingerprint)
            out.append(relay)
        except ValueError:
            pass
    for text in cfg.endpoints:
        out.append(parse_endpoint(text))
    return out[:17]


def _safe_for_request(text: str) -> bool:
    return all(0x20 < ord(c) < 0x7F for c in text)


def _cert_facts(der: bytes | None) -> dict[str, Any]:
    if not der:
        return {}
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return {}
    not_after = cert.not_valid_after_utc
    days = (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400
    return {"cert_not_after": not_after.isoformat(), "cert_days_left": number(days, 1),
            "cert_subject": clean(cert.subject.rfc4514_string(), 200),
            "cert_issuer": clean(cert.issuer.rfc4514_string(), 200)}


async def _open(ip: str, ep: Endpoint, context: ssl.SSLContext | None
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if context is None:
        return await asyncio.open_connection(ip, ep.port)
    return await asyncio.open_connection(ip, ep.port, ssl=context, server_hostname=ep.host)


async def _http_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     ep: Endpoint) -> tuple[int | None, str | None]:
    """Send a GET, read the status line and headers only; return status and Date."""
    host = ep.host if ep.port in (80, 443) else f"{ep.host}:{ep.port}"
    if ":" in ep.host and not ep.host.startswith("["):
        host = f"[{ep.host}]" if ep.port in (80, 443) else f"[{ep.host}]:{ep.port}"
    request = (f"GET {ep.path} HTTP/1.1\r\nHost: {host}\r\n"
               f"User-Agent: backline-agent/{__version__} diagnostics\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n")
    writer.write(request.encode("ascii"))
    await writer.drain()
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 16 * 1024:
        chunk = await reader.read(4096)
        if not chunk:
            break
        head += chunk
    lines = head.split(b"\r\n")
    parts = lines[0].split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    date = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"date":
            date = value.strip().decode("latin-1")
    return status, date


async def check_endpoint(ep: Endpoint, timeout: float) -> dict[str, Any]:
    """Resolve, connect, (TLS: verify or check the pin, read the certificate), and for
    URLs ask for the page's status line. Never raises: failures are in the result."""
    result: dict[str, Any] = {
        "target": clean(ep.target, 256), "kind": ep.kind, "host": clean(ep.host, 256),
        "port": ep.port, "reachable": False, "ms": None, "error": None, "http_status": None,
        "tls_verified": None, "tls_error": None, "pinned": None, "cert_not_after": None,
        "cert_days_left": None, "cert_subject": None, "cert_issuer": None}
    started = time.perf_counter()
    stage = "resolving"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if not (_safe_for_request(ep.host) and _safe_for_request(ep.path)):
                raise ValueError("host or path has characters that cannot go in a request")
            if _is_ip(ep.host):
                ips = [ep.host]
            else:
                infos = await in_thread(socket.getaddrinfo, ep.host, ep.port, 0,
                                        socket.SOCK_STREAM, timeout=timeout,
                                        key=f"dns:{ep.host}:{ep.port}")
                ips = list(dict.fromkeys(str(i[4][0]) for i in infos))[:4]
            stage = "connecting"
            context: ssl.SSLContext | None = None
            if ep.kind == "https":
                context = client_context() if ep.pin else ssl.create_default_context()
            last: Exception | None = None
            for ip in ips:
                try:
                    reader, writer = await _open(ip, ep, context)
                    break
                except ssl.SSLCertVerificationError as exc:
                    # It answered; note why it is not trusted, then look at its certificate.
                    result["tls_verified"] = False
                    result["tls_error"] = clean(exc.verify_message or str(exc), 200)
                    reader, writer = await _open(ip, ep, client_context())
                    break
                except OSError as exc:
                    last = exc
            else:
                raise last or OSError("no address to connect to")
            result["reachable"] = True
            result["ms"] = number((time.perf_counter() - started) * 1000, 1)
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is not None:
                der = ssl_object.getpeercert(binary_form=True)
                result.update(_cert_facts(der))
                if ep.pin:
                    result["pinned"] = pin_matches(der or b"", ep.pin)
                elif result["tls_verified"] is None:
                    result["tls_verified"] = True
            if ep.kind in ("http", "https") and result["pinned"] is not False:
                stage = "waiting for the HTTP answer"
                result["http_status"], _ = await _http_head(reader, writer, ep)
    except TimeoutError:
        result["error"] = f"timed out after {timeout:g} s while {stage}"
    except (OSError, ssl.SSLError, ValueError, UnicodeError) as exc:
        if result["reachable"]:
            result["error"] = clean(f"while {stage}: {describe_error(exc)}", 200)
        else:
            result["error"] = clean(describe_error(exc), 200)
    finally:
        if writer is not None:
            writer.transport.abort()
    return result


async def collect_endpoints(ctx: Context) -> Result:
    endpoints = endpoints_to_check(ctx)
    checks = await asyncio.gather(*(check_endpoint(e, ctx.config.network_timeout_s)
                                    for e in endpoints))
    down = [c for c in checks if not c["reachable"]]
    data = {"checks": list(checks), "check_count": len(checks), "unreachable_count": len(down)}
    if not checks:
        return data, "no endpoints configured (diagnostics.endpoints)"
    summary = f"{len(checks) - len(down)} of {len(checks)} reachable"
    if down:
        summary += f"; unreachable: {', '.join(c['target'] for c in down[:3])}"
    return data, summary


# --- clock ---------------------------------------------------------------------------


async def _relay_http_offset(ctx: Context) -> float | None:
    """Offset from the relay's HTTP ``Date`` header (one-second resolution), over a
    connection whose certificate must match the pin."""
    cfg = ctx.config
    if not cfg.relay_url or not cfg.relay_fingerprint:
        return None
    ep = parse_endpoint(cfg.relay_url.rstrip("/") + "/healthz", pin=cfg.relay_fingerprint)
    writer = None
    try:
        async with asyncio.timeout(cfg.network_timeout_s):
            ip = ep.host
            if not _is_ip(ip):
                infos = await in_thread(socket.getaddrinfo, ep.host, ep.port, 0,
                                        socket.SOCK_STREAM, timeout=cfg.network_timeout_s,
                                        key=f"dns:{ep.host}:{ep.port}:clock")
                ip = str(infos[0][4][0])
            reader, writer = await _open(ip, ep, client_context())
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            if not pin_matches(der or b"", ep.pin or ""):
                return None
            sent = time.time()
            _, date = await _http_head(reader, writer, ep)
            received = time.time()
    except (OSError, TimeoutError, ssl.SSLError, ValueError, AttributeError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()
    if not date:
        return None
    try:
        relay_time = email.utils.parsedate_to_datetime(date).timestamp()
    except (TypeError, ValueError):
        return None
    # The header is truncated to the second: +0.5 s centres the estimate.
    return relay_time + 0.5 - (sent + received) / 2


async def collect_clock(ctx: Context) -> Result:
    now = time.time()
    offset: float | None = None
    source = "none"
    if ctx.clock is not None:
        offset, source = ctx.clock.offset_s(), "control"
    elif ctx.network:
        offset = await _relay_http_offset(ctx)
        source = "relay-http" if offset is not None else "none"
    data = {"known": offset is not None, "source": source, "local_time": number(now, 3),
            "relay_time": None if offset is None else number(now + offset, 3),
            "offset_s": None if offset is None else number(offset, 3),
            "abs_offset_s": None if offset is None else number(abs(offset), 3)}
    if offset is None:
        return data, "unknown: no relay time available (not enrolled or relay unreachable)"
    direction = "behind" if offset > 0 else "ahead of"
    return data, f"this clock is {abs(offset):.2f} s {direction} the relay's ({source})"
