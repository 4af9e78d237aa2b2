"""The agent's state directory: its identity key, what it pinned, and its status.

Written atomically (temp file + rename), so a crash never leaves half a file; the
key is 0600 and the directory 0700, readable only by the agent's own user.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from backline.common import keys
from backline.common.tlspin import PeerMatch, Trust

ENV_STATE_DIR = "BACKLINE_AGENT_STATE_DIR"


def default_state_dir() -> Path:
    env = os.environ.get(ENV_STATE_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs  # only when no directory was named

    return Path(platformdirs.user_data_dir("backline-agent", appauthor=False))


@dataclass
class Enrollment:
    """What the agent learned and pinned when it enrolled.

    ``pins``: the relay's SPKI pins (``sha256//...``), its current key first;
    ``ca_pem``: a CA the relay's chain must verify against (then ``pins`` holds that
    CA's key pin); ``fingerprint``: the certificate hash agents pinned before SPKI
    pins, kept only until the first connection that matches it, which records the
    key's pin in ``pins`` and empties it (:meth:`StateDir.migrate_pin`);
    ``pins_serial``: the serial of the relay's signed pin set ``pins`` were last set
    from (the token's, or ``GET /agent/pins``), 0 if none: only a validly signed set
    with a greater serial replaces them (agent/pinsync.py)."""

    agent_id: str
    relay_url: str
    control_url: str
    group: str
    ca_public_key: str
    audit_public_key: str
    fingerprint: str = ""
    pins: list[str] = field(default_factory=list)
    ca_pem: str = ""
    pins_serial: int = 0
    #: With ``ca_pem``: the relay (in its signed pin set) said it ends TLS itself, so
    #: the handshake binds the served certificate's key, not the CA's pin.
    bind_leaf: bool = False
    #: The relay's fix-approval keys (OpenSSH public key lines): from ``enrolled``, or
    #: for agents enrolled earlier from the relay's signed ``GET /agent/fix-trust``
    #: (agent/fixes/trust.py), whose serial ``fix_keys_serial`` is (0: the token's).
    fix_keys: list[str] = field(default_factory=list)
    fix_keys_serial: int = 0
    heartbeat_s: int = 30
    enrolled_at: float = field(default_factory=time.time)

    def bound(self, match: PeerMatch) -> str:
        """What this agent's handshake signature binds on a connection it trusted
        (common/tlspin.py): by a CA, the served key once the relay said it ends TLS."""
        if self.ca_pem and self.bind_leaf and not match.legacy:
            return match.spki
        return match.bound

    @property
    def trust(self) -> Trust:
        legacy = [self.fingerprint] if self.fingerprint else []
        return Trust.of([*self.pins, *legacy], self.ca_pem)


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def key_path(self) -> Path:
        return self.root / "identity_key"

    @property
    def enrollment_path(self) -> Path:
        return self.root / "enrollment.json"

    @property
    def status_path(self) -> Path:
        return self.root / "status.json"

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def is_enrolled(self) -> bool:
        return self.enrollment_path.exists() and self.key_path.exists()

    def save_enrollment(self, key: keys.PrivateKey, enrollment: Enrollment) -> None:
        self.prepare()
        keys.save_private(key, self.key_path, openssh=True)
        self._write_json(self.enrollment_path, asdict(enrollment))

    def load_enrollment(self) -> Enrollment:
        data = json.loads(self.enrollment_path.read_text())
        known = {f.name for f in fields(Enrollment)}
        return Enrollment(**{k: v for k, v in data.items() if k in known})

    def migrate_pin(self, enrollment: Enrollment, spki: str) -> Enrollment:
        """Pin the relay's key ``spki`` instead of the legacy certificate hash it was
        just matched by."""
        return self.update_pins(enrollment, [spki, *(p for p in enrollment.pins if p != spki)])

    def update_pins(self, enrollment: Enrollment, pins: list[str],
                    serial: int | None = None, bind_leaf: bool | None = None) -> Enrollment:
        """Record ``pins`` (and drop any legacy certificate hash), and with ``serial``
        the signed set's serial, in one write, atomic (temp file and rename, as every
        state file): a crash leaves the old pins and serial or the new ones."""
        updated = replace(enrollment, fingerprint="", pins=list(pins),
                          pins_serial=enrollment.pins_serial if serial is None else serial,
                          bind_leaf=enrollment.bind_leaf if bind_leaf is None else bind_leaf)
        self._write_json(self.enrollment_path, asdict(updated))
        return updated

    def update_fix_keys(self, enrollment: Enrollment, fix_keys: list[str],
                        serial: int) -> Enrollment:
        """Record the relay's fix keys and the serial of the signed document they came
        from, in one atomic write."""
        updated = replace(enrollment, fix_keys=list(fix_keys), fix_keys_serial=serial)
        self._write_json(self.enrollment_path, asdict(updated))
        return updated

    def load_key(self) -> keys.PrivateKey:
        return keys.load_private(self.key_path)

    def write_status(self, state: str, **extra: Any) -> None:
        self.prepare()
        self._write_json(self.status_path, {"state": state, "since": time.time(),
                                            "pid": os.getpid(), **extra})

    def read_status(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads(self.status_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return data

    def _write_json(self, path: Path, data: dict[str, Any]) -> None:
        keys.write_private_file(path, (json.dumps(data, indent=2) + "\n").encode())
