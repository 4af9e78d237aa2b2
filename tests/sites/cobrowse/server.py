"""The co-browse test site, served on loopback on two ports (two origins).

``python -m tests.sites.cobrowse.server`` prints ``{"a": PORT, "b": PORT}`` on its first
line and serves until killed. The first origin is ``http://127.0.0.1:A``; the second,
``http://localhost:B``, is another *site* (host differs), so Chromium's site isolation
puts the cross-origin iframe in a process of its own (an out-of-process iframe), the
harder case for an injector. ``{{CROSS_ORIGIN}}`` in a page becomes the second origin.

``/large.html`` is a page of :data:`LARGE_ROWS` rows of 8 elements each (10,000
elements, and a text node in 7 of them: 18,750 nodes in the rows) whose full snapshot
is larger than a channel line (issue 13, acceptance 4); ``?rows=N`` makes it another
size (at most 20,000 rows).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGES = {"/": "index.html", "/index.html": "index.html", "/same.html": "same.html",
         "/cross.html": "cross.html", "/flood.html": "flood.html",
         "/large.html": "large.html"}
LARGE_ROWS = 1250
#: One row: a div and 7 children, each with its text; a title makes the snapshot larger.
ROW = ('<div class="row" title="row {i}: a longer description of this row, as a real '
       'list would have">'
       '<span>item {i}</span><b>name {i}</b><i>kind</i><em>state</em>'
       '<strong>{i}</strong><code>c-{i}</code><a href="#r{i}">open</a></div>')


def rows(query: str) -> str:
    n = LARGE_ROWS
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if key == "rows" and value.isdigit():
            n = min(int(value), 20_000)
    return "\n".join(ROW.format(i=i) for i in range(n))


#: ``/slow.html``: a page sent in pieces, a pause between them, so that the parser inserts
#: a private element, a masked field and a blocked element in one task and their
#: contents in later ones (the recorder starts at <html>: all of it goes as mutations).
SLOW_PIECES = (
    '<!doctype html><html><head><meta charset="utf-8"><title>slow</title></head><body>'
    '<p>SLOW-START</p><div id="deep" data-backline-private><p><span>',
    'DEEP-SECRET-A</span></p><ul><li>DEEP-SECRET-B</li></ul><div class="acct"><b>',
    'ACCT-SECRET-C</b></div></div><div class="acct"><i>',
    'ACCT-SECRET-D</i></div><form><input id="pw" type="password" value="PW-ATTR-SECRET">'
    '<textarea id="ta">',
    'TEXTAREA-SECRET</textarea></form><p>SLOW-PUBLIC-END</p></body></html>',
)


def handler_for(cross_origin: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path, _, query = self.path.partition("?")
            if path == "/slow.html":
                self.slow()
                return
            name = PAGES.get(path)
            if name is None:
                self.send_error(404)
                return
            body = (HERE / name).read_text().replace("{{CROSS_ORIGIN}}", cross_origin)
            if name == "large.html":
                body = body.replace("{{ROWS}}", rows(query))
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def slow(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            for i, piece in enumerate(SLOW_PIECES):
                if i:
                    time.sleep(0.3)
                # Padding past the parser's first chunk, so each piece is parsed on arrival.
                self.wfile.write(piece.encode() + b"<!--" + b" " * 2048 + b"-->")
                self.wfile.flush()
            self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def main() -> None:
    b = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(""))
    port_b = b.server_address[1]
    a = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(f"http://localhost:{port_b}"))
    b.RequestHandlerClass = handler_for(f"http://127.0.0.1:{a.server_address[1]}")
    threading.Thread(target=b.serve_forever, daemon=True).start()
    print(json.dumps({"a": a.server_address[1], "b": port_b}), flush=True)
    sys.stdout.flush()
    a.serve_forever()


if __name__ == "__main__":
    main()
