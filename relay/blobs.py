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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from backline.common.keys import write_private_file

_NAME = re.compile(r"^[0-9a-f]{64}$")
#: What one read of a blob takes at a time. A recording may be gigabytes (a flood is
#: recorded whole), so what reads a blob that is not bounded by its writer (hashing it,
#: serving it, indexing it) reads it in pieces: the relay's memory must not grow with it.
CHUNK = 1024 * 1024


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

    def path(self, digest: str) -> Path:
        """Where the blob named ``digest`` is (``ValueError`` if that is not a SHA-256)."""
        return self._path(digest)

    def hash_file(self, digest: str) -> tuple[str, int]:
        """The SHA-256 and size of the blob's file as it is now, read in pieces
        (``OSError`` if it cannot be read)."""
        with self._path(digest).open("rb", buffering=0) as f:
            return hash_stream(f)

    def lines(self, digest: str, max_line: int) -> Iterator[bytes]:
        """The blob's lines (:func:`read_lines`: each at most ``max_line`` bytes), read
        in pieces. The digest is checked as the file is read: after the last line, a
        blob that no longer matches its name raises ``ValueError``, so what a caller
        made of the lines must not be kept until the iteration has ended."""
        h = hashlib.sha256()
        with self._path(digest).open("rb", buffering=CHUNK) as f:
            yield from read_lines(f, max_line, h)
        if h.hexdigest() != digest:
            raise ValueError(f"blob {digest} is damaged: its content no longer matches its name")

    def get(self, digest: str) -> bytes:
        """The whole blob, checked: for blobs their writer bounds (a diagnostics report,
        a fix's capped output); a recording is read with :meth:`lines` or served from
        :meth:`path` after :meth:`hash_file`."""
        data = self._path(digest).read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"blob {digest} is damaged: its content no longer matches its name")
        return data


def hash_stream(f: BinaryIO) -> tuple[str, int]:
    """The SHA-256 and size of what is left to read in ``f``, read in pieces."""
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def read_lines(f: BinaryIO, max_line: int, hasher: Any = None,
               until: int | None = None) -> Iterator[bytes]:
    """The lines of ``f`` from where it is (without their line break), each at most
    ``max_line`` bytes: a longer one is skipped (read, and hashed into ``hasher``, not
    kept). ``until``: stop after the line that reaches that many bytes read."""
    read = 0
    while (until is None or read < until) and (line := f.readline(max_line + 1)):
        read += len(line)
        if hasher is not None:
            hasher.update(line)
        if line.endswith(b"\n"):
            yield line[:-1]
        elif len(line) <= max_line:
            yield line  # the last line, with no line break
        else:
            while (rest := f.readline(CHUNK)) and not rest.endswith(b"\n"):
                read += len(rest)  # too long to keep: skipped to its end
                if hasher is not None:
                    hasher.update(rest)
            read += len(rest)
            if hasher is not None:
                hasher.update(rest)


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
