"""Content-addressed blobs (recordings, diagnostics reports) in a local folder.

A blob's name is its SHA-256, so what the audit trail says was received can be
checked against what is kept. Files are 0600 and written atomically.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from backline.common.keys import write_private_file

_NAME = re.compile(r"^[0-9a-f]{64}$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, digest: str) -> Path:
        if not _NAME.fullmatch(digest):
            raise ValueError("a blob is named by a lowercase hex SHA-256")
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        path = self._path(digest)
        if not path.exists():
            write_private_file(path, data)
        return digest

    def get(self, digest: str) -> bytes:
        data = self._path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest} is damaged: its content no longer matches its name")
        return data
