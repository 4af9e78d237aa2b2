"""The signed local cache of approved fixes, for self-service (``backline-agent fix``).

A fix enters it when it passed every check here and ran (or when the relay pushed it
for self-service: a request with ``"cache": true``, checked the same way, not run).
What is kept is what arrived: the manifest (``as_dict``, scripts included) and its
signatures, one file per version (``fixes/<id>@<version>.json`` in the state dir,
0600, written atomically). Nothing in it is trusted because it is here: every use
parses it again and runs the same checks as a run from the relay (signatures against
the keys pinned *now*, revocation, platform, policy, parameters), so a file edited on
disk, a key no longer pinned or a version revoked since all stop it.

Bounded: entries over :data:`MAX_ENTRY_BYTES` are not kept; beyond
:data:`MAX_ENTRIES` versions the ones stored longest ago go first.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backline.common import keys

if TYPE_CHECKING:
    from backline.common.fixes.manifest import FixManifest

DIR_NAME = "fixes"
MAX_ENTRIES = 256
MAX_ENTRY_BYTES = 1024 * 1024
_NAME_RE = re.compile(r"([a-z][a-z0-9-]{1,47})@([1-9][0-9]{0,9})\.json")


@dataclass(frozen=True)
class Cached:
    """One cached version, as read from disk (not yet verified)."""

    fix_id: str
    version: int
    manifest: dict[str, Any]
    signatures: list[str]
    stored_at: float
    source: str
    path: Path


def folder(state_root: Path) -> Path:
    return state_root / DIR_NAME


def store(state_root: Path, manifest: FixManifest, signatures: list[str],
          source: str = "run") -> bool:
    """Keep a checked fix and its signatures; False when it is too big to keep."""
    body = {"manifest": manifest.as_dict(), "signatures": list(signatures),
            "stored_at": round(time.time(), 3), "source": source}
    data = (json.dumps(body, ensure_ascii=False, sort_keys=True) + "\n").encode()
    if len(data) > MAX_ENTRY_BYTES:
        return False
    where = folder(state_root)
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(where, 0o700)
    keys.write_private_file(where / f"{manifest.id}@{manifest.version}.json", data)
    _prune(where)
    return True


def _prune(where: Path) -> None:
    files = [p for p in where.iterdir() if _NAME_RE.fullmatch(p.name)]
    if len(files) <= MAX_ENTRIES:
        return
    def stored(p: Path) -> float:
        with contextlib.suppress(OSError):
            return p.stat().st_mtime
        return 0.0
    for old in sorted(files, key=stored)[:len(files) - MAX_ENTRIES]:
        with contextlib.suppress(OSError):
            old.unlink()


def _read(path: Path) -> Cached | None:
    match = _NAME_RE.fullmatch(path.name)
    if match is None:
        return None
    try:
        if path.stat().st_size > MAX_ENTRY_BYTES:
            return None
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    manifest, signatures = body.get("manifest"), body.get("signatures")
    if not isinstance(manifest, dict) or not isinstance(signatures, list) or not all(
            isinstance(s, str) for s in signatures):
        return None
    stored_at = body.get("stored_at", 0.0)
    return Cached(match[1], int(match[2]), manifest, signatures,
                  float(stored_at) if isinstance(stored_at, int | float) else 0.0,
                  str(body.get("source", "")), path)


def entries(state_root: Path) -> list[Cached]:
    """Every readable cached version, by id then version (newest first)."""
    where = folder(state_root)
    try:
        paths = sorted(where.iterdir())
    except OSError:
        return []
    found = [c for c in (_read(p) for p in paths) if c is not None]
    return sorted(found, key=lambda c: (c.fix_id, -c.version))


def find(state_root: Path, fix_id: str, version: int | None = None) -> Cached | None:
    """The cached ``fix_id`` at ``version``, or its newest cached version."""
    for cached in entries(state_root):
        if cached.fix_id == fix_id and (version is None or cached.version == version):
            return cached
    return None
