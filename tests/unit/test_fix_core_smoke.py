"""The fix-core API end to end in one pass: parse, digest, params, sign, check, revoke."""

from __future__ import annotations

from backline.common import fixes
from backline.common.fixes import revocation

TOML = '''
id = "dns-flush"
version = 1
title = "Flush the DNS cache"
platforms = ["linux"]
interpreter = "sh"
script = "echo flushed\\n"
timeout_s = 60
risk = "low"
[parameters.SERVICE]
type = "string"
default = "cron.service"
pattern = '^[A-Za-z0-9@._-]+$'
'''


def test_round_trip_sign_check_revoke() -> None:
    m = fixes.parse_manifest(TOML)
    assert fixes.manifest_from_dict(m.as_dict()) == m
    assert fixes.digest(m).startswith("sha256:")
    assert fixes.validate_params(m, {}) == {"BACKLINE_PARAM_SERVICE": "cron.service"}
    priv, pub = fixes.generate_key("relay")
    sig = fixes.sign(fixes.canonical_bytes(m), priv)
    assert fixes.signer_of(fixes.canonical_bytes(m), sig, [pub]) == fixes.fingerprint(pub)
    verdict = fixes.check_signatures(m, [sig], fixes.FixTrust((pub,)))
    assert verdict.ok and verdict.signers == (fixes.fingerprint(pub),)
    rl = revocation.make(1, [revocation.entry(m.id, m.version, fixes.digest(m), "bad", 1.0)])
    kept = fixes.merge(None, rl, revocation.sign(rl, priv), [pub])
    assert fixes.is_revoked(kept, m)


def test_importing_the_package_does_not_load_asyncssh() -> None:
    """An idle agent imports common/fixes; asyncssh (measured 27 MiB) waits for a fix."""
    import subprocess
    import sys

    code = ("import sys, backline.common.fixes, backline.common.fixes.revocation, "
            "backline.common.fixes.trustdoc; print('asyncssh' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.strip() == "False"
