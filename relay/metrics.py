"""Prometheus metrics. Gauges are read at scrape time, so they cost nothing between scrapes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

if TYPE_CHECKING:
    from backline.relay.state import Relay


class RelayMetrics:
    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        agents = Gauge("backline_agents_connected", "Agents with a live control socket "
                       "on this node", registry=r)
        agents.set_function(lambda: len(relay.presence))
        consoles = Gauge("backline_console_sockets", "Open console live sockets", registry=r)
        consoles.set_function(lambda: relay.bus.subscriber_count)
        self.sessions = Gauge("backline_support_sessions_active",
                              "Support sessions open on this node", registry=r)
        self.messages = Counter("backline_control_messages_total",
                                "Control protocol messages", ["direction"], registry=r)
        self.errors = Counter("backline_errors_total", "Refusals and protocol errors",
                              ["kind"], registry=r)
        self.http = Counter("backline_http_requests_total", "API requests", ["status"],
                            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
