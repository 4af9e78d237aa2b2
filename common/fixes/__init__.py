"""Approved fixes (issue 12): the manifest, its canonical bytes, parameters, signatures
and the revocation list — pure code both the agent and the relay read, so the two sides
agree byte for byte on what an approval covers. No I/O except reading manifest files.
"""

from backline.common.fixes.manifest import (
    FixManifest,
    ManifestError,
    Parameter,
    as_dict,
    canonical_bytes,
    diff_text,
    digest,
    load_manifest,
    manifest_from_dict,
    parse_manifest,
    runs_on,
    to_toml,
)
from backline.common.fixes.params import ParamError, params_from_text, validate_params
from backline.common.fixes.revocation import (
    RevocationError,
    RevocationList,
    Revoked,
    is_revoked,
    merge,
)
from backline.common.fixes.signing import (
    NAMESPACE,
    FixTrust,
    SigningError,
    TrustVerdict,
    check_signatures,
    fingerprint,
    generate_key,
    public_line,
    sign,
    signer_of,
)

__all__ = [
    "NAMESPACE",
    "FixManifest",
    "FixTrust",
    "ManifestError",
    "ParamError",
    "Parameter",
    "RevocationError",
    "RevocationList",
    "Revoked",
    "SigningError",
    "TrustVerdict",
    "as_dict",
    "canonical_bytes",
    "check_signatures",
    "diff_text",
    "digest",
    "fingerprint",
    "generate_key",
    "is_revoked",
    "load_manifest",
    "manifest_from_dict",
    "merge",
    "params_from_text",
    "parse_manifest",
    "public_line",
    "runs_on",
    "sign",
    "signer_of",
    "to_toml",
    "validate_params",
]
