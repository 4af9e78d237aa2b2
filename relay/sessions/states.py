"""A support session's states and the transitions allowed between them, as one table.

Written out like h11's ``_state.py``: every move a session can make is listed here, and
any other raises :class:`BadTransition` — a bug, caught where it is made rather than
found later as a session the console shows as open for ever. A managed session goes
``dialing -> ready -> closed``; an attended one starts ``waiting`` (a code was made),
goes to ``consent`` when the customer redeems the code, then ``dialing`` once they
accept. Any state but ``closed`` may end (``closed``). ``expired`` is not a state: it
is how a ``waiting`` row whose code has run out is shown.
"""

from __future__ import annotations

import enum

__all__ = ["OPEN", "TRANSITIONS", "BadTransition", "State", "check"]


class State(enum.StrEnum):
    WAITING = "waiting"  # an attended session's code is out; nobody has used it
    CONSENT = "consent"  # the customer redeemed the code and is being asked
    DIALING = "dialing"  # the agent was told to open the tunnel
    READY = "ready"  # SSH is up over the tunnel: channels may open
    CLOSED = "closed"  # over, for whatever reason (the row says which)


#: Where each state may go next; ``None`` is "no session yet" (the row is created).
TRANSITIONS: dict[State | None, frozenset[State]] = {
    None: frozenset({State.WAITING, State.DIALING}),
    State.WAITING: frozenset({State.CONSENT, State.CLOSED}),
    State.CONSENT: frozenset({State.DIALING, State.CLOSED}),
    State.DIALING: frozenset({State.READY, State.CLOSED}),
    State.READY: frozenset({State.CLOSED}),
    State.CLOSED: frozenset(),
}

#: Live on a node: what a relay restart closes and ``?state=open`` lists.
OPEN: tuple[State, ...] = (State.CONSENT, State.DIALING, State.READY)


class BadTransition(RuntimeError):
    """A move the table does not allow: a programming error, never a user's."""


def check(old: State | str | None, new: State | str) -> State:
    """``new`` as a :class:`State` if ``old -> new`` is allowed; raises otherwise."""
    src = None if old is None else State(old)
    dst = State(new)
    if dst not in TRANSITIONS[src]:
        raise BadTransition(f"a session cannot go from {src or 'nothing'} to {dst}")
    return dst
