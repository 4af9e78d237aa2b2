"""Capability rooms on the relay: how each capability's SSH channel is bridged.

``base.py`` says what a room declares (:class:`~.base.ChannelSpec`: request, transport,
what is kept); one module per capability declares its ``SPEC`` (``info.py``,
``diagnostics.py``, ``shell.py``); :func:`spec_for` here maps names to them; the
one channel runner (:mod:`.runner`) runs every channel, REST or WebSocket, and is the
one place where recording (:mod:`.recording`, asciicast) hooks in. Adding one:
``docs/capabilities.md``.

Rooms are imported on first use (as the agent's are), so the registry can name them
without the rooms importing one another. A capability with no room of its own (its
output answered as it comes, no request, nothing kept) gets :func:`~.base.plain`.
"""

from __future__ import annotations

import importlib

from backline.common.capabilities import spec as common_spec
from backline.relay.capabilities.base import ChannelSpec, plain

ROOMS = {
    "info": "backline.relay.capabilities.info",
    "diagnostics": "backline.relay.capabilities.diagnostics",
    "shell": "backline.relay.capabilities.shell",
    "fix": "backline.relay.capabilities.fix",
    "cobrowse": "backline.relay.capabilities.cobrowse",
}

_loaded: dict[str, ChannelSpec] = {}


def spec_for(capability: str) -> ChannelSpec:
    found = _loaded.get(capability)
    if found is None:
        module = ROOMS.get(capability)
        if module is not None:
            found = importlib.import_module(module).SPEC
        else:
            known = common_spec(capability)
            found = plain(capability, known.summary if known else "")
        _loaded[capability] = found
    return found
