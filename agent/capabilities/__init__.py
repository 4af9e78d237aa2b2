"""Capabilities: what a technician can do on this machine, one SSH subsystem each.

A capability is a name (``info``, ``diagnostics``, ``shell``, ...) and an async handler
that gets the asyncssh server process of its channel and a :class:`SessionContext`.
The handler returns the exit status (``None`` means 0) or calls ``process.exit()``
itself. It runs only after the local policy said yes (:mod:`backline.agent.sshserver`
makes sure of that), so handlers never check policy. Adding one: ``docs/capabilities.md``.
"""

from __future__ import annotations

from backline.agent.capabilities.base import (
    EXIT_BAD_REQUEST,
    Capability,
    Handler,
    Registry,
    SessionContext,
    read_request,
)
from backline.common.capabilities import spec

__all__ = ["ASK_THEMSELVES", "BUILTIN", "EXIT_BAD_REQUEST", "TERMINALS", "Capability",
           "Handler", "Registry", "SessionContext", "builtin_registry", "read_request"]

#: The capability rooms this agent ships: name -> handler, imported on first use.
BUILTIN = {
    "info": "backline.agent.capabilities.info:run",
    "diagnostics": "backline.agent.capabilities.diagnostics:run",
    "shell": "backline.agent.capabilities.shell:run",
    "fix": "backline.agent.capabilities.fix:run",
    "cobrowse": "backline.agent.capabilities.cobrowse:run",
}
#: Those of them that are terminals: bytes on the channel, and a pty request required.
TERMINALS = frozenset({"shell"})
#: Those that ask the customer themselves, after their own checks (Capability.asks_itself).
ASK_THEMSELVES = frozenset({"fix", "cobrowse"})


def builtin_registry() -> Registry:
    registry = Registry()
    for name, target in BUILTIN.items():
        known = spec(name)
        registry.register_lazy(name, target, known.summary if known else "",
                               terminal=name in TERMINALS, asks_itself=name in ASK_THEMSELVES)
    return registry
