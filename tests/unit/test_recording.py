"""Terminal recordings (asciicast v2) and the terminal's console messages, alone.

The disk-full case is injected at the true boundary: the blob's file object, whose
``write`` raises ``OSError(ENOSPC)`` as the kernel's would."""

from __future__ import annotations

import errno
import hashlib
import json
from pathlib import Path

import pytest

from backline.relay.blobs import BlobStore
from backline.relay.capabilities.recording import RecordingFailed, new_recorder
from backline.relay.capabilities.shell import Ack, BadMessage, Grant, Resize, parse_message


def events(data: bytes) -> tuple[dict[str, object], list[list[object]]]:
    lines = data.decode("utf-8").splitlines()
    return json.loads(lines[0]), [json.loads(line) for line in lines[1:]]


def test_a_recording_is_asciicast_v2_named_by_its_hash(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    rec = new_recorder(blobs, 80, 24, "xterm-256color", keystrokes=False)
    rec.output(b"caf\xc3")  # a character cut between two reads
    rec.output(b"\xa9 \xff\x1b[2J")  # ... and an invalid byte, and an escape
    rec.input(b"secret\r")  # not kept: keystrokes are off
    rec.resize(120, 40)
    digest, size, _ = rec.finish()
    data = blobs.get(digest)
    assert hashlib.sha256(data).hexdigest() == digest and len(data) == size
    header, evs = events(data)
    assert header["version"] == 2 and (header["width"], header["height"]) == (80, 24)
    assert header["env"] == {"TERM": "xterm-256color"}
    assert [e[1] for e in evs] == ["o", "o", "r"]
    assert "".join(str(e[2]) for e in evs if e[1] == "o") == "caf\u00e9 \ufffd\x1b[2J"
    assert evs[-1][2] == "120x40"
    assert b"secret" not in data
    assert list((tmp_path / "tmp").iterdir()) == []


def test_keystrokes_are_kept_only_when_asked(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    rec = new_recorder(blobs, 80, 24, "xterm", keystrokes=True)
    rec.input(b"ls\r")
    _, evs = events(blobs.get(rec.finish()[0]))
    assert evs == [[evs[0][0], "i", "ls\r"]]


class FullDisk:
    """A file whose writes fail as a full disk's do, after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.closed = False

    def write(self, data: memoryview) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)

    def close(self) -> None:
        self.closed = True


def test_a_full_disk_fails_the_recording_and_leaves_nothing(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path)
    rec = new_recorder(blobs, 80, 24, "xterm", keystrokes=False)
    rec.writer.file.close()
    rec.writer.file = FullDisk(room=100)  # type: ignore[assignment]
    rec.output(b"fits")
    with pytest.raises(RecordingFailed, match="No space left"):
        rec.output(b"x" * 200)
    with pytest.raises(RecordingFailed):  # and it stays failed: nothing more is written
        rec.output(b"y")
    rec.abort()
    assert list((tmp_path / "tmp").iterdir()) == []


def test_a_blob_store_that_cannot_start_a_file_is_a_failed_recording(tmp_path: Path) -> None:
    (tmp_path / "tmp").write_text("not a directory")
    with pytest.raises(RecordingFailed):
        new_recorder(BlobStore(tmp_path), 80, 24, "xterm", keystrokes=False)


def test_console_messages_are_validated_and_bounded() -> None:
    assert parse_message('{"type":"resize","cols":500,"rows":200}') == Resize(
        type="resize", cols=500, rows=200)
    assert parse_message('{"type":"ack","bytes":65536}') == Ack(type="ack", bytes=65536)
    assert parse_message('{"type":"grant","to":"tech1"}') == Grant(type="grant", to="tech1")
    for bad in ['{"type":"resize","cols":0,"rows":10}',
                '{"type":"resize","cols":501,"rows":10}',
                '{"type":"resize","cols":80,"rows":201}',
                '{"type":"resize","cols":"80","rows":24}',  # strict: no coercion
                '{"type":"resize","cols":80.0,"rows":24}',
                '{"type":"resize","cols":80,"rows":24,"x":1}',
                '{"type":"ack","bytes":-1}',
                '{"type":"grant","to":"Bad User"}',
                '{"type":"exec","cmd":"id"}', '[]', 'nope', '',
                '{"type":"ack","bytes":' + "9" * 600 + "}"]:
        with pytest.raises(BadMessage):
            parse_message(bad)
