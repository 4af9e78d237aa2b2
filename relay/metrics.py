"""Prometheus metrics. Gauges are read at scrape time, so they cost nothing between scrapes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from typing import Protocol

    from backline.relay.agents import Presence
    from backline.relay.live import LiveBus
    from backline.relay.tls_identity import TlsIdentity

    class Relay(Protocol):
        """What the gauges read, at scrape time."""

        presence: Presence
        bus: LiveBus
        tls_identity: TlsIdentity | None


#: ``kind`` of ``backline_auth_checks_total``: sign-in passwords, TOTP codes (sign-in,
#: enrolment, re-authentication), attended-session codes, the password that confirms a
#: password change or the replacement of an active authenticator.
AUTH_CHECK_KINDS = ("password", "totp", "join_code", "password_change", "totp_replace")


class RelayMetrics:
    def __init__(self, relay: Relay) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        agents = Gauge("backline_agents_connected", "Agents with a live control socket "
                       "on this node", registry=r)
        agents.set_function(lambda: len(relay.presence))
        consoles = Gauge("backline_console_sockets", "Open console live sockets", registry=r)
        consoles.set_function(lambda: relay.bus.subscriber_count)
        expiry = Gauge("backline_tls_certificate_expiry_timestamp_seconds",
                       "When the TLS certificate the relay serves expires (Unix time; 0 when "
                       "a proxy serves it)", registry=r)
        expiry.set_function(lambda: (relay.tls_identity.not_after or 0)
                            if relay.tls_identity else 0)
        sink_failures = Gauge("backline_audit_sink_failures", "Checkpoint sink failures "
                              "since the relay started (each also audited: "
                              "audit.sink.failed)", registry=r)
        sink_failures.set_function(lambda: relay.audit.sink_failures)
        self.sessions = Gauge("backline_support_sessions_active",
                              "Support sessions open on this node", registry=r)
        # Counted in plain integers (one add per heartbeat, no lock) and read at scrape
        # time: at 10,000 agents a locked prometheus_client counter was 2.5 % of the
        # relay's CPU at steady state.
        self.control_in = 0
        self.control_out = 0
        r.register(_ControlMessages(self))
        self.errors = Counter("backline_errors_total", "Refusals and protocol errors",
                              ["kind"], registry=r)
        # What the attempt limits bound (relay/auth_limits.py): expensive checks really
        # evaluated, whatever the number of attempts that arrived.
        self.auth_checks = Counter(
            "backline_auth_checks", "Authentication checks evaluated (argon2, TOTP, "
            "session codes), by kind", ["kind"], registry=r)
        for kind in AUTH_CHECK_KINDS:
            self.auth_checks.labels(kind)
        self.http = Counter("backline_http_requests_total", "API requests", ["status"],
                            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ControlMessages(Collector):
    def __init__(self, metrics: RelayMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("backline_control_messages", "Control protocol messages",
                                     labels=["direction"])
        family.add_metric(["in"], self.metrics.control_in)
        family.add_metric(["out"], self.metrics.control_out)
        yield family
