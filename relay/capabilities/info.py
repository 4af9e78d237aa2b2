"""``info``: who the agent is and what its policy allows; no request, nothing kept."""

from __future__ import annotations

from backline.relay.capabilities.base import ChannelSpec, Transport, no_request

SPEC = ChannelSpec("info", Transport.ONESHOT, no_request("info"),
                   summary="who this agent is and what its policy allows")
