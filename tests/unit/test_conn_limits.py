"""The unauthenticated-connection caps and deadlines (relay/net/conn_limits.py) on their
own: what is admitted, what is refused and why, that every way out gives the slot
back exactly once, how the caps are sized, and that a deadline moved later needs no
new timer. The same machinery against a real relay: tests/integration/test_slow_clients.py."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from backline.relay import config as relay_config
from backline.relay.net import conn_limits
from backline.relay.net.conn_limits import Gate, Limits, address_key


class FakeTransport:
    def __init__(self) -> None:
        self.aborted = 0

    def abort(self) -> None:
        self.aborted += 1

    def is_closing(self) -> bool:
        return self.aborted > 0


def gate(total: int = 16, per_address: int = 8, **kw: Any) -> tuple[Gate, list[tuple[str, ...]]]:
    reports: list[tuple[str, ...]] = []
    loop = asyncio.new_event_loop()
    g = Gate(Limits(total, per_address, **kw), loop,
             lambda kind, address, reason: reports.append((kind, address, reason)))
    return g, reports


def test_per_address_cap_refuses_and_reports() -> None:
    g, reports = gate(total=100, per_address=3)
    held = [g.admit("203.0.113.7") for _ in range(3)]
    assert all(held)
    assert g.admit("203.0.113.7") is None
    assert reports == [("refused", "203.0.113.7", "address_cap")]
    assert g.admit("203.0.113.8") is not None  # another address is not affected
    assert g.total == 4


def test_the_last_quarter_is_kept_for_addresses_holding_few() -> None:
    g, reports = gate(total=16, per_address=16)
    for _ in range(12):  # 3/4 of the cap, all from one address
        assert g.admit("198.51.100.1") is not None
    assert g.admit("198.51.100.1") is None
    assert reports[-1][2] == "global_pressure"
    for i in range(4):  # newcomers still get in, up to the cap itself
        assert g.admit(f"198.51.100.{10 + i}") is not None
    assert g.admit("198.51.100.99") is None
    assert reports[-1][2] == "global_cap"


def test_slots_come_back_once_whichever_way_out() -> None:
    g, _ = gate(total=2, per_address=2)
    a, b = g.admit("192.0.2.1"), g.admit("192.0.2.1")
    assert a is not None and b is not None
    assert g.admit("192.0.2.1") is None
    a.authenticated()
    a.authenticated()
    a.closed()  # authenticated, then closed: given back once only
    assert g.total == 1
    b.closed()
    b.closed()
    assert g.total == 0 and g.by_key == {}


def test_ipv6_counts_by_64_and_mapped_v4_as_v4() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.5") == "192.0.2.5"
    g, _ = gate(total=100, per_address=2)
    assert g.admit("2001:db8::1") and g.admit("2001:db8::2")
    assert g.admit("2001:db8::3") is None


def test_trusted_proxies_are_exempt_from_the_per_address_cap() -> None:
    g, _ = gate(total=10, per_address=1, exempt=frozenset({"10.0.0.1", "10.9.0.0/16"}))
    assert all(g.admit("10.0.0.1") for _ in range(3))
    assert all(g.admit("10.9.1.1") for _ in range(3))
    assert g.admit("10.0.0.2") is not None
    assert g.admit("10.0.0.2") is None
    assert g.total == 7


def test_a_closed_connection_takes_no_new_deadline() -> None:
    g, _ = gate()
    conn = g.admit("192.0.2.1")
    assert conn is not None
    conn.closed()
    conn.deadline_in(10, conn_limits.REQUEST_HEAD)  # e.g. a response completing late
    assert conn.timer is None


def test_caps_are_sized_from_the_descriptor_limit(tmp_path: Path) -> None:
    cfg = relay_config.load(environ={"BACKLINE_DATA_DIR": str(tmp_path)})
    limits = Limits.from_config(cfg, nofile=1024)
    assert limits.max_unauthenticated == 512
    assert limits.max_unauthenticated_per_address == 128
    assert Limits.from_config(cfg, nofile=1 << 20).max_unauthenticated == 16_384
    cfg = relay_config.load(environ={"BACKLINE_DATA_DIR": str(tmp_path),
                                     "BACKLINE_MAX_UNAUTHENTICATED_CONNECTIONS": "100",
                                     "BACKLINE_MAX_UNAUTHENTICATED_PER_ADDRESS": "500"})
    limits = Limits.from_config(cfg, nofile=1024)
    assert (limits.max_unauthenticated, limits.max_unauthenticated_per_address) == (100, 100)


@pytest.mark.parametrize(("name", "value"), [
    ("BACKLINE_REQUEST_HEAD_TIMEOUT_S", "0"), ("BACKLINE_REQUEST_BODY_TIMEOUT_S", "301"),
    ("BACKLINE_MAX_UNAUTHENTICATED_CONNECTIONS", "-1"),
    ("BACKLINE_REQUEST_BODY_MIN_BYTES_PER_S", "0"),
    ("BACKLINE_WEBSOCKET_AUTH_TIMEOUT_S", "nan")])
def test_bad_settings_are_refused(tmp_path: Path, name: str, value: str) -> None:
    with pytest.raises(relay_config.ConfigError):
        relay_config.load(environ={"BACKLINE_DATA_DIR": str(tmp_path), name: value})


def test_a_deadline_hangs_up_reports_and_moves_without_new_timers() -> None:
    async def main() -> None:
        reports: list[tuple[str, ...]] = []
        g = Gate(Limits(10, 10), asyncio.get_running_loop(),
                 lambda *a: reports.append(a))
        conn = g.admit("192.0.2.9")
        assert conn is not None
        transport = FakeTransport()
        conn.transport = transport
        conn.deadline_in(0.05, conn_limits.REQUEST_BODY)
        first = conn.timer
        conn.deadline_in(0.15, conn_limits.REQUEST_BODY)  # later: same timer re-aims itself
        assert conn.timer is first
        await asyncio.sleep(0.1)
        assert transport.aborted == 0
        await asyncio.sleep(0.15)
        assert transport.aborted == 1
        assert reports == [("timeout", "192.0.2.9", "request_body")]
        assert g.timeouts == {"request_body": 1}
        conn.closed()
        assert g.total == 0
        # Cleared: nothing happens.
        other = g.admit("192.0.2.9")
        assert other is not None
        other.transport = FakeTransport()
        other.deadline_in(0.05, conn_limits.WEBSOCKET_AUTH)
        other.authenticated()
        await asyncio.sleep(0.1)
        assert other.transport.aborted == 0  # type: ignore[union-attr]

    asyncio.run(main())


def test_a_hung_up_socket_is_aborted_only_once_it_stops_taking_frames() -> None:
    """end_within: a console hung up that still reads (its sender re-arms after each
    frame taken) is never aborted, however long its last frames take; one that takes
    nothing for the grace is aborted, and its owner's hook audits it instead of an
    anonymous timeout. A socket that closes by itself keeps nothing armed."""
    async def main() -> None:
        reports: list[tuple[str, ...]] = []
        g = Gate(Limits(10, 10), asyncio.get_running_loop(), lambda *a: reports.append(a))
        conn = g.admit("192.0.2.10")
        assert conn is not None
        conn.authenticated()  # a signed-in console
        transport = FakeTransport()
        conn.transport = transport
        aborted: list[str] = []
        for _ in range(6):  # 0.3 s of frames, each within the 0.1 s grace
            conn_limits.end_within(conn, 0.1, on_abort=lambda: aborted.append("audited"))
            await asyncio.sleep(0.05)
        assert transport.aborted == 0 and aborted == []
        await asyncio.sleep(0.2)  # then nothing taken
        assert transport.aborted == 1 and aborted == ["audited"]
        assert reports == [] and g.timeouts == {conn_limits.HUNG_UP: 1}
        trickle = g.admit("192.0.2.10")
        assert trickle is not None
        trickle.transport = FakeTransport()
        monkey = conn_limits.HANG_UP_MAX_S
        conn_limits.HANG_UP_MAX_S = 0.2
        try:
            for _ in range(8):  # a frame every 0.05 s, for longer than the cap
                conn_limits.end_within(trickle, 0.1)
                await asyncio.sleep(0.05)
        finally:
            conn_limits.HANG_UP_MAX_S = monkey
        assert trickle.transport.aborted == 1  # type: ignore[union-attr]  # cut at the cap
        other = g.admit("192.0.2.10")
        assert other is not None
        other.transport = FakeTransport()
        conn_limits.end_within(other, 0.05)
        other.closed()  # it closed in time
        await asyncio.sleep(0.1)
        assert other.transport is None and g.timeouts == {conn_limits.HUNG_UP: 2}

    asyncio.run(main())


def test_a_mass_expiry_hangs_up_in_batches_with_io_between() -> None:
    """Two thousand connections admitted together expire together: they are hung up
    EXPIRE_PER_TURN a turn of the loop, so a ready socket (here: a callback scheduled
    meanwhile, as I/O would be) is served between batches, not after all of them."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        g = Gate(Limits(5000, 5000), loop)
        transports = []
        deadline = loop.time() + 0.05
        for _ in range(2000):
            conn = g.admit("192.0.2.10")
            assert conn is not None
            conn.transport = t = FakeTransport()
            transports.append(t)
            conn.deadline_at(deadline, conn_limits.REQUEST_HEAD)
        aborted_when_served: list[int] = []
        # Ready just after the deadlines, as a socket would be: served at the next turn.
        loop.call_at(deadline + 0.0005, lambda: aborted_when_served.append(
            sum(t.aborted for t in transports)))
        await asyncio.sleep(0.3)
        assert all(t.aborted == 1 for t in transports)
        assert aborted_when_served and aborted_when_served[0] < 2000 // 2
        assert g.timeouts == {"request_head": 2000}

    asyncio.run(main())
