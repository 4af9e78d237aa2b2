"""Capability rooms on the relay: how each capability's SSH channel is bridged.

``base.py`` says what a room declares (:class:`~.base.ChannelSpec`: request, transport,
what is kept); one module per capability declares its ``SPEC`` (``info.py``,
``diagnostics.py``, ``shell.py``); :mod:`.registry` maps names to them; the one
channel runner (:mod:`.runner`) runs every channel, REST or WebSocket, and
:mod:`.recording` keeps terminals as asciicast. Adding one: ``docs/capabilities.md``.
"""
