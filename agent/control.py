"""``backline-agent run``: keep the control socket to the relay open, forever.

Reconnects with capped exponential backoff and full jitter, so ten thousand
agents whose relay restarts come back spread out rather than all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, WebSocketException

from backline.agent import keychild, pinsync
from backline.agent.diagnostics.health import health_loop
from backline.agent.facts import heartbeat_stats
from backline.agent.fix_reports import FixReporter
from backline.agent.link import RelayUnreachable, open_trusted
from backline.agent.localcontrol import LocalControl
from backline.agent.sessions import SessionRunner
from backline.agent.state import Enrollment, StateDir
from backline.common import __version__, protocol
from backline.common.protocol import ProtocolError
from backline.common.tlspin import PeerMatch, PinMismatch, format_fingerprint

log = logging.getLogger("backline.agent")


@dataclass(frozen=True)
class Backoff:
    base_s: float = 1.0
    cap_s: float = 60.0

    stable_s: float = 60.0

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return random.uniform(0, min(self.cap_s, self.base_s * 2 ** min(attempt, 30)))

    def after(self, attempt: int, connected_for: float | None) -> tuple[float, int]:
        """The wait before the next try, and the attempt count that goes with it. A
        connection that lasted over ``stable_s`` starts the count again; a flapping one
        does not."""
        if connected_for is not None and connected_for > self.stable_s:
            attempt = 0
        return self.delay(attempt), attempt + 1


@dataclass
class RelayQuirks:
    """What this agent has learnt about its relay since it started, kept across
    reconnections."""

    #: The relay takes ``ack`` in heartbeats. One from before that field refuses it
    #: (docs/operator-guide.md, "Upgrading"); the agent then sends heartbeats without
    #: it, which such a relay answers each, rather than being refused at every one.
    hb_ack: bool = True
    #: The relay refused a handshake that bound its key's pin: one from before SPKI
    #: pins binds only its certificate's hash, which the agent then binds instead.
    bind_leaf: bool = False
    #: The relay takes ``fix_report``. One from before it refuses the type (``error``
    #: ``unknown_type``, then it closes); the agent then keeps its self-service reports
    #: in the outbox until it is restarted (against an upgraded relay, say).
    fix_reports: bool = True


class AuthRefused(Exception):
    """The relay refused this agent's identity (unknown or revoked)."""


async def session(ws: ClientConnection, enrollment: Enrollment, sign: keychild.Signer,
                  state: StateDir, stop: asyncio.Event,
                  runner: SessionRunner | None = None,
                  quirks: RelayQuirks | None = None, bound: str | None = None,
                  on_welcome: Callable[[], None] | None = None,
                  reporter: FixReporter | None = None) -> None:
    """One connected session: handshake, then heartbeats and answers until closed.
    ``bound`` is what the signature binds (:attr:`PeerMatch.bound`); ``on_welcome``
    runs once the relay has accepted the agent. ``sign`` signs the challenge with the
    agent's key (in a child process: agent/keychild.py). ``reporter`` sends the
    self-service fix runs kept in the outbox (agent/fix_reports.py)."""
    quirks = quirks if quirks is not None else RelayQuirks()
    bound = bound or (enrollment.pins or [enrollment.fingerprint])[0]
    challenge = await asyncio.wait_for(ws.recv(), 15)
    payload = protocol.challenge_payload(challenge, enrollment.agent_id, bound)
    await ws.send(protocol.auth_answer(enrollment.agent_id, await sign(payload), __version__))
    welcome = protocol.parse_relay_message(await asyncio.wait_for(ws.recv(), 15))
    if welcome["type"] == "error":
        raise AuthRefused(f"{welcome['code']}: {welcome['message']}")
    if welcome["type"] != "welcome":
        raise ProtocolError("unexpected_type", f"expected welcome, got {welcome['type']}")
    heartbeat_s = welcome["heartbeat_s"]
    if on_welcome is not None:
        on_welcome()
    state.write_status("online", relay=enrollment.relay_url, agent_id=enrollment.agent_id)
    log.info("connected to %s as %s", enrollment.relay_url, enrollment.agent_id)
    clock = protocol.HeartbeatClock(heartbeat_s, time.monotonic())
    _limit_unacknowledged(ws, heartbeat_s)

    async def heartbeats() -> None:
        while True:
            await asyncio.sleep(heartbeat_s)
            ask = clock.tick(time.monotonic())
            if ask is None:
                log.warning("no answer from the relay for %.0f s; reconnecting",
                            time.monotonic() - clock.heard)
                await ws.close(4408, "no heartbeat answer")
                return
            if quirks.hb_ack:
                await ws.send(protocol.encode("hb", stats=heartbeat_stats(), ack=ask))
            else:
                await ws.send(protocol.encode("hb", stats=heartbeat_stats()))

    beat = asyncio.create_task(heartbeats())
    health = asyncio.create_task(health_loop(ws.send, state.root, welcome["relay_time"]))
    stopping = asyncio.create_task(stop.wait())
    reporting = (asyncio.create_task(reporter.run(ws.send))
                 if reporter is not None and quirks.fix_reports else None)
    try:
        while True:
            receiving = asyncio.ensure_future(ws.recv())
            done, _ = await asyncio.wait({receiving, stopping, beat},
                                         return_when=asyncio.FIRST_COMPLETED)
            if receiving not in done:
                receiving.cancel()
                if stopping in done and runner is not None:
                    await runner.close()  # while the relay can still hear why
                if beat in done:
                    beat.result()
                return
            msg = protocol.parse_relay_message(receiving.result())
            clock.heard_from_relay(time.monotonic())
            kind = msg["type"]
            if kind == "ping":
                await ws.send(protocol.encode("pong", id=msg["id"]))
            elif kind == "dial" and runner is not None:
                runner.dial(msg, ws.send)
            elif kind == "session_end" and runner is not None:
                runner.end(msg["session_id"], msg["reason"])
            elif kind == "fix_report_ack" and reporter is not None:
                reporter.acked(msg)
            elif (kind == "error" and reporter is not None and reporter.in_flight
                  and msg["code"] == "unknown_type" and quirks.fix_reports):
                quirks.fix_reports = False
                log.warning("the relay is older than this agent and does not take "
                            "self-service fix reports: they stay in %s until the agent "
                            "is restarted against an upgraded relay", reporter.root /
                            "fix-reports")
            elif kind == "fix_revocations":
                _fix_revocations(state, runner.enrollment if runner else enrollment, msg,
                                 runner)
            elif kind == "error" and quirks.hb_ack and protocol.refuses_hb_ack(msg):
                quirks.hb_ack = False
                log.warning("the relay is older than this agent and refuses 'ack' in "
                            "heartbeats: leaving it out from now on (the relay will answer "
                            "every heartbeat); upgrade the relay")
            elif kind == "error":
                log.warning("relay says %s: %s", msg["code"], msg["message"])
    finally:
        beat.cancel()
        health.cancel()
        stopping.cancel()
        if reporting is not None:
            reporting.cancel()


def _fix_revocations(state: StateDir, enrollment: Enrollment, msg: dict[str, object],
                     runner: SessionRunner | None) -> None:
    """The relay's signed revocation list: merged into the kept one (agent/fixes/)."""
    from backline.agent.fixes import revocations

    try:  # checked in a child process, in the background (agent/fixes/child.py)
        revocations.schedule(state.root, msg, tuple(enrollment.fix_keys),
                             runner.log if runner is not None else None)
    except Exception:  # a bad list must never end the control connection
        log.exception("the relay's revocation list could not be processed")


def _migrate(state: StateDir, enrollment: Enrollment, seen: PeerMatch) -> Enrollment:
    """After a relay matched by the legacy certificate hash accepted this agent: pin
    its key from now on, so a renewed certificate with the same key keeps working."""
    try:
        migrated = state.migrate_pin(enrollment, seen.spki)
    except OSError as exc:
        log.warning("could not record the relay's key pin (%s); still pinning its "
                    "certificate", exc)
        return enrollment
    log.info("now pinning the relay's key %s instead of its certificate %s", seen.spki,
             format_fingerprint(seen.leaf))
    return migrated


def _limit_unacknowledged(ws: ClientConnection, heartbeat_s: float) -> None:
    """Where the system offers it (Linux), a heartbeat the relay's host does not even
    acknowledge for 2.5 periods ends the connection: a vanished relay host or a NAT
    that forgot us is noticed without waiting for an application-level answer."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
    if option is None or sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(heartbeat_s * 2.5 * 1000))


async def run(state: StateDir, stop: asyncio.Event, backoff: Backoff = Backoff(),
              policy_file: Path | None = None) -> None:
    enrollment = state.load_enrollment()
    sign = await keychild.signer(state.key_path)  # stops here if the key is unusable
    runner = SessionRunner(state, enrollment, policy_file=policy_file)
    quirks = RelayQuirks()
    synced_at = -pinsync.EVERY_S
    syncing: asyncio.Task[None] | None = None

    async def sync_pins() -> None:
        nonlocal enrollment
        enrollment = await pinsync.sync(state, enrollment)
        runner.enrollment = enrollment
        from backline.agent.fixes import revocations, trust  # the relay's fix keys, signed

        before = enrollment.fix_keys
        enrollment = await trust.sync(state, enrollment)
        runner.enrollment = enrollment
        if enrollment.fix_keys != before:  # a list pushed before we knew the keys
            await revocations.retry_pending_in_child(state.root, tuple(enrollment.fix_keys),
                                                     runner.log)

    reporter = FixReporter(state.root, runner.log)  # self-service fix runs, to the relay
    local = LocalControl(state.root, runner, runner.log, reporter.poke)  # `end ID`...
    await local.start()
    end_signal = getattr(signal, "SIGUSR1", None)  # `end-sessions` without the socket
    if end_signal is not None:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            asyncio.get_running_loop().add_signal_handler(end_signal, runner.end_all)
    attempt = 0
    unusable: keychild.KeyUnusable | None = None
    while not stop.is_set():
        error = ""
        connected_at = None
        match: PeerMatch | None = None
        try:
            async with open_trusted(enrollment.control_url, enrollment.trust) as (ws, match):
                connected_at = time.monotonic()
                bound = match.leaf if quirks.bind_leaf else enrollment.bound(match)

                def welcomed(seen: PeerMatch = match) -> None:
                    nonlocal enrollment, synced_at, syncing
                    if seen.legacy:
                        enrollment = _migrate(state, enrollment, seen)
                        runner.enrollment = enrollment
                    if time.monotonic() - synced_at >= pinsync.EVERY_S and (
                            syncing is None or syncing.done()):
                        synced_at = time.monotonic()
                        syncing = asyncio.create_task(sync_pins())

                await session(ws, enrollment, sign, state, stop, runner, quirks, bound,
                              welcomed, reporter)
        except keychild.KeyUnusable as exc:  # gone since the start: stop, as at the start
            log.error("%s", exc)
            unusable = exc
            break
        except PinMismatch as exc:
            error = str(exc)
            log.error("%s", exc)
        except AuthRefused as exc:
            error = f"the relay refused this agent: {exc}"
            if match is not None and not quirks.bind_leaf and match.bound != match.leaf:
                quirks.bind_leaf = True
                log.warning("the relay refused a handshake bound to its key's pin: if it "
                            "is older than this agent it binds its certificate instead; "
                            "trying that (upgrade the relay)")
            else:
                log.error("%s", error)
        except (RelayUnreachable, ConnectionClosed, WebSocketException, OSError,
                TimeoutError, ProtocolError) as exc:
            error = str(exc) or type(exc).__name__
            log.info("connection lost: %s", error)
        if stop.is_set():
            break
        delay, attempt = backoff.after(
            attempt, None if connected_at is None else time.monotonic() - connected_at)
        state.write_status("reconnecting", relay=enrollment.relay_url,
                           agent_id=enrollment.agent_id, last_error=error[:500],
                           retry_in_s=round(delay, 1))
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            pass
    if syncing is not None:
        syncing.cancel()
    await local.close()
    await runner.close()
    state.write_status("stopped", relay=enrollment.relay_url, agent_id=enrollment.agent_id,
                       **({"last_error": str(unusable)[:500]} if unusable else {}))
    log.info("stopped")
    if unusable is not None:
        raise unusable


def run_forever(state: StateDir, policy_file: Path | None = None) -> None:
    """Run until SIGTERM or SIGINT, then close the socket cleanly and exit."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(state, stop, policy_file=policy_file)

    asyncio.run(main())
