"""What the relay tells agents to trust, and what it accepts their signatures bound to.

- ``pins``: SPKI pins, the current key first. For a self-signed relay: its key, then
  the pre-generated next key (``tls_next.key``) that ``cert rotate --new-key``
  promotes, so agents that enrolled with both pins survive that change; for
  ``tls = "files"``: the certificate's key; for ``tls = "off"``: the proxy's key pins
  (``tls_pins``) or the pin of the CA in ``tls_ca_file``. ``tls_pins`` adds backup
  pins in the other modes too. Tokens, ``join --pin`` and the welcome carry them.
- ``fingerprint``: the SHA-256 of the certificate, which agents pinned and bound
  before SPKI pins (``tls_fingerprint`` when TLS ends at a proxy).
- ``bindings``: what an agent's enrollment and control signatures may be bound to:
  any of the above. Agents bind the pin they matched (their certificate's hash when
  they still hold a legacy pin), so a signature made for another relay's key is
  refused, while agents from before and after this change both log in.

``GET /agent/pins`` serves ``pins`` signed by the audit key with a serial
(relay/pinset_serial.py), never the bare list: any pinned key opens the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backline.common.tlspin import normalise, parse_pin, public_ca_name, spki_pin_of
from backline.relay import datadir as datadir_mod
from backline.relay.config import RelayConfig
from backline.relay.datadir import DataDir

if TYPE_CHECKING:
    from typing import Any, Protocol

    from backline.relay.pinset_serial import Announcement

    class Relay(Protocol):
        """What the pins answer and the reloader use of the relay."""

        config: RelayConfig
        datadir: DataDir
        tls_identity: TlsIdentity | None
        pins: tuple[str, ...]
        pin_announcement: Announcement | None

        def set_tls_identity(self, identity: TlsIdentity) -> None: ...

        def record(self, actor: str, action: str, target: str = "", **details: Any) -> None: ...

log = logging.getLogger("backline.relay.tls")
#: Mozilla's profiles' ``maximum_certificate_lifespan``.
MAX_LIFETIME_DAYS = 366


@dataclass(frozen=True)
class TlsIdentity:
    pins: tuple[str, ...]
    fingerprint: str
    #: When the served certificate expires (Unix time); ``None`` when a proxy serves it.
    not_after: float | None = None
    not_before: float | None = None
    cert_path: str = ""
    key_path: str = ""

    @property
    def bindings(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.pins, *([self.fingerprint] if self.fingerprint
                                                   else [])]))

    def expires_in_days(self, now: float | None = None) -> float | None:
        if self.not_after is None:
            return None
        now = dt.datetime.now(dt.UTC).timestamp() if now is None else now
        return (self.not_after - now) / 86400


def load(config: RelayConfig, datadir: DataDir) -> TlsIdentity:
    """Read the certificate and pins the relay serves now (again after a rotation)."""
    extra = [parse_pin(p) for p in config.tls_pins]
    if config.tls == "off":
        # The proxy's key pins first: the console's `join --pin` shows the first pin,
        # and a customer running it has no CA file.
        pins = list(extra)
        if config.tls_ca_file:
            pem = Path(config.tls_ca_file).read_text()
            public = public_ca_name(pem)
            if public:  # only with tls_ca_allow_public (RelayConfig.validate)
                log.warning("tls_ca_file is a PUBLIC CA (%s): agents pinning it trust any "
                            "certificate it issues for this relay's name, to anyone who can "
                            "get one; pin the proxy's key (tls_pins) instead", public)
            pins.append(spki_pin_of(x509.load_pem_x509_certificate(pem.encode())))
        fp = normalise(config.tls_fingerprint) if config.tls_fingerprint else ""
        return TlsIdentity(tuple(dict.fromkeys(pins)), fp)
    if config.tls == "self-signed":
        cert_path, key_path = datadir.tls_cert, datadir.tls_key
    else:
        cert_path, key_path = Path(config.tls_cert_file), Path(config.tls_key_file)
    cert = datadir_mod.load_cert(cert_path)
    pins = [spki_pin_of(cert)]
    if config.tls == "self-signed" and datadir.tls_next_key.exists():
        pins.append(datadir_mod.key_pin(datadir_mod.load_key(datadir.tls_next_key)))
    return TlsIdentity(tuple(dict.fromkeys([*pins, *extra])),
                       datadir_mod.pem_fingerprint(cert_path),
                       cert.not_valid_after_utc.timestamp(),
                       cert.not_valid_before_utc.timestamp(), str(cert_path), str(key_path))


async def pins_endpoint(request: Request) -> Response:
    """``GET /agent/pins``: the pins agents should hold, for those that enrolled before
    the next key existed (agent/pinsync.py). Public information, like the certificate
    itself; what makes it trustworthy is the audit key's signature over it (with a
    serial), not the connection it is read over, which any pinned key opens."""
    relay: Relay = request.app.state.relay
    announced = relay.pin_announcement
    if announced is None:
        return JSONResponse({"pins": list(relay.pins)})
    return JSONResponse(announced.answer())


def warn_if_expiring(identity: TlsIdentity) -> float | None:
    """Log how soon the served certificate expires when that is soon; return the days."""
    days = identity.expires_in_days()
    if days is None:
        return None
    if identity.not_before is not None and identity.not_after is not None and \
            (identity.not_after - identity.not_before) / 86400 > MAX_LIFETIME_DAYS:
        log.warning("the TLS certificate %s is valid for more than %d days, beyond what "
                    "Mozilla's TLS profiles (and browsers) accept: run `backline-relay cert "
                    "rotate` (self-signed: same key, agents keep working), then SIGHUP",
                    identity.cert_path, MAX_LIFETIME_DAYS)
    if days <= 0:
        log.error("the TLS certificate %s has EXPIRED: browsers refuse it; run "
                  "`backline-relay cert rotate` (self-signed) or renew it, then reload the "
                  "relay (SIGHUP)", identity.cert_path)
    elif days <= datadir_mod.CERT_WARN_DAYS:
        log.warning("the TLS certificate %s expires in %.0f days: run `backline-relay cert "
                    "rotate` (self-signed) or renew it, then reload the relay (SIGHUP)",
                    identity.cert_path, days)
    return days


class TlsReloader:
    """Serve a rotated certificate without a restart: on SIGHUP (and when the files
    changed, checked hourly with the expiry), load the certificate and key into the
    live ``SSLContext``, which both TLS engines read at every new handshake; open
    connections keep the certificate they were made with. A pair that does not load
    (a half-written or mismatched key) is refused, logged and audited, and the old
    one stays in use."""

    CHECK_EVERY_S = 3600.0

    def __init__(self, relay: Relay, ctx: ssl.SSLContext | None) -> None:
        self.relay = relay
        self.ctx = ctx
        self._task: asyncio.Task[None] | None = None
        self._stamp = self._files_stamp()

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        warn_if_expiring(self.relay.tls_identity or load(self.relay.config, self.relay.datadir))
        if hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self.reload)
        self._task = loop.create_task(self._watch())

    def _files_stamp(self) -> tuple[float, ...]:
        identity = self.relay.tls_identity
        paths = [identity.cert_path, identity.key_path] if identity else []
        stamp = []
        for path in filter(None, paths):
            try:
                stamp.append(os.stat(path).st_mtime)
            except OSError:
                stamp.append(0.0)
        return tuple(stamp)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_EVERY_S)
            if self._files_stamp() != self._stamp:
                self.reload()
            elif self.relay.tls_identity is not None:
                warn_if_expiring(self.relay.tls_identity)

    def reload(self) -> bool:
        relay = self.relay
        try:
            identity = load(relay.config, relay.datadir)
            if self.ctx is not None and identity.cert_path:
                # Tried on a scratch context first: a key that does not match would
                # leave the live one with a certificate and no key.
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                    identity.cert_path, identity.key_path)
                self.ctx.load_cert_chain(identity.cert_path, identity.key_path)
        except (OSError, ValueError, ssl.SSLError) as exc:
            log.error("TLS reload refused, still serving the previous certificate: %s", exc)
            relay.record("system", "relay.tls_reload.refused", "relay", detail=str(exc)[:200])
            return False
        self._stamp = self._files_stamp()
        previous = relay.pins
        relay.set_tls_identity(identity)
        relay.record("system", "relay.tls_reload", "relay", fingerprint=identity.fingerprint,
                     pins=list(identity.pins), key_changed=previous[:1] != identity.pins[:1])
        warn_if_expiring(identity)
        return True
