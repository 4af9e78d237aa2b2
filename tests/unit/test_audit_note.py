"""Signed notes and checkpoints (relay/audit_note.py) against golang.org/x/mod/sumdb/note's
own test vectors (note_test.go: the PeterNeumann and EnochRoot keys and notes): Ed25519 is
deterministic, so signing the same text with the same key must give the same bytes."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backline.common import keys
from backline.relay import audit_note as n

VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = ("If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n")
PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXg"
             "KvqfqdngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01"
             "oOTGwnWLox33WWd1RvMc+QQ=\n")


def peter_key() -> Ed25519PrivateKey:
    raw = base64.b64decode(SKEY.split("+", 4)[4])
    assert raw[0] == 1
    return Ed25519PrivateKey.from_private_bytes(raw[1:])


def test_key_hash_and_verifier_key_match_go() -> None:
    name, public = n.parse_verifier_key(VKEY)
    assert name == "PeterNeumann"
    assert n.key_hash(name, public).hex() == "c74f20a3"
    assert n.verifier_key(name, keys.public_raw(peter_key())) == VKEY
    assert n.parse_verifier_key(ENOCH)[0] == "EnochRoot"


def test_signing_reproduces_the_go_note_byte_for_byte() -> None:
    assert n.sign(TEXT, "PeterNeumann", peter_key()) == TEXT + "\n" + PETER_SIG


def test_open_accepts_the_go_note_and_names_what_is_wrong() -> None:
    name, public = n.parse_verifier_key(VKEY)
    assert n.open_note(TEXT + "\n" + PETER_SIG + ENOCH_SIG, name, public) == TEXT
    with pytest.raises(n.NoteError, match="does not verify"):
        n.open_note(TEXT.replace("cryptography", "cryptographY") + "\n" + PETER_SIG,
                    name, public)
    with pytest.raises(n.NoteError, match="not signed by the expected key"):
        n.open_note(TEXT + "\n" + ENOCH_SIG, name, public)
    bad_msgs = [TEXT, TEXT + "\n", TEXT + "\n" + PETER_SIG[:-1],
                TEXT + "\n— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FF"
                "YC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=",
                TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
                TEXT + "\n" + PETER_SIG * 101]
    for msg in bad_msgs:
        with pytest.raises(n.NoteError, match="malformed"):
            n.open_note(msg, name, public)


def test_mangled_verifier_keys_are_refused() -> None:
    for bad in (VKEY[:-1], VKEY.replace("c74f20a3", "c74f20a4"), "PeterNeumann+c74f20a3",
                "PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"):
        with pytest.raises(n.NoteError):
            n.parse_verifier_key(bad)


def test_checkpoint_round_trip() -> None:
    key = keys.generate()
    root = bytes(range(32))
    text = n.checkpoint_text("backline-relay/abc", 42, root)
    assert text == "backline-relay/abc\n42\n" + base64.b64encode(root).decode() + "\n"
    note = n.sign(text, "backline-relay/abc", key)
    opened = n.open_note(note, "backline-relay/abc", keys.public_raw(key))
    cp = n.parse_checkpoint(opened)
    assert (cp.origin, cp.size, cp.root) == ("backline-relay/abc", 42, root)
    for bad in ("a\n01\n" + base64.b64encode(root).decode() + "\n", "a\n1\nAAAA\n", "a\n1\n"):
        with pytest.raises(n.NoteError):
            n.parse_checkpoint(bad)
