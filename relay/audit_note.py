"""C2SP signed notes and tlog checkpoints (c2sp.org/signed-note, c2sp.org/tlog-checkpoint).

A checkpoint is the text ``<origin>\\n<tree size>\\n<base64 root>\\n``; signed, it is
followed by an empty line and one line per signature, ``— <key name> <base64(key hash
|| Ed25519 signature)>``, the key hash being the first four bytes of SHA-256(key name
|| 0x0A || 0x01 || public key). The format is the one Go's golang.org/x/mod/sumdb/note
and the transparency-log witnesses read, so a Backline checkpoint can be checked, or
cosigned, by tools that have never heard of Backline. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from backline.common import keys

ALG_ED25519 = 0x01
DASH = "\u2014"  # the em dash that begins a signature line
MAX_NOTE_BYTES = 16 * 1024
MAX_SIGNATURES = 100
_NAME = re.compile(r"[^\s+]{1,256}")
_SIGLINE = re.compile(r"\u2014 ([^\s+]{1,256}) ([A-Za-z0-9+/]+={0,2})")


class NoteError(ValueError):
    """A note that is malformed or not signed by the key asked for; the message says which."""


def key_hash(name: str, public: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public).digest()[:4]


def verifier_key(name: str, public: bytes) -> str:
    """``<name>+<key hash hex>+<base64(0x01 || public key)>``: the form note tools pin."""
    return f"{name}+{key_hash(name, public).hex()}+" + base64.b64encode(
        bytes([ALG_ED25519]) + public).decode()


def parse_verifier_key(text: str) -> tuple[str, bytes]:
    """(name, public key) of a verifier key; raises :class:`NoteError` if it is not one."""
    parts = text.strip().split("+", 2)  # the base64 key may hold "+" itself
    if len(parts) != 3 or not _NAME.fullmatch(parts[0]):
        raise NoteError("not a verifier key (name+hash+key)")
    try:
        raw = base64.b64decode(parts[2], validate=True)
        want = bytes.fromhex(parts[1])
    except (binascii.Error, ValueError):
        raise NoteError("not a verifier key (bad base64 or hash)") from None
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise NoteError("not an Ed25519 verifier key")
    if key_hash(parts[0], raw[1:]) != want:
        raise NoteError("the verifier key's hash does not match its name and key")
    return parts[0], raw[1:]


def checkpoint_text(origin: str, size: int, root: bytes) -> str:
    if not origin or "\n" in origin or origin.strip() != origin:
        raise NoteError("a checkpoint's origin is one non-empty line")
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign(text: str, name: str, private_key: Any) -> str:
    """The signed note: ``text``, an empty line, and the signature line of ``name``."""
    if not text.endswith("\n") or "\n\n" in text or not _NAME.fullmatch(name):
        raise NoteError("malformed note")
    public = keys.public_raw(private_key)
    signature = private_key.sign(text.encode())
    blob = base64.b64encode(key_hash(name, public) + signature).decode()
    return f"{text}\n{DASH} {name} {blob}\n"


@dataclass(frozen=True)
class Signature:
    name: str
    hash: bytes
    signature: bytes


def split(note: str, max_bytes: int = MAX_NOTE_BYTES) -> tuple[str, list[Signature]]:
    """(text, signatures) of a signed note; raises :class:`NoteError` if malformed."""
    if len(note.encode()) > max_bytes:
        raise NoteError("malformed note: too long")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("malformed note: no signature block")
    text, block = note[: cut + 1], note[cut + 2:]
    sigs: list[Signature] = []
    for line in block[:-1].split("\n"):
        m = _SIGLINE.fullmatch(line)
        if not m:
            raise NoteError("malformed note: a signature line is not `— name base64`")
        try:
            raw = base64.b64decode(m.group(2), validate=True)
        except binascii.Error:
            raise NoteError("malformed note: a signature is not base64") from None
        if len(raw) < 5:
            raise NoteError("malformed note: a signature is too short")
        sigs.append(Signature(m.group(1), raw[:4], raw[4:]))
    if not sigs or len(sigs) > MAX_SIGNATURES:
        raise NoteError("malformed note: no signature, or too many")
    return text, sigs


def open_note(note: str, name: str, public: bytes, max_bytes: int = MAX_NOTE_BYTES) -> str:
    """The text of ``note`` if the key (``name``, ``public``) signed it; otherwise
    :class:`NoteError` naming what is wrong: no signature by that key (another key
    signed it), or a signature by it that does not verify (the text was altered)."""
    text, sigs = split(note, max_bytes)
    want = key_hash(name, public)
    mine = [s for s in sigs if s.name == name and s.hash == want]
    if not mine:
        others = ", ".join(f"{s.name}+{s.hash.hex()}" for s in sigs)
        raise NoteError(f"not signed by the expected key {name}+{want.hex()} "
                        f"(signed by {others})")
    for s in mine:
        if keys.verify(public, s.signature, text.encode()):
            return text
    raise NoteError(f"the signature of {name}+{want.hex()} does not verify (altered)")


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()


def parse_checkpoint(text: str) -> Checkpoint:
    lines = text.split("\n")
    if len(lines) < 4 or lines[-1] != "":
        raise NoteError("malformed checkpoint: fewer than three lines")
    origin, size_text, root_text = lines[0], lines[1], lines[2]
    if not origin or not re.fullmatch(r"[1-9][0-9]{0,18}|0", size_text):
        raise NoteError("malformed checkpoint: bad origin or tree size")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error:
        raise NoteError("malformed checkpoint: the root is not base64") from None
    if len(root) != 32:
        raise NoteError("malformed checkpoint: the root is not 32 bytes")
    return Checkpoint(origin, int(size_text), root, tuple(lines[3:-1]))
