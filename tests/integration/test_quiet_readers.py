"""QuietReaders (relay/net/quiet_readers.py) on both event loops, over real socket pairs:
a message is read at once while messages are few; when they are many, what arrives
between two ticks of the timer is read together at the next, and back again; nothing
is watched when no socket is left, and a removed or failing reader does not disturb
the others.
(A TLS transport set quiet is tested with the others in test_tls_socket.py.)"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from backline.relay.net.quiet_readers import QuietReaders
from tests.harness import run_on_loop

LOOPS = ["asyncio", "uvloop"]
HOLD = 0.2  # long enough that the three messages below surely fall between two ticks


class Counting(QuietReaders):
    ticks = 0

    def _tick(self) -> None:
        self.ticks += 1
        super()._tick()


async def until(cond: Callable[[], bool], what: str) -> None:
    for _ in range(300):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_read_at_once_when_few_and_together_on_a_timer_when_many(loop_name: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A rate is looked at every round here, and any rate counts as "many".
        readers = Counting(loop, hold_s=HOLD, batch_above=0.0, rate_window_s=0.0)
        pairs = [socket.socketpair() for _ in range(4)]
        got: list[tuple[int, int, bytes]] = []  # (tick, socket, data)

        def reader(i: int, sock: socket.socket) -> Callable[[], None]:
            def read() -> None:
                got.append((readers.ticks, i, sock.recv(100)))
            return read

        for i, (ours, _) in enumerate(pairs):
            ours.setblocking(False)
            readers.add(ours.fileno(), reader(i, ours))
        assert not readers.batching
        pairs[0][1].send(b"first")
        await until(lambda: len(got) == 1, "the first message")
        assert got == [(0, 0, b"first")]  # read at once, by the loop, not by a tick
        assert readers.batching  # that was "many": the timer reads from now on
        for i in (1, 2, 3):
            pairs[i][1].send(b"m%d" % i)
        await until(lambda: len(got) == 4, "three more messages")
        assert len({tick for tick, _, _ in got[1:]}) == 1  # all three in one round
        assert sorted((i, data) for _, i, data in got[1:]) == [
            (1, b"m1"), (2, b"m2"), (3, b"m3")]
        readers.wake_below = float("inf")  # now every rate is "few": back to the loop
        await until(lambda: not readers.batching, "reading at once again")
        pairs[0][1].send(b"again")
        ticks = readers.ticks
        await until(lambda: len(got) == 5, "the fifth message")
        assert got[-1] == (ticks, 0, b"again")  # no tick in between
        for ours, _ in pairs:
            readers.remove(ours.fileno())
        assert not readers.batching and not readers._watched  # nothing left to watch
        readers.close()
        for a, b in pairs:
            a.close()
            b.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_removed_or_failing_reader_leaves_the_others_alone(loop_name: str) -> None:
    async def main() -> None:
        readers = QuietReaders(asyncio.get_running_loop(), hold_s=0.01)
        (a, a_peer), (b, b_peer), (c, c_peer) = (socket.socketpair() for _ in range(3))
        calls: list[str] = []

        def failing() -> None:
            calls.append("a")
            a.recv(100)
            raise RuntimeError("this reader breaks")

        readers.add(a.fileno(), failing)
        readers.add(b.fileno(), lambda: calls.append("b"))
        readers.add(c.fileno(), lambda: (calls.append("c"), c.recv(100)))
        readers.remove(b.fileno())
        assert len(readers) == 2
        a_peer.send(b"x")
        b_peer.send(b"x")
        c_peer.send(b"x")
        for _ in range(100):
            if "c" in calls and "a" in calls:
                break
            await asyncio.sleep(0.01)
        assert sorted(calls) == ["a", "c"]
        readers.remove(a.fileno())
        readers.remove(c.fileno())
        assert len(readers) == 0
        readers.remove(c.fileno())  # twice is harmless
        readers.close()
        readers.remove(a.fileno())  # and after the close
        for s in (a, a_peer, b, b_peer, c, c_peer):
            s.close()

    run_on_loop(loop_name, main)


def test_a_ping_takes_the_socket_off_the_timer_until_its_pong() -> None:
    """A quiet socket's message may wait for the next tick; a pong must not, or the
    round trip the API reports would include that wait."""
    import json
    import time

    from backline.relay import control
    from backline.relay.agents import Connected

    async def main() -> None:
        quiet: list[bool] = []

        async def send(text: str) -> None:
            ping_id = json.loads(text)["id"]
            assert quiet == [False]  # off the timer before the ping leaves
            conn.pending_pings[ping_id].set_result(time.perf_counter())

        conn = Connected(agent_id="ag_x", group_id=1, address="127.0.0.1", connected_at=0,
                         send=send, close=lambda code, reason: None, quiet=quiet.append)
        rtt = await control.ping(None, conn)  # type: ignore[arg-type]
        assert rtt is not None and rtt >= 0
        assert quiet == [False, True] and not conn.pending_pings

    asyncio.run(main())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_records_queued_on_one_socket_are_all_read_in_one_tick(loop_name: str) -> None:
    """A transport reads one small record per call; five queued on one socket are
    still all read at the same tick, not one per tick."""
    async def main() -> None:
        readers = Counting(asyncio.get_running_loop(), hold_s=HOLD, batch_above=-1.0,
                           rate_window_s=0.0)
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        got: list[tuple[int, bytes]] = []
        readers.add(ours.fileno(), lambda: got.append((readers.ticks, ours.recv(1))))
        readers._ready()  # nothing ready yet; the rate (0) is above -1: batching now
        assert readers.batching
        theirs.send(b"12345")
        await until(lambda: len(got) == 5, "five records")
        assert [data for _, data in got] == [b"1", b"2", b"3", b"4", b"5"]
        assert len({tick for tick, _ in got}) == 1
        readers.close()
        ours.close()
        theirs.close()

    run_on_loop(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_closed_loop_takes_its_quiet_readers_and_their_epoll_set_along(
        loop_name: str) -> None:
    """One set per loop, kept in a table keyed weakly by the loop: a loop that is
    closed and dropped (tests, an embedding that restarts its loop) must not leave its
    set and descriptor behind."""
    import gc
    import weakref

    from backline.relay.net import quiet_readers

    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    a, b = socket.socketpair()
    readers = QuietReaders.of(loop)
    assert QuietReaders.of(loop) is readers
    readers.add(a.fileno(), lambda: None)
    gone = weakref.ref(readers)
    before = len(quiet_readers._BY_LOOP)
    readers.remove(a.fileno())
    del readers
    loop.close()
    del loop
    gc.collect()
    assert gone() is None, "a dropped loop kept its quiet readers"
    assert len(quiet_readers._BY_LOOP) == before - 1
    a.close()
    b.close()
