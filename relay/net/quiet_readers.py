"""Reading many mostly silent sockets with few wake-ups.

At 10,000 idle agents a heartbeat arrives every 3 ms, each on its own: the relay
sleeps in the kernel, is woken, reads one small record and sleeps again, 333 times a
second. The wake-up costs more than the work (the process is scheduled in, and its
caches are cold again each time). :class:`QuietReaders` keeps such sockets in an
epoll set of its own. While few messages arrive, the event loop watches that set as
one descriptor and each message is read at once. Above ``batch_above`` messages a
second, a timer reads the set every ``hold_s`` instead: whatever arrived meanwhile
is read in one go, a message waits at most ``hold_s``, and the relay wakes
``1 / hold_s`` times a second however many heartbeats arrive. Below ``wake_below``
it goes back to reading at once, so a small relay is not woken 50 times a second
for nothing.

Only sockets whose messages can wait that long belong here: the relay puts agents'
control sockets here once they are authenticated (heartbeats, health reports), and
takes one out while a ping waits for its pong; never a session tunnel or a browser's
socket.
"""

from __future__ import annotations

import asyncio
import logging
import select
import weakref
from collections.abc import Callable

log = logging.getLogger(__name__)

#: The timer's period while batching: the most a quiet socket's message waits.
HOLD_S = 0.02
#: Messages a second above which the timer reads the set, and below which the loop
#: watches it again (apart, so that a rate near one of them does not flap).
BATCH_ABOVE = 100.0
WAKE_BELOW = 50.0
#: How often the rate is looked at.
RATE_WINDOW_S = 1.0
#: Events taken per look at the set (the rest are still there at the next one).
MAX_EVENTS = 4096
#: Looks at the set per tick: a socket with several records queued gives one per
#: look (a transport reads one small record per call), so look again while any is
#: ready, up to this many times, rather than leaving the rest for later ticks.
LOOKS_PER_TICK = 8
#: epoll is Linux's; elsewhere quiet sockets are simply read as any other.
SUPPORTED = hasattr(select, "epoll")


class QuietReaders:
    """A reader callback per descriptor, run at once or by a timer (see the module).

    Switching from the timer back to the loop adds this epoll set to the loop's, which
    the kernel pays for by walking every descriptor in it: a first version that did
    it at every round (up to 50 times a second) measured a quarter of a core at 10,000
    sockets, nearly half of it in that re-add by py-spy's count, about 2 ms each.
    So that happens only when the rate falls below ``wake_below``, not per
    round; going the other way is cheap."""

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> QuietReaders:
        """The loop's own (one epoll set per event loop, made on first use)."""
        readers = _BY_LOOP.get(loop)
        if readers is None:
            readers = _BY_LOOP[loop] = cls(loop)
        return readers

    def __init__(self, loop: asyncio.AbstractEventLoop, hold_s: float = HOLD_S,
                 batch_above: float = BATCH_ABOVE, wake_below: float = WAKE_BELOW,
                 rate_window_s: float = RATE_WINDOW_S) -> None:
        # Weakly: the per-loop table below holds this object, and a strong reference
        # back to its key would keep every loop (and its epoll set) alive for good.
        self._loop = weakref.ref(loop)
        self.hold_s = hold_s
        self.batch_above = batch_above
        self.wake_below = wake_below
        self.rate_window_s = rate_window_s
        self._epoll = select.epoll()
        self._fd = self._epoll.fileno()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._watched = False  # the loop watches the set: messages are read at once
        self._timer: asyncio.TimerHandle | None = None  # the timer reads the set
        self._events = 0
        self._since = loop.time()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop()
        if loop is None:
            raise RuntimeError("the event loop of these quiet readers is gone")
        return loop

    def __len__(self) -> int:
        return len(self._callbacks)

    @property
    def batching(self) -> bool:
        return self._timer is not None

    def add(self, fd: int, callback: Callable[[], None]) -> None:
        if fd not in self._callbacks:
            self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback
        if not self._watched and self._timer is None:
            self._watch()

    def remove(self, fd: int) -> None:
        if self._callbacks.pop(fd, None) is None:
            return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # the socket (the kernel dropped it from the set) or the set is closed
        if not self._callbacks:
            self._stop()

    def close(self) -> None:
        self._stop()
        self._callbacks.clear()
        self._epoll.close()

    def _stop(self) -> None:
        if self._watched:
            self.loop.remove_reader(self._fd)
            self._watched = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _watch(self) -> None:
        self.loop.add_reader(self._fd, self._ready)
        self._watched = True

    def _ready(self) -> None:
        """The loop saw a message: read at once; start the timer if they come fast."""
        self._dispatch()
        rate = self._rate()
        if rate is not None and rate > self.batch_above and self._watched:
            self.loop.remove_reader(self._fd)
            self._watched = False
            self._timer = self.loop.call_later(self.hold_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        for _ in range(LOOKS_PER_TICK):
            if not self._dispatch():
                break
        if not self._callbacks or self._watched or self._timer is not None:
            return
        rate = self._rate()
        if rate is not None and rate < self.wake_below:
            self._watch()
        else:
            self._timer = self.loop.call_later(self.hold_s, self._tick)

    def _dispatch(self) -> int:
        """Run the callback of each ready descriptor once; how many were ready."""
        events = self._epoll.poll(0, MAX_EVENTS)
        self._events += len(events)
        for fd, _ in events:
            callback = self._callbacks.get(fd)
            if callback is None:
                continue  # removed by an earlier callback of this round
            try:
                callback()
            except Exception:
                log.exception("a quiet socket's reader failed")
        return len(events)

    def _rate(self) -> float | None:
        """Messages a second since the last look, once ``rate_window_s`` has passed."""
        now = self.loop.time()
        elapsed = now - self._since
        if elapsed < self.rate_window_s:
            return None
        rate = self._events / elapsed if elapsed > 0 else float(self._events)
        self._events, self._since = 0, now
        return rate


_BY_LOOP: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, QuietReaders] = (
    weakref.WeakKeyDictionary())
