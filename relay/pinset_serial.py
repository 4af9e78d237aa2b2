"""The signed pin set the relay announces on ``GET /agent/pins`` (common/pinset.py).

The serial lives in the data directory (``tls_pinset.json``, beside the keys it
describes) with the set it was given to: when the relay's pins differ from the stored
set (a ``cert rotate --new-key``, an edited ``tls_pins``), the serial is raised and
both are written atomically, before the new set is served, so a serial is never
reused for another set — not across restarts, reloads or the ``cert`` commands.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from backline.common import keys, pinset, protocol
from backline.relay.datadir import DataDir

log = logging.getLogger("backline.relay.tls")


@dataclass(frozen=True)
class Announcement:
    pins: tuple[str, ...]
    serial: int
    signature: str
    #: The relay ends TLS itself: CA-pinning agents bind its leaf key (common/pinset.py).
    bind_leaf: bool = False

    def answer(self) -> dict[str, object]:
        """The body of ``GET /agent/pins``; agents from before read only ``pins``."""
        if not self.serial:
            return {"pins": list(self.pins)}
        return {"pins": list(self.pins), "serial": self.serial, "signature": self.signature,
                **({"bind": "leaf"} if self.bind_leaf else {})}


def _stored(datadir: DataDir) -> tuple[int, list[str], bool]:
    try:
        data = json.loads(datadir.tls_pinset.read_text())
        serial, pins = int(data["serial"]), [str(p) for p in data["pins"]]
        bind_leaf = bool(data.get("bind_leaf", False))
    except FileNotFoundError:
        return 0, [], False
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # Never restart at 0: agents would ignore every set until the old serial.
        raise OSError(f"{datadir.tls_pinset} is unreadable ({exc}); restore it from a "
                      "backup (or remove it only if no agent ever synced its pins)") from None
    return serial, pins, bind_leaf


def serial_for(datadir: DataDir, pins: Sequence[str], bind_leaf: bool = False) -> int:
    """The serial of ``pins``: the stored one if they are the stored set, else the next."""
    serial, stored, stored_bind = _stored(datadir)
    if stored == list(pins) and stored_bind == bind_leaf and serial:
        return serial
    serial += 1
    keys.write_private_file(datadir.tls_pinset, (json.dumps(
        {"serial": serial, "pins": list(pins), "bind_leaf": bind_leaf}, indent=2)
        + "\n").encode())
    return serial


def announce(datadir: DataDir, audit_key: keys.PrivateKey, pins: Sequence[str],
             bind_leaf: bool = False) -> Announcement:
    """The signed announcement of ``pins``; unsigned (which agents ignore) only when the
    serial cannot be kept, which is logged."""
    if not pins:
        return Announcement((), 0, "")
    try:
        serial = serial_for(datadir, pins, bind_leaf)
    except OSError as exc:
        log.error("cannot record the pin set's serial, so agents will not learn new pins: "
                  "%s", exc)
        return Announcement(tuple(pins), 0, "")
    signature = pinset.sign(audit_key, serial, pins, bind_leaf)
    return Announcement(tuple(pins), serial, protocol.b64e(signature), bind_leaf)
