"""What the agent reports about its machine at enrollment: name, OS, architecture."""

from __future__ import annotations

import platform
import socket

from backline.common import __version__


def gather(hostname: str | None = None) -> dict[str, str]:
    return {
        "hostname": (hostname or socket.gethostname())[:256],
        "os": platform.system()[:256],
        "os_version": platform.release()[:256],
        "arch": platform.machine()[:256],
        "version": __version__,
    }


_cpu_last: tuple[int, int] | None = None  # (busy, total) jiffies at the last heartbeat


def _proc_stats() -> dict[str, float] | None:
    """On Linux, straight from ``/proc`` (what psutil reads), so the idle agent need not
    load psutil for two numbers: CPU busy since the last call, memory in use."""
    global _cpu_last
    try:
        with open("/proc/stat", "rb") as fh:
            ticks = [int(v) for v in fh.readline().split()[1:]]
        with open("/proc/meminfo", "rb") as fh:
            mem = {k.rstrip(b":"): int(v) for k, v, *_ in
                   (line.split() for line in fh if line.count(b" ") >= 1)}
    except (OSError, ValueError):
        return None
    if len(ticks) < 5 or b"MemTotal" not in mem or b"MemAvailable" not in mem:
        return None
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    busy = total - idle
    last, _cpu_last = _cpu_last, (busy, total)
    cpu = 0.0
    if last is not None and total > last[1]:
        cpu = round(100.0 * (busy - last[0]) / (total - last[1]), 1)
    used = mem[b"MemTotal"] - mem[b"MemAvailable"]
    return {"cpu_pct": max(0.0, min(cpu, 100.0)),
            "mem_pct": round(100.0 * used / max(mem[b"MemTotal"], 1), 1)}


def heartbeat_stats() -> dict[str, float]:
    """A few cheap numbers for the console: from ``/proc`` where there is one, else
    psutil (optional for a bare install)."""
    stats = _proc_stats()
    if stats is not None:
        return stats
    try:
        import psutil
    except ImportError:
        return {}
    return {"cpu_pct": psutil.cpu_percent(interval=None),
            "mem_pct": psutil.virtual_memory().percent}
