"""The relay's log file, read as an attacker would like it read: network input with
newlines and control characters must not start a line of its own (a forged record),
in the text format and in the JSON-lines format; secrets never appear."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path
from urllib.parse import quote

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from backline.common.tlspin import client_context
from backline.relay.logfmt import EscapingFormatter, JsonFormatter, escape
from tests.harness import Api, RelayProcess, admin_api

# Hostile text: in sign-in names (refused at the edge) and in request paths (logged).
FORGED = "x\nFAKE audit user:admin auth.login"
FORGED_DATED = "y\r\n2026-01-01 00:00:00,000 INFO forged: hi"
WRONG_PASSWORD = "not-the-password-xyzzy"
LINE_START = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+: ")


def _hostile_requests(relay: RelayProcess) -> None:
    """Sign-in names with control characters are refused at the API's edge (400, the
    name never logged); a request path is the refused request's target, percent-decoded
    (Starlette's URL drops CR, LF and tab from it; the formatter escapes the rest)."""
    api = Api(relay)
    try:
        for name in (FORGED, FORGED_DATED, "bell\x07\x1b[31mred\u2028sep\u202eevil"):
            r = api.login(name, WRONG_PASSWORD)
            assert r.status_code in (400, 401), r.text
        for text in (FORGED, FORGED_DATED):
            r = api.http.get("/api/v1/" + quote(text))
            assert r.status_code == 404, r.text
            # A socket's path is not cleaned like an HTTP URL: the session id in
            # /agent/tunnel/{id} reaches the refusal's audit line with its CR/LF.
            url = relay.url.replace("https", "wss") + "/agent/tunnel/" + quote(text, safe="")
            with connect(url, ssl=client_context(), open_timeout=10) as sock:
                sock.send(json.dumps({"v": 1, "type": "tunnel", "token": "AAAA"}))
                with contextlib.suppress(ConnectionClosed):
                    sock.recv(5)
    finally:
        api.close()


def test_text_log_has_no_forged_lines(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path).start()
    try:
        admin_api(relay).close()
        _hostile_requests(relay)
    finally:
        relay.stop()
    text = relay.log()
    assert "FAKE audit" in text, "the refused request was not logged at all"
    assert "session:x\\nFAKE audit" in text, "the tunnel's refusal, escaped, is logged"
    assert "session:y\\r\\n2026-01-01" in text
    for line in text.splitlines():
        assert not line.lower().startswith(("fake", "2026-01-01", "y")), f"forged: {line!r}"
        assert LINE_START.match(line), f"a line that is not a record: {line!r}"
        assert line.isprintable(), f"a control character reached the log: {line!r}"
    assert WRONG_PASSWORD not in text and (relay.admin_password or "-") not in text


def test_json_log_is_one_object_per_line(tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, {"BACKLINE_LOG_FORMAT": "json"}).start()
    try:
        admin_api(relay).close()
        _hostile_requests(relay)
    finally:
        relay.stop()
    records = []
    for line in relay.log().splitlines():
        assert line.isascii() and line.isprintable(), f"not one clean line: {line!r}"
        records.append(json.loads(line))
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    uvicorn = [r for r in records if r["logger"].startswith("uvicorn")]
    assert uvicorn, "uvicorn's own records did not come through the relay's formatter"
    audit = [r for r in records if r.get("action") == "request.refused"]
    assert audit and any("FAKE audit" in r["message"] for r in audit)
    tunnel = [r for r in records if r.get("action") == "session.tunnel.refused"]
    assert {r["target"] for r in tunnel} >= {"session:" + FORGED, "session:" + FORGED_DATED}
    assert {"actor", "target", "details"} <= set(audit[0])
    assert WRONG_PASSWORD not in relay.log()


def _record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("bad\nFAKE line")
        except ValueError:
            import sys

            info = sys.exc_info()
    return logging.LogRecord("backline.relay", logging.WARNING, __file__, 1, msg, args, info)


def test_formatter_escapes_message_args_and_traceback() -> None:
    line = EscapingFormatter().format(_record("user %s said %r", "a\nb", "c\rd", exc=True))
    assert "\n" not in line and "\r" not in line
    assert "a\\nb" in line and "bad\\nFAKE line" in line
    assert escape("tab\there\x00\x7f\u0085\u2028") == "tab\\there\\x00\\x7f\\x85\\u2028"
    assert escape("C:\\plain\\path") == "C:\\plain\\path"  # printable text is left alone
    as_json = json.loads(JsonFormatter().format(_record("x %s", "a\nb", exc=True)))
    assert as_json["message"] == "x a\nb" and "FAKE line" in as_json["exc"]
