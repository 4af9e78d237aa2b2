"""``python -m backline.common.fixes``: the canonical bytes and digest of a manifest, for an
offline approver who signs with ``ssh-keygen -Y sign`` on a machine that holds their key
and no relay.

Why here and not only in the relay's CLI: the approver should compute what they sign
from the manifest and scripts they read themselves, not take bytes from the relay they
are guarding against. The input is either a TOML manifest (its ``*_file`` next to it) or
the JSON the relay serves (``GET /api/v1/fixes/{id}/{version}``: its ``manifest``, or a
bare ``as_dict``).

    python -m backline.common.fixes digest FILE
    python -m backline.common.fixes canonical FILE > fix.canonical
    python -m backline.common.fixes check FILE SIGFILE KEYFILE...   (exit 0 if it verifies)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backline.common.fixes.manifest import (
    MAX_MANIFEST_BYTES,
    FixManifest,
    ManifestError,
    canonical_bytes,
    digest,
    load_manifest,
    manifest_from_dict,
)
from backline.common.fixes.patterns import PatternEngineMissing
from backline.common.fixes.signing import signer_of


def read(path: str) -> FixManifest:
    p = Path(path)
    if p.suffix == ".json":
        raw = p.read_bytes()[:MAX_MANIFEST_BYTES + 1]
        if len(raw) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest: {p} is more than {MAX_MANIFEST_BYTES} bytes")
        try:
            data = json.loads(raw)
        except ValueError:
            raise ManifestError(f"manifest: {p} is not JSON") from None
        if isinstance(data, dict) and isinstance(data.get("manifest"), dict):
            data = data["manifest"]
        return manifest_from_dict(data)
    return load_manifest(p)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backline.common.fixes",
                                     description="Canonical bytes and digest of a fix.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("digest", "print sha256:<hex> of the canonical bytes"),
                       ("canonical", "write the canonical bytes (what is signed) to stdout")):
        sub.add_parser(name, help=text).add_argument("manifest", help="manifest .toml or .json")
    check = sub.add_parser("check", help="verify an armored signature against public keys")
    check.add_argument("manifest")
    check.add_argument("signature", help="file holding -----BEGIN SSH SIGNATURE-----")
    check.add_argument("keys", nargs="+", help="files of OpenSSH public key lines")
    args = parser.parse_args(argv)
    try:
        m = read(args.manifest)
        if args.command == "digest":
            print(digest(m))
        elif args.command == "canonical":
            sys.stdout.buffer.write(canonical_bytes(m))
        else:
            lines = [line for k in args.keys for line in Path(k).read_text().splitlines()
                     if line.strip() and not line.startswith("#")]
            who = signer_of(canonical_bytes(m), Path(args.signature).read_text(), lines)
            if who is None:
                print(f"{m.ref}: signature does NOT verify ({digest(m)})", file=sys.stderr)
                return 1
            print(f"{m.ref}: good signature by {who} ({digest(m)})")
    except (ValueError, OSError, PatternEngineMissing) as exc:  # ManifestError,
        # SigningError, bad UTF-8; google-re2 not installed (a manifest with a pattern)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
