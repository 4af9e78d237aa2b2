"""Pin-set adoption can't be abused by someone who holds just one trusted key
(agent/pinsync.py, common/pinset.py), tested with a real relay and real agent processes.

Any of the pins an agent holds is enough to open the connection it reads
``GET /agent/pins`` over, and some of those keys live outside the relay: a backup key
in ``tls_pins``, a proxy's key, an old key. Someone holding one of them plays the
relay here, on the relay's own address:

- it announces a set that drops the relay's next key and adds its own, unsigned and
  then signed with a key that is not the relay's audit key: both ignored;
- after a genuine ``cert rotate --new-key`` (a newer signed set, which the agent
  adopts), it replays the relay's older signed set, which is genuine but stale:
  ignored as well.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from backline.common import enrollment, keys, pinset, protocol
from backline.relay import datadir
from tests.harness import AgentProcess, RelayProcess, wait_for


def state(agent: AgentProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((agent.state_dir / "enrollment.json").read_text())
    return data


def online_since(agent: AgentProcess, after: float) -> bool:
    try:
        s = json.loads((agent.state_dir / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(s.get("state") == "online" and float(s.get("since", 0)) > after)


@contextmanager
def impostor(port: int, cert: Path, key: Path, answer: bytes) -> Iterator[list[str]]:
    """A fake relay on ``port`` holding only the backup key: it welcomes any agent (the
    agent cannot tell, the welcome is not what it trusts) and answers ``GET
    /agent/pins`` with ``answer``. Yields the paths asked, as they come."""
    import ssl

    asked: list[str] = []
    ready = threading.Event()
    stop: list[asyncio.AbstractEventLoop] = []
    done = threading.Event()

    def pins(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/agent/pins":
            asked.append(request.path)
            response = connection.respond(HTTPStatus.OK, "")
            response.body = answer
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(answer))
            return response
        return None

    async def control(ws: ServerConnection) -> None:
        await ws.send(protocol.encode("challenge", nonce=protocol.b64e(b"n" * 32),
                                      relay_time=round(time.time(), 3)))
        msg = json.loads(await ws.recv())
        await ws.send(protocol.encode("welcome", agent_id=msg["agent_id"], heartbeat_s=30,
                                      relay_time=round(time.time(), 3)))
        async for _ in ws:
            pass

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        closing = asyncio.Event()
        stop.append(asyncio.get_running_loop())
        async with serve(control, "127.0.0.1", port, ssl=ctx, process_request=pins):
            ready.set()
            stop.append(closing)  # type: ignore[arg-type]
            await closing.wait()

    thread = threading.Thread(target=lambda: (asyncio.run(main()), done.set()), daemon=True)
    thread.start()
    assert ready.wait(10), "the impostor did not start"
    try:
        yield asked
    finally:
        loop, closing = stop[0], stop[1]
        loop.call_soon_threadsafe(closing.set)  # type: ignore[attr-defined]
        thread.join(10)


def announced(relay: RelayProcess) -> bytes:
    return httpx.get(relay.url + "/agent/pins", verify=relay.tls(), timeout=5).content


def test_a_backup_key_holder_cannot_replace_or_roll_back_the_pin_set(tmp_path: Path) -> None:
    backup_cert, backup_key = tmp_path / "backup.crt", tmp_path / "backup.key"
    datadir.write_self_signed(backup_cert, backup_key, ["127.0.0.1"])
    backup = datadir.pem_spki_pin(backup_cert)
    relay = RelayProcess(tmp_path, {"BACKLINE_TLS_PINS": backup})
    relay.start()
    agent = AgentProcess(tmp_path, "pinned")
    try:
        token = enrollment.parse(relay.token())
        current, nxt = token.pins[0], token.pins[1]
        assert token.pins == (current, nxt, backup) and token.serial >= 1
        old_answer = announced(relay)
        old = json.loads(old_answer)
        assert old["pins"] == list(token.pins) and old["serial"] == token.serial
        assert agent.enroll(relay.token()).returncode == 0
        assert state(agent)["pins_serial"] == token.serial
        relay.stop()

        # The impostor's own key, and a set that drops the relay's next key for it.
        own = "sha256//" + base64.b64encode(b"i" * 32).decode()
        forged = [backup, own]
        stranger = keys.generate()
        attempts = {
            "unsigned": {"pins": forged},
            "signed by another key": {
                "pins": forged, "serial": token.serial + 100,
                "signature": protocol.b64e(pinset.sign(stranger, token.serial + 100, forged))},
            "the genuine signature over other pins": {
                "pins": forged, "serial": old["serial"], "signature": old["signature"]},
        }
        for name, body in attempts.items():
            with impostor(relay.port, backup_cert, backup_key,
                          json.dumps(body).encode()) as asked:
                t0 = time.time()
                agent.start()
                wait_for(lambda t0=t0, asked=asked: online_since(agent, t0) and asked, 20,
                         f"the agent to ask the impostor ({name})")
                time.sleep(0.5)  # its answer handled
                agent.stop()
            assert state(agent)["pins"] == list(token.pins), name
            assert state(agent)["pins_serial"] == token.serial, name
        assert "without a valid signature of its audit key: ignored" in agent.log_path.read_text()

        # The genuine rotation: the next key becomes the key, and a newer signed set
        # (with a new next key) is adopted at the agent's next connection.
        relay.cli("cert", "rotate", "--new-key", "--yes")
        relay.start()
        new = json.loads(announced(relay))
        assert new["pins"][0] == nxt and new["serial"] == token.serial + 1
        t1 = time.time()
        agent.start()
        wait_for(lambda: online_since(agent, t1) and state(agent)["pins"] == new["pins"],
                 20, "the agent on the new key with the new set")
        assert state(agent)["pins_serial"] == new["serial"]
        agent.stop()
        relay.stop()

        # The older genuine set, replayed by the backup key's holder: stale, ignored.
        with impostor(relay.port, backup_cert, backup_key, old_answer) as asked:
            t2 = time.time()
            agent.start()
            wait_for(lambda: online_since(agent, t2) and asked, 20,
                     "the agent to ask the impostor (replay)")
            time.sleep(0.5)
            agent.stop()
        assert state(agent)["pins"] == new["pins"]
        assert state(agent)["pins_serial"] == new["serial"]
        assert "an older pin set" in agent.log_path.read_text()
    finally:
        agent.stop()
        relay.stop()
