"""The relay's server TLS policy: Mozilla's "intermediate" profile, applied to the one
``SSLContext`` both TLS engines use (uvicorn builds it; :mod:`tls_socket` reuses it).

Why intermediate and not "modern" (TLS 1.3 only)? Agents run on customers' machines,
some with an older OpenSSL; intermediate is what Mozilla recommends for a general
server. What it means here (https://ssl-config.mozilla.org/, profile 5.7):

- TLS 1.2 and 1.3 only;
- TLS 1.2 ciphers: ECDHE with AES-GCM or ChaCha20-Poly1305, nothing else (no CBC, no
  RSA key exchange; the DHE ones need DH parameters, which we do not configure);
  TLS 1.3 suites are OpenSSL's defaults, which are exactly the profile's three;
- key exchange groups X25519, P-256, P-384 (OpenSSL 3 also offers X448, P-521 and
  the FFDHE groups by default);
- the client's cipher order (the profile's ``server_preferred_order: false``: every
  suite on the list is strong, and the client knows whether it has AES hardware);
- no compression (CRIME), no renegotiation;
- no session tickets in either version: ``num_tickets = 0`` only stops TLS 1.3's,
  ``OP_NO_TICKET`` stops TLS 1.2's. Agents never resume a session, a restarted relay
  could not honour a ticket, and a ticket key that lives as long as the process
  undoes forward secrecy for every session it sealed.
"""

from __future__ import annotations

import ctypes
import logging
import ssl

log = logging.getLogger("backline.relay.tls")

TLS12_CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
])
GROUPS = "X25519:P-256:P-384"
_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's SSL_CTX_set1_groups_list is this ctrl


def harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    """Apply the intermediate profile to a server context, in place; return it."""
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_TICKET
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.num_tickets = 0
    set_groups(ctx, GROUPS)
    return ctx


def set_groups(ctx: ssl.SSLContext, groups: str) -> None:
    """Limit the key exchange groups to ``groups`` (OpenSSL's colon-separated names).

    Python's ``ssl`` gains ``set_groups`` only in 3.15; before that ``set_ecdh_curve``
    takes one curve, which would cost X25519. So, where ``set_groups`` is missing, this
    calls OpenSSL's ``SSL_CTX_ctrl`` on the context's ``SSL_CTX`` through ctypes. The
    pointer is the first field after the object header of CPython's ``PySSLContext``;
    it is used only after ``SSL_CTX_get_options`` through it returns exactly what
    ``ctx.options`` says, so a layout that differs is detected, never written through.
    If anything is off, the fallback is P-256 alone: still within the profile.
    """
    setter = getattr(ctx, "set_groups", None)
    if setter is not None:
        setter(groups)
        return
    try:
        lib = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]  # its libssl
        lib.SSL_CTX_get_options.restype = ctypes.c_uint64
        lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
        lib.SSL_CTX_ctrl.restype = ctypes.c_long
        lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long,
                                     ctypes.c_char_p]
        header = ctypes.sizeof(ctypes.c_ssize_t) + ctypes.sizeof(ctypes.c_void_p)
        pointer = ctypes.c_void_p.from_address(id(ctx) + header).value
        if not pointer or lib.SSL_CTX_get_options(pointer) != int(ctx.options):
            raise RuntimeError("unexpected SSLContext layout")
        if lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode()) != 1:
            raise RuntimeError(f"OpenSSL refused the groups {groups}")
    except (OSError, AttributeError, RuntimeError, ValueError) as exc:
        log.warning("cannot set TLS groups %s (%s); using P-256 only", groups, exc)
        ctx.set_ecdh_curve("prime256v1")
