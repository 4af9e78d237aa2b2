"""The co-browse test site, served on loopback on two ports (two origins).

``python -m tests.sites.cobrowse.server`` prints ``{"a": PORT, "b": PORT}`` on its first
line and serves until killed. The first origin is ``http://127.0.0.1:A``; the second,
``http://localhost:B``, is another *site* (host differs), so Chromium's site isolation
puts the cross-origin iframe in a process of its own (an out-of-process iframe), the
harder case for an injector. ``{{CROSS_ORIGIN}}`` in a page becomes the second origin.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
PAGES = {"/": "index.html", "/index.html": "index.html", "/same.html": "same.html",
         "/cross.html": "cross.html", "/flood.html": "flood.html"}


def handler_for(cross_origin: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = PAGES.get(self.path.split("?", 1)[0])
            if name is None:
                self.send_error(404)
                return
            body = (HERE / name).read_text().replace("{{CROSS_ORIGIN}}", cross_origin)
            data = body.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

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
