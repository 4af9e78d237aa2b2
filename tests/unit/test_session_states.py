"""The session state table: every allowed move passes, every other raises."""

from __future__ import annotations

import asyncio
import itertools

import asyncssh
import pytest

from backline.relay.sessions import states
from backline.relay.sessions.session import LiveSession
from backline.relay.sessions.states import BadTransition, State


def test_the_table_allows_the_documented_paths() -> None:
    for path in ([None, State.DIALING, State.READY, State.CLOSED],
                 [None, State.WAITING, State.CONSENT, State.DIALING, State.READY,
                  State.CLOSED],
                 [None, State.WAITING, State.CLOSED],
                 [State.CONSENT, State.CLOSED], [State.DIALING, State.CLOSED]):
        for old, new in itertools.pairwise(path):
            assert states.check(old, new) is new


@pytest.mark.parametrize(("old", "new"), [
    (State.CLOSED, State.READY), (State.CLOSED, State.CLOSED), (State.READY, State.DIALING),
    (State.WAITING, State.READY), (None, State.READY), (State.DIALING, State.CONSENT),
])
def test_other_moves_raise(old: State | None, new: State) -> None:
    with pytest.raises(BadTransition):
        states.check(old, new)


def test_unknown_state_names_raise() -> None:
    with pytest.raises(ValueError):
        states.check(State.READY, "finished")


def test_a_live_session_cannot_be_moved_wrongly() -> None:
    async def main() -> None:
        key = asyncssh.generate_private_key("ssh-ed25519")
        s = LiveSession(id="ss_x", mode="managed", principal="ag_x", group_id=None,
                        technician="t", opened_by="user:t", reason="", ticket="",
                        capabilities=("info",), host_key=key, valid_until=0.0)
        assert s.state == State.DIALING == "dialing"
        s.state = State.READY
        s.state = State.CLOSED
        with pytest.raises(BadTransition):
            s.state = State.READY
        assert s.state is State.CLOSED

    asyncio.run(main())
