"""A revocation that arrives while the customer is being asked stops the run: the
agent reads its kept list again after the answer, just before the script starts
(review of issue 12, MUST-FIX 5), over its real SSH server."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backline.agent.consent import Answer
from backline.agent.fixes import revocations
from tests.integration.test_fix_agent_ssh import Agent, Customer, fix_channel
from tests.unit.test_fix_agent_trust import fix
from tests.unit.test_wstunnel import run_async


class RevokedWhileAsking(Customer):
    """Says yes, but the relay's revocation of the fix lands while it is deciding."""

    def __init__(self) -> None:
        super().__init__(says=True)
        self.agent: Agent | None = None

    async def ask(self, question: str, timeout: float) -> Answer:
        assert self.agent is not None
        self.questions.append(question)
        push = self.agent.relay.revocations(1, fix(consent=True))
        got = await asyncio.to_thread(revocations.receive, self.agent.state.root, push,
                                      (self.agent.relay.public,))
        assert got.outcome == "adopted"
        return Answer(True, "customer_allowed")


@run_async
async def test_a_revocation_during_consent_stops_the_run(tmp_path: Path) -> None:
    customer = RevokedWhileAsking()
    agent = Agent(tmp_path, customer=customer)
    customer.agent = agent
    target = tmp_path / "ran"
    m = fix(consent=True, script=f"touch {target}\n")
    # the revocation names (id, version): the same fix whatever its script
    conn, _ = await agent.connect()
    async with conn:
        ch = await fix_channel(conn, agent.request(m))
    assert [line["type"] for line in ch.lines] == ["checked", "consent", "refused"]
    assert ch.lines[-1]["reason"] == "revoked" and ch.status == 77
    assert len(customer.questions) == 1 and not target.exists()
    assert agent.refusals() == ["revoked"]
    assert "fix.started" not in [e["event"] for e in agent.log.read()]
