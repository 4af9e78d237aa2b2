"""The collectors: each one describes one side of the machine as a report section.

A collector is an async function of a :class:`Context` returning ``(data, summary)``;
the engine runs them all at once, each under its own timeout. Blocking calls go
through :func:`runner.in_thread`, never straight onto the event loop. A collector that
cannot work on this machine raises :class:`Unavailable` (not an error: there is no
systemd in a container). Whatever it returns must match :data:`schema.FIELDS`.

This module holds the host collectors (system, uptime, CPU, memory, disks,
processes) and the registry; network ones are in :mod:`.netcheck`, software ones
in :mod:`.software`.
"""

from __future__ import annotations

import os
import platform
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psutil

from backline.agent.diagnostics.config import DiagnosticsConfig
from backline.agent.diagnostics.runner import in_thread
from backline.common import __version__
from backline.common.diagnostics.schema import CHEAP_SECTIONS, clean, number

Result = tuple[dict[str, Any], str]


class Unavailable(Exception):
    """This collector does not apply here; ``data`` is what it could still say."""

    def __init__(self, reason: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.data = data or {}


@dataclass(frozen=True)
class ClockReference:
    """The relay's clock as last heard over the control socket. The monotonic
    reading lets a later run project it forward even if the local clock was stepped."""

    relay_time: float
    local_time: float
    monotonic: float

    @classmethod
    def now(cls, relay_time: float) -> ClockReference:
        return cls(relay_time, time.time(), time.monotonic())

    def offset_s(self) -> float:
        """How far the relay's clock is ahead of ours (negative: ours is ahead)."""
        relay_now = self.relay_time + (time.monotonic() - self.monotonic)
        return relay_now - time.time()


@dataclass
class Context:
    config: DiagnosticsConfig
    timeout_s: float
    clock: ClockReference | None = None
    # False in the scheduled health check: no probes leave the machine.
    network: bool = True


CollectFn = Callable[[Context], Awaitable[Result]]


@dataclass(frozen=True)
class Collector:
    name: str
    run: CollectFn

    @property
    def cheap(self) -> bool:
        """Local, fast, safe to run every few minutes for proactive health."""
        return self.name in CHEAP_SECTIONS


def _pct(part: float, whole: float) -> float:
    return number(100.0 * part / whole, 1) if whole else 0.0


# --- system and uptime --------------------------------------------------------------


def _os_release() -> str:
    system = platform.system()
    if system == "Linux":
        try:
            info = platform.freedesktop_os_release()
            return info.get("PRETTY_NAME") or info.get("NAME") or "Linux"
        except OSError:
            return "Linux"
    if system == "Darwin":
        return f"macOS {platform.mac_ver()[0]}".strip()
    if system == "Windows":
        release, version, _, _ = platform.win32_ver()
        return f"Windows {release} ({version})"
    return system


def _system() -> Result:
    container = os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
    try:
        users = len({u.name for u in psutil.users()})
    except (OSError, psutil.Error):
        users = 0
    data = {
        "hostname": clean(socket.gethostname(), 256),
        "os": clean(platform.system(), 64),
        "os_release": clean(_os_release(), 128),
        "kernel": clean(platform.release(), 128),
        "arch": clean(platform.machine(), 32),
        "agent_version": __version__,
        "python": platform.python_version(),
        "container": container,
        "reboot_required": os.path.exists("/var/run/reboot-required"),
        "users": users,
    }
    summary = f"{data['os_release']}, {data['os']} {data['kernel']} {data['arch']}"
    return data, summary + (" (container)" if container else "")


async def collect_system(ctx: Context) -> Result:
    return await in_thread(_system, timeout=ctx.timeout_s, key="system")


def _uptime() -> Result:
    boot = psutil.boot_time()
    up = max(0.0, time.time() - boot)
    days, rest = divmod(int(up), 86400)
    return ({"boot_time": number(boot, 0), "uptime_s": number(up, 0),
             "uptime_days": number(up / 86400, 2)},
            f"up {days} d {rest // 3600} h {rest % 3600 // 60} min")


async def collect_uptime(ctx: Context) -> Result:
    return await in_thread(_uptime, timeout=ctx.timeout_s, key="uptime")


# --- CPU and memory ------------------------------------------------------------------

CPU_SAMPLE_S = 0.25


def _cpu() -> Result:
    times = psutil.cpu_times_percent(interval=CPU_SAMPLE_S)
    busy = number(100.0 - times.idle, 1)
    iowait = getattr(times, "iowait", None)
    logical = psutil.cpu_count() or 1
    try:
        load_1, load_5, load_15 = psutil.getloadavg()
    except (OSError, AttributeError):
        load_1 = load_5 = load_15 = 0.0
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, FileNotFoundError):
        freq = None
    data = {"logical": logical, "physical": psutil.cpu_count(logical=False),
            "percent": max(0.0, busy),
            "iowait_pct": None if iowait is None else number(iowait, 1),
            "load_1": number(load_1), "load_5": number(load_5), "load_15": number(load_15),
            "load_per_cpu": number(load_5 / logical),
            "freq_mhz": number(freq.current, 0) if freq and freq.current else None}
    return data, (f"{data['percent']}% busy on {logical} CPUs, "
                  f"load {data['load_1']} / {data['load_5']} / {data['load_15']}")


async def collect_cpu(ctx: Context) -> Result:
    return await in_thread(_cpu, timeout=ctx.timeout_s, key="cpu")


def _memory_pressure() -> float | None:
    """Linux PSI: the share of the last minute some task stalled waiting for memory."""
    try:
        with open("/proc/pressure/memory") as fh:
            for line in fh:
                if line.startswith("some "):
                    fields = dict(p.split("=", 1) for p in line.split()[1:] if "=" in p)
                    return float(fields["avg60"])
    except (OSError, ValueError, KeyError):
        return None
    return None


def _memory() -> Result:
    mem = psutil.virtual_memory()
    swap = psutil.swap_memory()
    used_pct = _pct(mem.total - mem.available, mem.total)
    data = {"total_bytes": int(mem.total), "available_bytes": int(mem.available),
            "used_pct": used_pct, "swap_total_bytes": int(swap.total),
            "swap_used_bytes": int(swap.used), "swap_used_pct": _pct(swap.used, swap.total),
            "pressure_some_avg60": _memory_pressure()}
    gib = 1024 ** 3
    summary = (f"{used_pct}% of {mem.total / gib:.1f} GiB used, "
               f"{mem.available / gib:.1f} GiB available")
    if swap.total:
        summary += f"; swap {data['swap_used_pct']}% of {swap.total / gib:.1f} GiB"
    return data, summary


async def collect_memory(ctx: Context) -> Result:
    return await in_thread(_memory, timeout=ctx.timeout_s, key="memory")


# --- disks ---------------------------------------------------------------------------

MAX_MOUNTS = 32
_SKIP_FS = {"squashfs", "iso9660", "udf", "devfs", "autofs", "overlay-ro"}


def _disk() -> Result:
    mounts: list[dict[str, Any]] = []
    seen: set[int] = set()
    parts = sorted(psutil.disk_partitions(all=False), key=lambda p: len(p.mountpoint))
    for part in parts:
        if part.fstype in _SKIP_FS or len(mounts) >= MAX_MOUNTS:
            continue
        try:
            st_dev = os.stat(part.mountpoint).st_dev
            if st_dev in seen:  # the same file system bind-mounted again
                continue
            seen.add(st_dev)
            usage = psutil.disk_usage(part.mountpoint)
        except (OSError, psutil.Error):
            continue
        inodes: float | None = None
        if hasattr(os, "statvfs"):
            try:
                vfs = os.statvfs(part.mountpoint)
                if vfs.f_files:
                    inodes = _pct(vfs.f_files - vfs.f_ffree, vfs.f_files)
            except OSError:
                inodes = None
        opts = set(part.opts.split(","))
        mounts.append({"device": clean(part.device, 256), "mountpoint": clean(part.mountpoint, 256),
                       "fstype": clean(part.fstype, 32), "total_bytes": int(usage.total),
                       "free_bytes": int(usage.free), "used_pct": number(usage.percent, 1),
                       "inodes_used_pct": inodes, "read_only": "ro" in opts})
    fullest = max(mounts, key=lambda m: m["used_pct"], default=None)
    summary = f"{len(mounts)} file systems"
    if fullest:
        summary += f"; fullest {fullest['mountpoint']} at {fullest['used_pct']}%"
    return {"mounts": mounts, "mount_count": len(mounts)}, summary


async def collect_disk(ctx: Context) -> Result:
    return await in_thread(_disk, timeout=ctx.timeout_s, key="disk")


# --- processes -----------------------------------------------------------------------

TOP_N = 10
PROC_SAMPLE_S = 0.3


def _processes() -> Result:
    procs: list[psutil.Process] = []
    zombies = 0
    for proc in psutil.process_iter(["name", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                zombies += 1
                continue
            proc.cpu_percent(None)
            procs.append(proc)
        except psutil.Error:
            continue
    time.sleep(PROC_SAMPLE_S)
    rows: list[tuple[psutil.Process, float, float, int]] = []
    for proc in procs:
        try:
            with proc.oneshot():
                rows.append((proc, proc.cpu_percent(None), proc.memory_percent(),
                             proc.memory_info().rss))
        except psutil.Error:
            continue

    def describe(row: tuple[psutil.Process, float, float, int]) -> dict[str, Any]:
        proc, cpu, mem, rss = row
        name = proc.info.get("name") or "?"
        try:
            user = proc.username()
        except (psutil.Error, KeyError, OSError):
            user = "?"
        # Names only: command lines can carry passwords and tokens.
        return {"pid": proc.pid, "name": clean(name, 128), "user": clean(user, 64),
                "cpu_pct": number(cpu, 1), "mem_pct": number(mem, 1), "rss_bytes": int(rss)}

    top_cpu = [describe(r) for r in sorted(rows, key=lambda r: -r[1])[:TOP_N]]
    top_mem = [describe(r) for r in sorted(rows, key=lambda r: -r[3])[:TOP_N]]
    data = {"count": len(procs) + zombies, "zombies": zombies, "top_cpu": top_cpu,
            "top_memory": top_mem}
    summary = f"{data['count']} processes"
    if top_cpu:
        summary += f"; busiest {top_cpu[0]['name']} ({top_cpu[0]['cpu_pct']}% CPU)"
    if top_mem:
        summary += f"; largest {top_mem[0]['name']} ({top_mem[0]['mem_pct']}% memory)"
    return data, summary


async def collect_processes(ctx: Context) -> Result:
    return await in_thread(_processes, timeout=ctx.timeout_s, key="processes")


# --- registry ------------------------------------------------------------------------


def registry() -> list[Collector]:
    """All collectors, in report order (imported late: they import this module)."""
    from backline.agent.diagnostics import netcheck, software

    return [
        Collector("system", collect_system),
        Collector("uptime", collect_uptime),
        Collector("cpu", collect_cpu),
        Collector("memory", collect_memory),
        Collector("disk", collect_disk),
        Collector("network", netcheck.collect_network),
        Collector("dns", netcheck.collect_dns),
        Collector("endpoints", netcheck.collect_endpoints),
        Collector("clock", netcheck.collect_clock),
        Collector("processes", collect_processes),
        Collector("services", software.collect_services),
        Collector("logs", software.collect_logs),
        Collector("proxy", software.collect_proxy),
        Collector("browsers", software.collect_browsers),
    ]
