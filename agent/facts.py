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


def heartbeat_stats() -> dict[str, float]:
    """A few cheap numbers for the console; psutil is optional for a bare install."""
    try:
        import psutil
    except ImportError:
        return {}
    return {"cpu_pct": psutil.cpu_percent(interval=None),
            "mem_pct": psutil.virtual_memory().percent}
