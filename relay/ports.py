"""What the relay's services may ask of the relay: small interfaces, not the whole hub.

:class:`backline.relay.state.Relay` holds everything one relay process has and builds
the services (sessions, auth limits, metrics, webhooks, TLS reload). If each service
took that whole object, each would depend on everything and on the hub itself (an
import circle, and no way to tell what a service really uses). So each service names
what it uses as a :class:`typing.Protocol` built from the pieces below, and the hub
satisfies it structurally. This module imports no service: it is a leaf, and nothing
imports ``state`` but the edge (API, app, command line, control socket).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import sqlalchemy as sa
    from prometheus_client import Counter

    from backline.relay.config import RelayConfig

__all__ = ["Configured", "Counters", "Recorder", "Stored"]


class Recorder(Protocol):
    """Writes the audit trail (and the log line that goes with each event)."""

    def record(self, actor: str, action: str, target: str = "", **details: Any) -> None: ...

    def record_flood(self, source: str, actor: str, action: str, target: str = "",
                     **details: Any) -> None: ...


class Configured(Protocol):
    config: RelayConfig

    @property
    def origin(self) -> str: ...


class Stored(Protocol):
    engine: sa.Engine


class ErrorMetrics(Protocol):
    errors: Counter
    auth_checks: Counter


class Counters(Protocol):
    @property
    def metrics(self) -> ErrorMetrics: ...
