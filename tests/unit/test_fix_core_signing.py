"""common/fixes/signing.py: SSH signatures (SSHSIG, namespace ``backline-fix``) checked both
ways against OpenSSH's reference tool (ssh-keygen -Y sign / -Y verify), and the trust
rule: a pinned relay key AND N distinct offline signers, with every way to fall short
(no signature, an unpinned key, a tampered armor, another version's approval, too few or
duplicated offline signers) refused with its reason."""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from backline.common.fixes import (
    FixTrust,
    SigningError,
    canonical_bytes,
    check_signatures,
    fingerprint,
    generate_key,
    manifest_from_dict,
    parse_manifest,
    public_line,
    revocation,
    sign,
    signer_of,
    signing,
)

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
pytestmark = pytest.mark.skipif(not Path(SSH_KEYGEN).exists(), reason="needs ssh-keygen")

TOML = '''
id = "dns-flush"
version = 1
title = "Flush the DNS cache"
platforms = ["linux"]
interpreter = "sh"
script = "resolvectl flush-caches\\n"
timeout_s = 60
risk = "low"
'''
M1 = parse_manifest(TOML)
M2 = manifest_from_dict({**M1.as_dict(), "version": 2})
C1, C2 = canonical_bytes(M1), canonical_bytes(M2)


class Key:
    """A key made by ssh-keygen: its private file, public line and fingerprint."""

    def __init__(self, folder: Path, name: str, kind: str = "ed25519", bits: int = 0,
                 passphrase: str = "") -> None:
        self.path = folder / name
        args = [SSH_KEYGEN, "-q", "-t", kind, "-N", passphrase, "-C", name, "-f",
                str(self.path)]
        if bits:
            args[4:4] = ["-b", str(bits)]
        subprocess.run(args, check=True, capture_output=True, timeout=60)
        self.private = self.path.read_bytes()
        self.public = (folder / f"{name}.pub").read_text().strip()
        out = subprocess.run([SSH_KEYGEN, "-lf", f"{self.path}.pub"], check=True,
                             capture_output=True, text=True, timeout=30).stdout
        self.fingerprint = out.split()[1]

    def keygen_sign(self, data: bytes, namespace: str = "backline-fix",
                    *extra: str) -> str:
        return subprocess.run([SSH_KEYGEN, "-Y", "sign", "-n", namespace, "-f",
                               str(self.path), *extra], input=data, check=True,
                              capture_output=True, timeout=30).stdout.decode()


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Key]:
    folder = tmp_path_factory.mktemp("keys")
    made = {name: Key(folder, name) for name in ("relay", "relay2", "off1", "off2", "off3",
                                                 "stranger")}
    made["ecdsa"] = Key(folder, "ecdsa", "ecdsa", 256)
    made["rsa"] = Key(folder, "rsa", "rsa", 2048)
    return made


def keygen_verify(folder: Path, key: Key, data: bytes, armored: str,
                  namespace: str = "backline-fix") -> subprocess.CompletedProcess[bytes]:
    allowed = folder / "allowed_signers"
    allowed.write_text(f'approver namespaces="{namespace}" {key.public}\n')
    sig = folder / "data.sig"
    sig.write_text(armored)
    return subprocess.run([SSH_KEYGEN, "-Y", "verify", "-n", namespace, "-f", str(allowed),
                           "-I", "approver", "-s", str(sig)], input=data,
                          capture_output=True, timeout=30)


# -- against the reference tool ---------------------------------------------------------

@pytest.mark.parametrize("name", ["relay", "ecdsa", "rsa"])
def test_ssh_keygen_accepts_our_signature(keys: dict[str, Key], tmp_path: Path,
                                          name: str) -> None:
    key = keys[name]
    armored = sign(C1, key.private)
    assert armored.startswith("-----BEGIN SSH SIGNATURE-----\n")
    done = keygen_verify(tmp_path, key, C1, armored)
    assert done.returncode == 0, done.stderr
    assert b'Good "backline-fix" signature for approver' in done.stdout
    assert key.fingerprint.encode() in done.stdout
    # and the reference refuses it for other bytes (another version) or namespace
    assert keygen_verify(tmp_path, key, C2, armored).returncode != 0
    assert keygen_verify(tmp_path, key, C1, armored, "git").returncode != 0


@pytest.mark.parametrize("name", ["relay", "ecdsa", "rsa"])
def test_we_accept_a_signature_made_by_ssh_keygen(keys: dict[str, Key], name: str) -> None:
    key = keys[name]
    armored = key.keygen_sign(C1)
    assert signer_of(C1, armored, [key.public]) == key.fingerprint
    assert signer_of(C2, armored, [key.public]) is None
    verdict = check_signatures(M1, [armored], FixTrust((key.public,)))
    assert verdict.ok and verdict.signers == (key.fingerprint,)


def test_ssh_keygen_sha256_signatures_are_accepted(keys: dict[str, Key]) -> None:
    armored = keys["off1"].keygen_sign(C1, "backline-fix", "-O", "hashalg=sha256")
    assert signer_of(C1, armored, [keys["off1"].public]) == keys["off1"].fingerprint


def test_ssh_keygen_signature_in_another_namespace_is_refused(keys: dict[str, Key]) -> None:
    key = keys["relay"]
    for namespace in ("file", "git", "backline-fix-revocation", "backline-fi"):
        armored = key.keygen_sign(C1, namespace)
        assert signer_of(C1, armored, [key.public]) is None
        verdict = check_signatures(M1, [armored], FixTrust((key.public,)))
        assert (verdict.ok, verdict.reason) == (False, "bad_signature")


def test_fingerprints_are_what_ssh_keygen_prints(keys: dict[str, Key]) -> None:
    for key in keys.values():
        assert fingerprint(key.public) == key.fingerprint
        assert key.fingerprint.startswith("SHA256:")


def test_public_line_of_a_private_key(keys: dict[str, Key]) -> None:
    key = keys["relay"]
    assert public_line(key.private).split()[:2] == key.public.split()[:2]
    assert public_line(key.private, comment="relay fix key").endswith(" relay fix key")


def test_generated_keys_sign_for_ssh_keygen(tmp_path: Path) -> None:
    private, public = generate_key("made-here")
    (tmp_path / "k.pub").write_text(public + "\n")
    out = subprocess.run([SSH_KEYGEN, "-lf", str(tmp_path / "k.pub")], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    assert fingerprint(public) == out.split()[1]
    fake = Key.__new__(Key)
    fake.public = public
    done = keygen_verify(tmp_path, fake, C1, sign(C1, private))
    assert done.returncode == 0, done.stderr


# -- keys that cannot be used ----------------------------------------------------------

def test_encrypted_private_key(tmp_path: Path) -> None:
    key = Key(tmp_path, "locked", passphrase="correct horse")
    with pytest.raises(SigningError):
        sign(C1, key.private)
    try:
        armored = sign(C1, key.private, "correct horse")
    except SigningError as exc:  # asyncssh needs bcrypt for OpenSSH-encrypted keys
        assert "bcrypt" in str(exc)
    else:
        assert signer_of(C1, armored, [key.public]) == key.fingerprint


@pytest.mark.parametrize("bad", [b"", b"not a key", "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"])
def test_garbage_private_key(bad: bytes | str) -> None:
    with pytest.raises(SigningError, match=r"not a usable private key"):
        sign(C1, bad)


def test_canonical_must_be_bytes(keys: dict[str, Key]) -> None:
    # asyncssh would read a FILE named by a str: never let one through
    with pytest.raises(TypeError):
        sign("/etc/passwd", keys["relay"].private)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        signer_of("/etc/passwd", "x", [keys["relay"].public])  # type: ignore[arg-type]


def test_weak_and_odd_pinned_keys_are_refused(tmp_path: Path, keys: dict[str, Key]) -> None:
    weak = Key(tmp_path, "weak", "rsa", 1024)
    with pytest.raises(SigningError, match=r"2048 bits"):
        FixTrust((weak.public,))
    with pytest.raises(SigningError, match=r"2048 bits"):
        sign(C1, weak.private)
    # a weak key's signature never counts, even if someone pinned it elsewhere
    armored = weak.keygen_sign(C1)
    assert signing._verify(C1, armored, "backline-fix")[0] == "bad"
    for line in ("", "ssh-ed25519", "ssh-ed25519 !!!!", "garbage AAAA",
                 keys["relay"].public.replace("ssh-ed25519", "ssh-rsa"),
                 keys["relay"].public + "\nssh-ed25519 AAAA"):
        with pytest.raises(SigningError):
            FixTrust((line,))


def test_certificates_are_not_pinnable_nor_accepted(tmp_path: Path) -> None:
    ca, user = Key(tmp_path, "ca"), Key(tmp_path, "user")
    subprocess.run([SSH_KEYGEN, "-q", "-s", str(ca.path), "-I", "user", "-n", "approver",
                    str(user.path) + ".pub"], check=True, capture_output=True, timeout=30)
    cert_line = (tmp_path / "user-cert.pub").read_text().strip()
    with pytest.raises(SigningError):
        FixTrust((cert_line,))
    cert_sig = subprocess.run([SSH_KEYGEN, "-Y", "sign", "-n", "backline-fix", "-f",
                               str(tmp_path / "user-cert.pub")], input=C1, check=True,
                              capture_output=True, timeout=30).stdout.decode()
    # a signature carrying a certificate names neither the CA nor the key as signer
    assert signer_of(C1, cert_sig, [ca.public, user.public]) is None


def test_required_offline_cannot_exceed_the_distinct_offline_keys(keys: dict[str, Key]
                                                                  ) -> None:
    off1, relay = keys["off1"], keys["relay"]
    assert FixTrust((relay.public,), (off1.public,), 1).required_offline == 1
    with pytest.raises(SigningError, match=r"required_offline must be 0 to 1"):
        FixTrust((relay.public,), (off1.public, off1.public + " again"), 2)
    with pytest.raises(SigningError, match=r"required_offline must be 0 to 0"):
        FixTrust((relay.public,), (relay.public,), 1)  # a relay key is no offline key
    with pytest.raises(SigningError):
        FixTrust((relay.public,), (), -1)
    with pytest.raises(SigningError):
        FixTrust((relay.public,), (off1.public,), True)  # type: ignore[arg-type]


# -- hostile signatures ----------------------------------------------------------------

def test_unsigned(keys: dict[str, Key]) -> None:
    verdict = check_signatures(M1, [], FixTrust((keys["relay"].public,)))
    assert (verdict.ok, verdict.reason, verdict.signers) == (False, "unsigned", ())


def test_signature_by_a_key_not_pinned(keys: dict[str, Key]) -> None:
    stranger, relay = keys["stranger"], keys["relay"]
    armored = sign(C1, stranger.private)
    assert signer_of(C1, armored, [relay.public]) is None
    verdict = check_signatures(M1, [armored], FixTrust((relay.public,)))
    assert (verdict.ok, verdict.reason, verdict.signers) == (False, "unpinned_key", ())
    # nothing pinned at all (an agent enrolled before fix keys existed)
    assert check_signatures(M1, [armored], FixTrust(())).reason == "unpinned_key"


def test_replay_of_another_versions_approval(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    approval_v1 = sign(C1, relay.private)
    verdict = check_signatures(M2, [approval_v1], FixTrust((relay.public,)))
    assert (verdict.ok, verdict.reason) == (False, "bad_signature")
    assert check_signatures(M1, [approval_v1], FixTrust((relay.public,))).ok


def test_one_byte_of_the_script_changed(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    approval = sign(C1, relay.private)
    tampered = manifest_from_dict({**M1.as_dict(), "script": "resolvectl flush-cachez\n"})
    assert check_signatures(tampered, [approval], FixTrust((relay.public,))).reason == \
        "bad_signature"


def tamperings() -> list[Callable[[str], str]]:
    def body_char(s: str) -> str:
        lines = s.splitlines()
        mid = lines[2]
        lines[2] = mid[:10] + ("A" if mid[10] != "A" else "B") + mid[11:]
        return "\n".join(lines) + "\n"

    def last_sig_byte(s: str) -> str:
        raw = bytearray(base64.b64decode("".join(s.splitlines()[1:-1])))
        raw[-1] ^= 1
        return "-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(bytes(raw)).decode() + \
            "\n-----END SSH SIGNATURE-----\n"

    def namespace_field(s: str) -> str:
        raw = base64.b64decode("".join(s.splitlines()[1:-1]))
        raw = raw.replace(b"backline-fix", b"backline-fiy")
        return "-----BEGIN SSH SIGNATURE-----\n" + base64.b64encode(raw).decode() + \
            "\n-----END SSH SIGNATURE-----\n"

    return [
        body_char, last_sig_byte, namespace_field,
        lambda s: s.replace("BEGIN SSH SIGNATURE", "BEGIN SSH SIGNATUR"),
        lambda s: s.replace("-----END SSH SIGNATURE-----", ""),
        lambda s: s.replace("\n-----END", "AAAA\n-----END"),
        lambda s: s.replace("\n-----END", "!\n-----END"),
        lambda s: s + "trailing",
        lambda s: s[:-60] + "\n-----END SSH SIGNATURE-----\n",
        lambda s: s.replace("U1NIU0lH", "U1NIU0lI"),
        lambda s: "-----BEGIN SSH SIGNATURE-----\n" + "A" * 9000 + "\n-----END SSH SIGNATURE-----",
        lambda s: "",
        lambda s: "\x00" * 10,
        lambda s: s.replace("A", "\u0410", 1),
    ]


@pytest.mark.parametrize("tamper", tamperings())
def test_tampered_armor_is_a_bad_signature(keys: dict[str, Key], tamper: Callable[[str], str]
                                           ) -> None:
    relay = keys["relay"]
    armored = tamper(sign(C1, relay.private))
    assert signer_of(C1, armored, [relay.public]) is None
    verdict = check_signatures(M1, [armored], FixTrust((relay.public,)))
    assert (verdict.ok, verdict.reason) == (False, "bad_signature")


def test_crlf_and_surrounding_whitespace_still_verify(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    armored = "\n  " + sign(C1, relay.private).replace("\n", "\r\n") + "\n\n"
    assert signer_of(C1, armored, [relay.public]) == relay.fingerprint
    assert signer_of(C1, armored.encode(), [relay.public]) == relay.fingerprint


def test_revocation_namespace_never_passes_as_an_approval(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    as_list = sign(C1, relay.private, namespace=revocation.NAMESPACE)
    assert check_signatures(M1, [as_list], FixTrust((relay.public,))).reason == "bad_signature"


def test_bad_extras_do_not_spoil_a_valid_approval(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    sigs = ["garbage", sign(C1, keys["stranger"].private), 42, sign(C1, relay.private)]
    verdict = check_signatures(M1, sigs, FixTrust((relay.public,)))
    assert verdict.ok and verdict.signers == (relay.fingerprint,)


def test_bounds_on_the_signature_list(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    good = sign(C1, relay.private)
    trust = FixTrust((relay.public,))
    assert check_signatures(M1, [good] * 32, trust).ok
    assert check_signatures(M1, [good] * 33, trust).reason == "bad_signature"
    assert check_signatures(M1, good, trust).reason == "bad_signature"  # type: ignore[arg-type]
    assert check_signatures(M1, None, trust).reason == "bad_signature"  # type: ignore[arg-type]


# -- N of M offline --------------------------------------------------------------------

def test_n_of_m_offline_counting(keys: dict[str, Key]) -> None:
    relay, off = keys["relay"], [keys["off1"], keys["off2"], keys["off3"]]
    trust = FixTrust((relay.public, keys["relay2"].public), tuple(k.public for k in off), 2)
    r = sign(C1, relay.private)
    o1, o2 = off[0].keygen_sign(C1), sign(C1, off[1].private)

    verdict = check_signatures(M1, [r], trust)
    assert (verdict.ok, verdict.reason) == (False, "not_enough_signatures")
    assert "0 of 2" in verdict.detail

    verdict = check_signatures(M1, [r, o1], trust)
    assert (verdict.ok, verdict.reason, verdict.offline_signers) == (
        False, "not_enough_signatures", (off[0].fingerprint,))

    verdict = check_signatures(M1, [r, o1, o2], trust)
    assert verdict.ok
    assert verdict.signers == (relay.fingerprint, off[0].fingerprint, off[1].fingerprint)
    assert verdict.relay_signers == (relay.fingerprint,)

    # offline signatures alone (a relay that never approved) are not enough
    verdict = check_signatures(M1, [o1, o2, sign(C1, off[2].private)], trust)
    assert (verdict.ok, verdict.reason) == (False, "not_enough_signatures")

    # the other pinned relay key serves too
    assert check_signatures(M1, [sign(C1, keys["relay2"].private), o1, o2], trust).ok


def test_duplicates_of_one_offline_signer_count_once(keys: dict[str, Key]) -> None:
    relay, off1, ecdsa = keys["relay"], keys["off1"], keys["ecdsa"]
    trust = FixTrust((relay.public,), (off1.public, ecdsa.public), 2)
    r = sign(C1, relay.private)
    # ed25519 is deterministic (the same text twice), ssh-keygen's and ours alike...
    same = [sign(C1, off1.private), off1.keygen_sign(C1), sign(C1, off1.private)]
    verdict = check_signatures(M1, [r, *same], trust)
    assert (verdict.ok, verdict.offline_signers) == (False, (off1.fingerprint,))
    # ...ECDSA is not: three different texts, still one signer
    texts = {sign(C1, ecdsa.private) for _ in range(3)}
    assert len(texts) == 3
    verdict = check_signatures(M1, [r, *texts], trust)
    assert (verdict.ok, verdict.offline_signers) == (False, (ecdsa.fingerprint,))
    assert check_signatures(M1, [r, *same, *texts], trust).ok


def test_a_key_pinned_as_relay_and_offline_counts_only_as_relay(keys: dict[str, Key]
                                                                 ) -> None:
    relay, off1 = keys["relay"], keys["off1"]
    trust = FixTrust((relay.public,), (relay.public, off1.public), 1)
    r = sign(C1, relay.private)
    verdict = check_signatures(M1, [r], trust)
    assert (verdict.ok, verdict.reason) == (False, "not_enough_signatures")
    assert check_signatures(M1, [r, sign(C1, off1.private)], trust).ok


def test_offline_signature_by_an_unpinned_key_does_not_count(keys: dict[str, Key]) -> None:
    relay, off1 = keys["relay"], keys["off1"]
    trust = FixTrust((relay.public,), (off1.public,), 1)
    verdict = check_signatures(M1, [sign(C1, relay.private), sign(C1, keys["off2"].private)],
                               trust)
    assert (verdict.ok, verdict.reason) == (False, "unpinned_key")


def test_check_signatures_takes_canonical_bytes_too(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    assert check_signatures(C1, [sign(C1, relay.private)], FixTrust((relay.public,))).ok


def test_trust_lists_must_be_lists_of_lines(keys: dict[str, Key]) -> None:
    relay = keys["relay"]
    with pytest.raises(SigningError, match="relay_keys must be a list"):
        FixTrust(relay.public)  # type: ignore[arg-type]
    with pytest.raises(SigningError, match="offline_keys must be a list"):
        FixTrust((relay.public,), relay.public)  # type: ignore[arg-type]
    with pytest.raises(SigningError):
        FixTrust(([relay.public],))  # type: ignore[arg-type]
    with pytest.raises(SigningError, match="trusted must be a list"):
        signer_of(C1, sign(C1, relay.private), relay.public)
    trust = FixTrust([relay.public])  # type: ignore[arg-type]
    assert trust.relay_keys == (relay.public,) and hash(trust)


def test_keys_made_by_common_keys_sign_too() -> None:
    """The relay's existing key code (cryptography) writes keys asyncssh reads."""
    from cryptography.hazmat.primitives import serialization

    from backline.common import keys as ckeys

    key = ckeys.generate()
    pub = ckeys.public_openssh(key)
    for fmt in (serialization.PrivateFormat.OpenSSH, serialization.PrivateFormat.PKCS8):
        pem = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
        assert signer_of(C1, sign(C1, pem), [pub]) == fingerprint(pub)
        assert public_line(pem) == pub


def test_namespace_and_comment_guards(keys: dict[str, Key]) -> None:
    with pytest.raises(SigningError, match="namespace"):
        sign(C1, keys["relay"].private, namespace="git")
    with pytest.raises(SigningError, match="comment"):
        public_line(keys["relay"].private, comment="two\nlines")
