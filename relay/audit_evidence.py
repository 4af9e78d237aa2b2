"""The digest the audit trail recorded for a piece of evidence: ONE reading of the
events that store evidence, shared by the relay when it serves evidence
(relay/timeline.py) and by evidence bundles, built and verified offline
(relay/audit_bundle.py). Pure: it imports nothing of the database, so the offline
verifier can use it.

Why one definition: the relay keeps a fix's output under ``fix.run.ended``'s ``blob``
detail; ``output_sha256`` is only what the agent claimed (they differ when
``output_ok`` is false). Two readings of the same event had drifted, and the bundle
verifier called an intact output altered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: The events that store evidence: action -> (evidence kind, the detail naming its id).
STORED = {"recording.stored": ("recording", "recording"),
          "fix.run.ended": ("fix_output", "run"),
          "diagnostics.report": ("diagnostics_report", "report")}
KIND_ACTION = {kind: action for action, (kind, _) in STORED.items()}
#: The event retention writes when it deleted evidence's content (relay/retention.py).
DELETED = "retention.deleted"
#: The target prefix of the events about one piece of evidence (a playback's
#: ``recording:<id>``, retention's ``report:<id>`` / ``fix_run:<id>``), by kind.
TARGET_PREFIX = {"recording": "recording", "fix_output": "fix_run",
                 "diagnostics_report": "report"}


def target(kind: str, ident: str) -> str:
    """The target of the events about evidence ``(kind, ident)`` (see :data:`TARGET_PREFIX`)."""
    return f"{TARGET_PREFIX[kind]}:{ident}"


@dataclass(frozen=True)
class Recorded:
    """Evidence an event names. ``kept`` is false when the trail itself says the relay
    kept no content (``fix.run.ended`` with an empty ``blob``: the write failed)."""

    kind: str
    id: str
    sha256: str
    kept: bool = True


def recorded(action: str, details: Any) -> Recorded | None:
    """The evidence ``action``'s ``details`` (a dict) name, with the digest the trail
    recorded for it: ``sha256``; for a fix output the relay's ``blob`` (the agent's
    ``output_sha256`` only for events from before ``blob`` existed)."""
    spec = STORED.get(action)
    if spec is None or not isinstance(details, dict):
        return None
    kind, id_field = spec
    ident = details.get(id_field)
    if not isinstance(ident, str) or not ident:
        return None
    if action == "fix.run.ended":
        blob = details.get("blob")
        claimed = str(details.get("output_sha256") or "")
        if isinstance(blob, str):
            return Recorded(kind, ident, blob or claimed, kept=bool(blob))
        return Recorded(kind, ident, claimed)
    return Recorded(kind, ident, str(details.get("sha256") or ""))


def deleted(action: str, details: Any) -> tuple[str, str] | None:
    """``(kind, id)`` of the evidence a ``retention.deleted`` event says was deleted."""
    if action != DELETED or not isinstance(details, dict):
        return None
    kind, ident = details.get("kind"), details.get("id")
    if not isinstance(kind, str) or not isinstance(ident, str):
        return None
    return kind, ident
