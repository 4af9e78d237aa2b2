"""Scan one TLS server with sslyze and print the verdict as one JSON object.

Run by tests/integration/test_tls_policy.py with ``.venv-sslyze/bin/python`` (scripts/setup makes
that venv): sslyze pins its own ``cryptography`` and ``pydantic``, which conflict with
the project's, so it cannot live in ``.venv``. Usage: ``sslyze_scan.py HOST PORT
[CA_FILE]``: a self-signed relay is its own trust anchor (agents trust it by its key
pin), so the test names its certificate as the CA sslyze validates the path against.

Printed: ``compliant`` (Mozilla "intermediate", sslyze's own checker), ``issues`` (what
the checker found), ``tls12_ticket_resumption`` and ``tls12_ciphers`` (the TLS 1.2
suites the server accepted), ``curves``, ``tls13_ciphers``, ``compression``,
``client_renegotiation``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sslyze import (
    CertificateInfoExtraArgument,
    ScanCommand,
    ScanCommandsExtraArguments,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)
from sslyze.mozilla_tls_profile.tls_config_checker import (
    SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
    MozillaTlsConfiguration,
    ServerNotCompliantWithTlsConfiguration,
    ServerScanResultIncomplete,
    TlsConfigurationEnum,
    check_server_against_tls_configuration,
)


def main(host: str, port: int, ca_file: str | None) -> int:
    extra = ScanCommandsExtraArguments(
        certificate_info=CertificateInfoExtraArgument(custom_ca_file=Path(ca_file))
    ) if ca_file else ScanCommandsExtraArguments()
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=host, port=port, ip_address=host),
        scan_commands={*SCAN_COMMANDS_NEEDED_BY_MOZILLA_CHECKER,
                       ScanCommand.SESSION_RESUMPTION},
        scan_commands_extra_arguments=extra)
    scanner = Scanner(per_server_concurrent_connections_limit=4)
    scanner.queue_scans([request])
    result = next(iter(scanner.get_results()))
    if result.scan_status != ServerScanStatusEnum.COMPLETED or result.scan_result is None:
        print(json.dumps({"error": f"scan did not complete: {result.connectivity_error_trace}"}))
        return 1
    out: dict[str, object] = {}
    config = MozillaTlsConfiguration.get(TlsConfigurationEnum.MOZILLA_INTERMEDIATE)
    try:
        check_server_against_tls_configuration(result, config)
        out.update(compliant=True, issues={})
    except ServerNotCompliantWithTlsConfiguration as exc:
        out.update(compliant=False, issues=exc.issues)
    except ServerScanResultIncomplete as exc:
        out.update(compliant=False, issues={"incomplete": str(exc)})
    scan = result.scan_result
    resumption = scan.session_resumption.result
    out["tls12_ticket_resumption"] = (resumption.tls_ticket_resumption_result.value
                                      if resumption else "scan failed")
    out["tls12_ticket_successes"] = (resumption.tls_ticket_successful_resumptions_count
                                     if resumption else -1)
    tls12 = scan.tls_1_2_cipher_suites.result
    out["tls12_ciphers"] = sorted(c.cipher_suite.openssl_name
                                  for c in tls12.accepted_cipher_suites) if tls12 else []
    tls13 = scan.tls_1_3_cipher_suites.result
    out["tls13_ciphers"] = sorted(c.cipher_suite.name
                                  for c in tls13.accepted_cipher_suites) if tls13 else []
    curves = scan.elliptic_curves.result
    out["curves"] = sorted(c.name for c in curves.supported_curves or []) if curves else []
    compression = scan.tls_compression.result
    out["compression"] = compression.supports_compression if compression else None
    renegotiation = scan.session_renegotiation.result
    out["client_renegotiation"] = (renegotiation.is_vulnerable_to_client_renegotiation_dos
                                   if renegotiation else None)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
