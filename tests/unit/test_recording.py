"""Terminal recordings (asciicast v2) and the terminal's console messages, alone.

The disk-full case is injected at the true boundary: the blob's file object, whose
``write`` raises ``OSError(ENOSPC)`` as the kernel's would."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from backline.relay.blobs import BlobStore
from backline.relay.capabilities import shell
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


# --- the terminal's bounds, with a console socket stubbed at its edge -----------------


class _Socket:
    """A console socket that takes frames (``block``: never, as a tab that does not
    read) and has nothing to say until it is closed."""

    def __init__(self, block: bool = False) -> None:
        self.block = block
        self.frames: list[bytes | str] = []
        self.closed = asyncio.Event()

    async def send_bytes(self, data: bytes) -> None:
        if self.block:
            await asyncio.Event().wait()
        self.frames.append(data)

    async def send_text(self, text: str) -> None:
        if self.block:
            await asyncio.Event().wait()
        self.frames.append(text)

    async def receive(self) -> dict[str, object]:
        await self.closed.wait()
        return {"type": "websocket.disconnect"}

    async def close(self, code: int = 1000) -> None:
        self.closed.set()


class _Trail:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []

    def record(self, actor: str, action: str, target: str, **details: object) -> None:
        self.events.append((action, details))


def _terminal(tmp_path: Path) -> tuple[shell.Terminal, list[tuple[int, int]]]:
    resizes: list[tuple[int, int]] = []
    runner = SimpleNamespace(relay=_Trail())
    session = SimpleNamespace(id="se_x", closing=False)
    proc = SimpleNamespace(change_terminal_size=lambda c, r: None)
    ch = SimpleNamespace(session=session, proc=proc, actor="user:a")
    recorder = SimpleNamespace(resize=lambda c, r: resizes.append((c, r)), keystrokes=False)
    term = shell.Terminal("tm_x", runner, ch, recorder, 80, 24, "xterm")  # type: ignore[arg-type]
    return term, resizes


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_viewers_that_left_are_forgotten(tmp_path: Path) -> None:
    async def go() -> int:
        term, _ = _terminal(tmp_path)
        for i in range(50):
            v = shell.Viewer(_Socket(), f"u{i}", f"user:u{i}", "view")  # type: ignore[arg-type]
            term.add(v)
            await _settle()
            term.hang_up(v)
            await _settle()
        return len(term.viewers)

    assert asyncio.run(go()) == 0


def test_an_ack_counts_only_what_the_socket_took(tmp_path: Path) -> None:
    async def go() -> None:
        term, _ = _terminal(tmp_path)
        sock = _Socket()
        v = shell.Viewer(sock, "a", "user:a", "control")  # type: ignore[arg-type]
        term.add(v)
        await _settle()  # "ready" is sent; from now on the console does not read
        sock.block = True
        for _ in range(3):  # queued; the socket does not read: one frame in its write
            v.sent += 1000
            term._send(v, b"x" * 1000)
        await _settle()
        assert (v.delivered, v.in_flight) == (0, 1000)
        term.command(v, Ack(type="ack", bytes=1000))  # the frame being written: may be
        with pytest.raises(BadMessage, match="delivered"):
            term.command(v, Ack(type="ack", bytes=2000))  # queued, not delivered

    asyncio.run(go())


def test_a_console_that_does_not_read_is_hung_up_not_buffered_for(tmp_path: Path) -> None:
    async def go() -> None:
        term, _ = _terminal(tmp_path)
        v = shell.Viewer(_Socket(block=True), "b", "user:b", "view")  # type: ignore[arg-type]
        term.add(v)
        await _settle()
        for _ in range(10_000):  # text replies (e.g. resizes told to it) count too
            term.tell(v, "resize", cols=100, rows=30)
        assert v.gone and v.queued <= shell.MAX_QUEUED + 200
        assert ("terminal.viewer.dropped", {"terminal": "tm_x", "reason": "too_slow",
                                            "role": "view"}) in term.runner.relay.events  # type: ignore[attr-defined]

    asyncio.run(go())


def test_resize_and_grant_spam_is_bounded(tmp_path: Path) -> None:
    async def go() -> None:
        term, resizes = _terminal(tmp_path)
        sock = _Socket()
        v = shell.Viewer(sock, "c", "user:c", "control")  # type: ignore[arg-type]
        term.add(v)
        await _settle()
        for i in range(5000):
            term.command(v, Resize(type="resize", cols=80 + i % 2, rows=24))
            term.command(v, Grant(type="grant", to="nobody"))
        await _settle()
        assert len(resizes) <= shell.COMMAND_BURST + 5, len(resizes)
        refused = [f for f in sock.frames if isinstance(f, str) and '"refused"' in f]
        assert len(refused) <= shell.COMMAND_BURST + 5
        dropped = [d for a, d in term.runner.relay.events  # type: ignore[attr-defined]
                   if a == "terminal.input.dropped"]
        assert [d["reason"] for d in dropped] == ["rate_limited"]
        term.hang_up(v)
        await _settle()

    asyncio.run(go())


def test_a_recording_the_database_does_not_take_is_said_not_raised(tmp_path: Path) -> None:
    """A database error filing the recording is :class:`RecordingNotFiled` (the blob
    kept, its hash known), which the terminal audits and still ends with ``exit``."""
    import sqlalchemy as sa

    from backline.relay.capabilities.base import RecordingNotFiled
    from backline.relay.capabilities.runner import ChannelRunner

    blobs = BlobStore(tmp_path)
    trail = _Trail()
    relay = SimpleNamespace(engine=sa.create_engine("sqlite://"), record=trail.record)  # no tables
    runner = ChannelRunner(relay)  # type: ignore[arg-type]
    session = SimpleNamespace(id="se_x", principal="ag_x", technician="t")
    ch = SimpleNamespace(session=session, capability="shell", actor="user:t")
    rec = new_recorder(blobs, 80, 24, "xterm", keystrokes=False)
    rec.output(b"done\r\n")
    with pytest.raises(RecordingNotFiled) as caught:
        runner.keep_recording(ch, rec)  # type: ignore[arg-type]
    assert blobs.get(caught.value.sha256)  # the blob is kept, named by its hash

    async def go() -> list[str | bytes]:
        term, _ = _terminal(tmp_path)
        failures: list[tuple[str, dict[str, object]]] = []

        def keep(ch: object, rec: object) -> None:
            raise RecordingNotFiled("ab" * 32, 10, "OperationalError")

        term.runner.keep_recording = keep  # type: ignore[attr-defined]
        term.runner.failed = (  # type: ignore[attr-defined]
            lambda s, c, a, reason, detail, **kw: failures.append((reason, kw)))
        term.ch.proc.close = lambda: None  # type: ignore[attr-defined]
        term.ch.proc.exit_status = 0  # type: ignore[attr-defined]

        async def closed() -> None:
            return None

        term.ch.proc.wait_closed = closed  # type: ignore[attr-defined]
        sock = _Socket()
        v = shell.Viewer(sock, "a", "user:a", "control")  # type: ignore[arg-type]
        term.add(v)
        await term.finish(None, "agent")
        await _settle()
        assert [(r, kw["sha256"]) for r, kw in failures] == [("recording_not_filed", "ab" * 32)]
        term.hang_up(v)
        await _settle()
        return sock.frames

    frames = asyncio.run(go())
    said = [json.loads(f) for f in frames if isinstance(f, str)]
    assert said[-1]["type"] == "exit" and said[-1]["error"] == "recording_not_filed", said
