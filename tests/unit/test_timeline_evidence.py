"""Evidence checked against the trail (relay/timeline.py ``check_blob``): each of the three
ways stored evidence can disagree with the trail is named, with both digests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backline.relay.blobs import BlobStore
from backline.relay.timeline import EvidenceMismatch, TrailDigest, check_blob


def test_intact_evidence_is_returned(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"recorded")
    assert check_blob(blobs, "recording r1", digest,
                      TrailDigest(7, "recording.stored", digest)) == b"recorded"


def test_each_disagreement_is_named(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    digest = blobs.put(b"recorded")
    other = hashlib.sha256(b"other").hexdigest()
    with pytest.raises(EvidenceMismatch) as missing:
        check_blob(blobs, "recording r1", digest, None)
    assert missing.value.reason == "not_in_trail"
    with pytest.raises(EvidenceMismatch) as row:
        check_blob(blobs, "recording r1", other, TrailDigest(7, "recording.stored", digest))
    assert row.value.reason == "row_altered"
    assert digest in row.value.detail and other in row.value.detail and "#7" in row.value.detail
    path = tmp_path / digest[:2] / digest
    path.chmod(0o600)
    path.write_bytes(b"recordex")
    with pytest.raises(EvidenceMismatch) as altered:
        check_blob(blobs, "recording r1", digest, TrailDigest(7, "recording.stored", digest))
    assert altered.value.reason == "digest_mismatch"
    assert hashlib.sha256(b"recordex").hexdigest() in altered.value.detail
    with pytest.raises(EvidenceMismatch) as bogus:  # a trail digest that names no blob
        check_blob(blobs, "recording r1", "../../etc/passwd",
                   TrailDigest(7, "recording.stored", "../../etc/passwd"))
    assert bogus.value.reason == "digest_mismatch"
    path.unlink()
    with pytest.raises(OSError):
        check_blob(blobs, "recording r1", digest, TrailDigest(7, "recording.stored", digest))
