"""The HTTPS destination: batches of audit events POSTed as JSON lines.

Each POST is ``application/x-ndjson``, one event per line exactly as ``backline-relay
audit export`` writes it (``seq``, ``hash`` and ``prev_hash`` included), signed like
the relay's other webhooks (``X-Backline-Signature: sha256=<HMAC-SHA256 of the body>``,
:func:`backline.relay.webhooks.sign`) and named by ``Idempotency-Key``: the same key
for every retry of the same batch, so a receiver that saw a batch whose answer was
lost can tell it is one it holds. A 2xx answer is the acknowledgement; anything else
(a redirect included: it would turn the POST into a GET elsewhere) is a failure.
"""

from __future__ import annotations

import base64
import http.client
import ssl
import urllib.error
import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from backline.common import __version__
from backline.relay.webhooks import SIGNATURE_HEADER, NoRedirect, sign

IDEMPOTENCY_HEADER = "Idempotency-Key"
BATCH_HEADER = "X-Backline-Batch"
MEDIA_TYPE = "application/x-ndjson"


class DeliveryError(OSError):
    """The receiver answered, but not with a 2xx."""


class JsonLinesSender:
    """POSTs one batch at a time over a TLS connection verified against ``ca_file``
    (or the system's trust store)."""

    def __init__(self, url: str, secret: str, *, ca_file: str | None = None,
                 timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("an https destination's url starts with https://")
        # Credentials in the URL (https://user:password@host/...) are sent as HTTP Basic
        # authentication, never as part of the URL (urllib would take them for the host).
        self._auth = ""
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self._auth = "Basic " + base64.b64encode(pair.encode()).decode()
            netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
            url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        self.url = url
        self.secret = secret
        self.timeout = timeout
        context = ssl.create_default_context(cafile=ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # No redirects, and no proxy from the environment (build_opener adds one by
        # default): the trail goes to the configured collector and nowhere else.
        self._opener = urllib.request.build_opener(
            NoRedirect, urllib.request.ProxyHandler({}),
            urllib.request.HTTPSHandler(context=context))

    @property
    def target(self) -> str:
        """The URL without credentials, path or query (what logs and the trail show)."""
        parts = urlsplit(self.url)
        return f"https://{parts.hostname}{':' + str(parts.port) if parts.port else ''}"

    def post_blocking(self, body: bytes, batch_id: str, first: int, last: int) -> None:
        """POST one batch; ``DeliveryError`` (an ``OSError``) unless answered 2xx."""
        request = urllib.request.Request(  # noqa: S310 - https only (checked above)
            self.url, data=body, method="POST", headers={
                "Content-Type": MEDIA_TYPE,
                "User-Agent": f"backline-relay/{__version__}",
                IDEMPOTENCY_HEADER: batch_id,
                BATCH_HEADER: f"{first}-{last}",
                SIGNATURE_HEADER: sign(self.secret, body),
                **({"Authorization": self._auth} if self._auth else {}),
            })
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            exc.close()
            status = int(exc.code)
        except urllib.error.URLError as exc:
            raise OSError(str(exc.reason)[:200]) from None
        except http.client.HTTPException as exc:
            # An answer that is not HTTP (BadStatusLine, IncompleteRead...): a failure
            # like any other, retried; by its type only, not the collector's bytes.
            raise DeliveryError(f"not an HTTP answer ({type(exc).__name__})") from None
        if not 200 <= status < 300:
            raise DeliveryError(f"HTTP {status}")
