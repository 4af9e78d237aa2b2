"""A real agent process, enrolled with a real relay from before fix keys (``fix_keys``
empty), learns the relay's fix key from ``GET /agent/fix-trust`` (signed by the audit
key it pinned) and adopts the relay's ``fix_revocations`` push over its control socket,
even though the push came before it knew the key; a forged fix-trust document is
ignored; then self-service refuses the revoked fix and runs another.

The relay's side of fix-trust and of the push is fix-relay's: here a stand-in on the
relay's own address, with the relay's own TLS key and audit key, plays it (as
tests/integration/test_pinset_signing.py does for the pin set)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from backline.agent.fixes import cache
from backline.agent.fixes import trust as fix_trust
from backline.agent.state import StateDir
from backline.common import keys, protocol
from tests.harness import AGENT, AgentProcess, RelayProcess, wait_for
from tests.unit.test_fix_agent_trust import Signer, fix


@contextmanager
def stand_in(relay: RelayProcess, trust_answer: bytes, push: dict[str, Any]
             ) -> Iterator[list[str]]:
    import ssl

    asked: list[str] = []
    ready = threading.Event()
    holder: list[Any] = []

    def http(connection: ServerConnection, request: Request) -> Response | None:
        if request.path in ("/agent/pins", "/agent/fix-trust"):
            asked.append(request.path)
            if request.path == "/agent/pins":
                return connection.respond(HTTPStatus.NOT_FOUND, "")
            response = connection.respond(HTTPStatus.OK, "")
            response.body = trust_answer
            response.headers["Content-Type"] = "application/json"
            response.headers["Content-Length"] = str(len(trust_answer))
            return response
        return None

    async def control(ws: ServerConnection) -> None:
        await ws.send(protocol.encode("challenge", nonce=protocol.b64e(b"n" * 32),
                                      relay_time=round(time.time(), 3)))
        msg = json.loads(await ws.recv())
        await ws.send(protocol.encode("welcome", agent_id=msg["agent_id"], heartbeat_s=30,
                                      relay_time=round(time.time(), 3)))
        await ws.send(protocol.encode("fix_revocations", **push))
        asked.append("pushed")
        async for _ in ws:
            pass

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(relay.data_dir / "tls.crt", relay.data_dir / "tls.key")
        closing = asyncio.Event()
        holder.extend([asyncio.get_running_loop(), closing])
        async with serve(control, "127.0.0.1", relay.port, ssl=ctx, process_request=http):
            ready.set()
            await closing.wait()

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "the stand-in did not start"
    try:
        yield asked
    finally:
        holder[0].call_soon_threadsafe(holder[1].set)
        thread.join(10)


def enrollment(agent: AgentProcess) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((agent.state_dir / "enrollment.json").read_text())
    return data


def test_an_agent_enrolled_before_fix_keys_learns_them_and_the_revocations(tmp_path: Path
                                                                           ) -> None:
    relay = RelayProcess(tmp_path)
    relay.start()
    agent = AgentProcess(tmp_path, "early")
    try:
        assert agent.enroll(relay.token()).returncode == 0
        assert isinstance(enrollment(agent)["fix_keys"], list)  # [] from a relay without one
        relay.stop()
        audit = keys.load_private(relay.data_dir / "audit_key.pem")
        fix_key, stranger = Signer(), Signer("stranger")
        revoked, kept = fix(), fix(id="other-fix")
        state = StateDir(agent.state_dir)
        for m in (revoked, kept):
            cache.store(state.root, m, [fix_key.sign(m)])
        push = fix_key.revocations(1, revoked, reason="broke printers")

        # A document signed by another key than the pinned audit key: ignored.
        forged = json.dumps(fix_trust.sign(keys.generate(), 7, [stranger.public])).encode()
        with stand_in(relay, forged, push) as asked:
            agent.start()
            wait_for(lambda: "/agent/fix-trust" in asked and "pushed" in asked and (
                agent.state_dir / "fix_revocations.pending.json").exists(), 30,
                "the agent to ask for fix trust and keep the list it cannot check yet")
            wait_for(lambda: "fix-trust answer is ignored" in agent.log_path.read_text(), 30,
                     "the agent to check and refuse the forged document")
            agent.stop()
        assert stranger.public not in enrollment(agent)["fix_keys"]
        assert not (agent.state_dir / "fix_revocations.json").exists()  # no key verifies it
        assert (agent.state_dir / "fix_revocations.pending.json").exists()

        genuine = json.dumps(fix_trust.sign(audit, 1, [fix_key.public])).encode()
        with stand_in(relay, genuine, push) as asked:
            agent.start()
            wait_for(lambda: (agent.state_dir / "fix_revocations.json").exists(), 20,
                     "the agent to adopt the fix key and the pending revocations")
            agent.stop()
        e = enrollment(agent)
        assert e["fix_keys"] == [fix_key.public] and e["fix_keys_serial"] == 1
        kept_list = json.loads((agent.state_dir / "fix_revocations.json").read_text())
        assert kept_list["serial"] == 1 and kept_list["entries"][0]["id"] == "test-fix"
        assert not (agent.state_dir / "fix_revocations.pending.json").exists()

        def run(fix_id: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([AGENT, "--state-dir", str(agent.state_dir), "fix", "run",
                                   fix_id], capture_output=True, text=True, timeout=60,
                                  stdin=subprocess.DEVNULL)

        refused = run("test-fix")
        assert refused.returncode == 5 and "revoked" in refused.stderr, refused.stderr
        ran = run("other-fix")
        assert ran.returncode == 0 and ran.stdout == "hello world\n", ran.stderr
    finally:
        agent.stop()
        relay.stop()
