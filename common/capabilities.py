"""The capability contract both sides read: names, default decisions, exit statuses.

A capability is one thing a technician can do in a session (``info``, ``diagnostics``,
``shell``, ...). The agent serves each as one SSH subsystem (``agent/capabilities/``),
the relay bridges each channel to the console (``relay/capabilities/``) and the
console shows each as one panel (``console/src/capabilities/``). What must agree on
both ends lives here, once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from backline.common.protocol import CAPABILITY_RE

__all__ = ["CAPABILITY_RE", "DEFAULT_DECISIONS", "DEFAULT_GRANTS", "KNOWN", "ChannelExit",
           "Spec", "spec"]


class ChannelExit(enum.IntEnum):
    """Exit statuses of a capability's SSH channel (not of the agent's command line)."""

    OK = 0
    #: The request the relay sent is not one this agent can honour (one error line).
    BAD_REQUEST = 2
    #: EX_NOPERM: the channel opened, then the customer or the local policy said no.
    REFUSED = 77


@dataclass(frozen=True)
class Spec:
    """What both sides know of one capability before any code of it is loaded."""

    name: str
    #: What the agent's local policy decides when its file does not name it.
    default_decision: str
    #: Whether a session is granted it when the technician does not ask otherwise.
    granted_by_default: bool
    summary: str


_SPECS = (
    Spec("info", "allow", True, "who this agent is and what its policy allows"),
    Spec("diagnostics", "allow", True, "what is wrong with this machine (JSON lines, streamed)"),
    Spec("fix", "ask", True, "run an approved fix"),
    Spec("cobrowse", "ask", True, "see, and when granted guide, the customer's browser"),
    Spec("sftp", "deny", False, "move files"),
    Spec("shell", "deny", False, "a terminal on the customer's machine (pty, recorded)"),
)

#: Every capability name either side knows, in a stable order.
KNOWN: tuple[str, ...] = tuple(s.name for s in _SPECS)
#: The agent policy's decision for a capability its file does not name.
DEFAULT_DECISIONS: dict[str, str] = {s.name: s.default_decision for s in _SPECS}
#: What a session is granted when the technician does not say.
DEFAULT_GRANTS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.granted_by_default)


def spec(name: str) -> Spec | None:
    return next((s for s in _SPECS if s.name == name), None)
