"""What the sessions room uses of the relay (the hub in ``relay/state.py`` provides it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from backline.relay.ports import Configured, Counters, Recorder, Stored

if TYPE_CHECKING:
    from backline.relay.agents import Presence
    from backline.relay.datadir import DataDir
    from backline.relay.live import LiveBus
    from backline.relay.webhooks import WebhookSender


class SessionHost(Recorder, Configured, Stored, Counters, Protocol):
    datadir: DataDir  # the relay CA's key, which signs each session's certificate
    presence: Presence  # whose control socket carries the dial
    bus: LiveBus  # the console's live events
    webhooks: WebhookSender
    cookie_secret: str  # keys the hashes of attended-session codes
    #: Set when the server starts to stop: tunnels lost from then on are its doing.
    stopping: bool

    @property
    def token_pins(self) -> tuple[str, ...]: ...
