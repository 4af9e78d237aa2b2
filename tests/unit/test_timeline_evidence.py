"""Evidence checked against the trail (relay/timeline.py ``check_blob`` and, for blobs of
any size, ``check_blob_file``): each of the three ways stored evidence can disagree with
the trail is named, with both digests."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from backline.relay.blobs import BlobStore
from backline.relay.timeline import EvidenceMismatch, TrailDigest, check_blob, check_blob_file


def test_intact_evidence_is_returned(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"recorded")
    assert check_blob(blobs, "recording r1", digest,
                      TrailDigest(7, "recording.stored", digest)) == b"recorded"


@pytest.mark.parametrize("check", [check_blob, check_blob_file])
def test_each_disagreement_is_named(tmp_path: Path, check: Callable[..., object]) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"recorded")
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(EvidenceMismatch) as missing:
        check(blobs, "recording r1", digest, None)
    assert missing.value.reason == "not_in_trail"
    with pytest.raises(EvidenceMismatch) as row:
        check(blobs, "recording r1", other, TrailDigest(7, "recording.stored", digest))
    assert row.value.reason == "row_altered"
    assert digest in row.value.detail and other in row.value.detail and "#7" in row.value.detail
    path = tmp_path / digest[:2] / digest
    path.chmod(0o600)
    path.write_bytes(b"recordex")
    with pytest.raises(EvidenceMismatch) as altered:
        check(blobs, "recording r1", digest, TrailDigest(7, "recording.stored", digest))
    assert altered.value.reason == "digest_mismatch"
    assert hashlib.sha256(b"recordex").hexdigest() in altered.value.detail
    with pytest.raises(EvidenceMismatch) as bogus:  # a trail digest that names no blob
        check(blobs, "recording r1", "../../etc/passwd",
                   TrailDigest(7, "recording.stored", "../../etc/passwd"))
    assert bogus.value.reason == "digest_mismatch"
    path.unlink()
    with pytest.raises(OSError):
        check(blobs, "recording r1", digest, TrailDigest(7, "recording.stored", digest))


def test_a_recording_of_any_size_is_checked_in_pieces(tmp_path: Path) -> None:
    """64 MiB checked with at most about a piece (1 MiB) allocated at once: the file, its
    size, and no copy of it in memory (a recording may be gigabytes)."""
    import tracemalloc

    blobs = BlobStore(tmp_path)
    h = hashlib.sha256()
    part = tmp_path / "part"
    with part.open("wb") as f:
        for i in range(64):
            piece = bytes([i]) * (1024 * 1024)
            f.write(piece)
            h.update(piece)
    digest = h.hexdigest()
    blobs.path(digest).parent.mkdir(parents=True)
    part.rename(blobs.path(digest))
    tracemalloc.start()
    try:
        f, size = check_blob_file(blobs, "recording r1", digest,
                                  TrailDigest(7, "recording.stored", digest))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"{peak / 2**20:.1f} MiB allocated at once"
    # The very file that was checked, at its start: renamed over afterwards, the file
    # served is still the one that was checked.
    with f:
        assert size == 64 * 1024 * 1024 and f.tell() == 0
        other = tmp_path / "other"
        other.write_bytes(b"swapped")
        other.rename(blobs.path(digest))
        assert f.read(4) == bytes([0]) * 4
