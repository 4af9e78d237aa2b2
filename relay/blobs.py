"""Content-addressed blobs (recordings, diagnostics reports) in a local folder.

A blob's name is its SHA-256, so what the audit trail says was received can be
checked against what is kept. Files are 0600 and written atomically. A blob that is
written as it goes (a terminal's recording) is a :class:`BlobWriter`: appended to a
temporary file, hashed on the way, named when it is done.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO

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

    def writer(self) -> BlobWriter:
        """A blob written as it goes; :meth:`BlobWriter.commit` names it."""
        tmp = self.root / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        path = tmp / f"{secrets.token_hex(8)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return BlobWriter(self, path, os.fdopen(fd, "wb", buffering=0))

    def remove(self, digest: str) -> bool:
        """Delete a blob (retention, relay/retention.py); ``False`` if it was not there."""
        try:
            self._path(digest).unlink()
        except FileNotFoundError:
            return False
        return True

    def get(self, digest: str) -> bytes:
        data = self._path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest} is damaged: its content no longer matches its name")
        return data


class BlobWriter:
    """An unbuffered append-only blob: every :meth:`write` reaches the kernel before it
    returns, so a full disk is an ``OSError`` at the write that did not fit (not at a
    later flush), and what was written is exactly what :meth:`commit` names."""

    def __init__(self, store: BlobStore, path: Path, file: BinaryIO) -> None:
        self.store = store
        self.path = path
        self.file = file
        self.size = 0
        self._hash = hashlib.sha256()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            done = self.file.write(view)
            if not done:  # a raw file that took nothing: the disk did not take it
                raise OSError(28, "the blob store took no bytes")
            view = view[done:]
        self._hash.update(data)
        self.size += len(data)

    def commit(self) -> str:
        """Close, sync and name the blob by its SHA-256; the digest."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        digest = self._hash.hexdigest()
        final = self.store._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, final)
        return digest

    def abort(self) -> None:
        """Give the blob up (what was written is removed)."""
        try:
            self.file.close()
        except OSError:
            pass
        self.path.unlink(missing_ok=True)
