"""Streaming the audit trail to a SIEM (docs/siem-and-retention.md).

:mod:`.syslog` formats RFC 5424 messages and sends them over TCP or TLS (RFC 5425
octet counting); :mod:`.http` POSTs batches of JSON lines; :mod:`.stream` reads the
trail by ``seq`` from a durable cursor per destination and feeds both.
"""
