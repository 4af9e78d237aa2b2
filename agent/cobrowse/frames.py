"""A frame that records itself, merged into its page's one rrweb stream by the agent.

A frame that cannot read its parent's document (another origin) has its own rrweb
(``assets/inject.js``) and sends through the binding of its own DevTools target (an
out-of-process frame) or from its own execution context (an in-process one). rrweb's
own way, ``recordCrossOriginIframes``, posts every event to ``window.parent`` with
targetOrigin ``"*"``, where any script of the embedding page reads it; here nothing of
the frame passes through any page's main world: the merge is done in Python, on what
the gate (:mod:`.events`) accepted, as rrweb's iframe manager
(``transformCrossOriginEvent``, rrweb 2.x) does it in the parent page:

- the frame's full snapshot becomes a mutation that adds the frame's document under
  the ``<iframe>`` element of the parent's rrweb (``isAttachIframe``), its nodes'
  ``rootId`` patched to the frame's document;
- meta, load, DOMContentLoaded and viewport events are dropped;
- every node and stylesheet id is moved into a range of its own: ``base + id``, with a
  fresh ``base`` (:class:`Bases`) at each of the frame's full snapshots, from
  :data:`FIRST_BASE` up in steps of :data:`SPAN`, below 2**53 (an exact integer in
  JavaScript). The parent's ids are rrweb's counter from 1: they never reach 2**40.
  An id that does not fit its range (a forged one) drops its event.

What is not rrweb's: custom, plugin and font events of a frame are dropped (the
recorder sends none; a forged one has nothing to do in the view), and so is an event
of a source rrweb does not move. A page script calling a frame's binding with forged
events can therefore at worst add DOM inside that frame's own range: its ids cannot
name a node of the parent or of another frame.
"""

from __future__ import annotations

from typing import Any

from backline.agent.cobrowse import events as ev

#: The first base, and the room each full snapshot of a frame gets.
FIRST_BASE = 2**40
SPAN = 2**32
MAX_SAFE = 2**53 - 1
#: What a frame may hold back while its ``<iframe>``'s id in the parent is not known.
MAX_BUFFER_EVENTS = 2000
MAX_BUFFER_BYTES = 8 * 1024 * 1024

FULL_SNAPSHOT, INCREMENTAL = 2, 3
DOCUMENT = 0  # rrweb-snapshot's NodeType.Document
MUTATION = 0
POSITIONS = (1, 6, 12)  # MouseMove, TouchMove, Drag
DATA_ID = (2, 3, 5, 7, 9)  # MouseInteraction, Scroll, Input, MediaInteraction, Canvas
STYLE_RULES = (8, 13)  # StyleSheetRule, StyleDeclaration
SELECTION = 14
ADOPTED = 15
CUSTOM_ELEMENT = 16


class Unmappable(ValueError):
    """An id that is not one of the frame's (not an integer of its range)."""


class Bases:
    """Hands out the id ranges of one co-browse: each frame full snapshot gets a new one."""

    def __init__(self) -> None:
        self.next = FIRST_BASE

    def take(self) -> int | None:
        """A fresh base, or None when the room below 2**53 is used up (2**21 snapshots)."""
        if self.next + SPAN > MAX_SAFE:
            return None
        base = self.next
        self.next += SPAN
        return base


def _id(value: object, base: int) -> object:
    """One id moved into the frame's range; ``None`` stays (no next sibling), a negative
    one stays (rrweb's "not serialised": it names no node either way)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unmappable(repr(value)[:40])
    if value < 0:
        return value
    if value >= SPAN:
        raise Unmappable(str(value))
    return base + value


def _keys(obj: object, base: int, keys: tuple[str, ...], lists: tuple[str, ...] = ()
          ) -> None:
    """rrweb's ``replaceIds``: each of ``keys`` present in ``obj`` (an id), each of
    ``lists`` (a list of ids). Anything else where an id belongs is refused."""
    if not isinstance(obj, dict):
        raise Unmappable("not an object")
    for key in keys:
        if key in obj:
            obj[key] = _id(obj[key], base)
    for key in lists:
        if key in obj:
            value = obj[key]
            if not isinstance(value, list) or len(value) > 10_000:
                raise Unmappable(key)
            obj[key] = [_id(v, base) for v in value]


def _node(node: object, base: int, root: int | None) -> None:
    """A serialised node and its children: ``id`` and ``rootId`` moved, then ``rootId``
    set to the frame's document where it has none (rrweb's ``patchRootIdOnNode``).
    Iterative: a deep tree is no Python recursion."""
    stack = [node]
    seen = 0
    while stack:
        n = stack.pop()
        seen += 1
        if not isinstance(n, dict) or "id" not in n or seen > 2_000_000:
            raise Unmappable("not a serialised node")
        _keys(n, base, ("id", "rootId"))
        if root is not None and n.get("type") != DOCUMENT and not n.get("rootId"):
            n["rootId"] = root
        children = n.get("childNodes")
        if children is not None:
            if not isinstance(children, list):
                raise Unmappable("childNodes")
            stack.extend(children)


def _each(items: object, what: str) -> list[Any]:
    if items is None:
        return []
    if not isinstance(items, list):
        raise Unmappable(what)
    return items


def attach(event: dict[str, Any], base: int) -> tuple[dict[str, Any], int]:
    """A frame's full snapshot as the mutation that attaches it, and the frame's new
    root id. ``parentId`` is None: the ``<iframe>``'s id, filled in by :func:`owned`
    once it is known. Raises :class:`Unmappable`. The snapshot's nodes are moved in
    place (the gate's events are the agent's own, parsed from the binding's payload: a
    copy cost 70 of 89 ms for a 10,000-element page, docs/cobrowse.md)."""
    data = event.get("data")
    node = data.get("node") if isinstance(data, dict) else None
    if not isinstance(node, dict):
        raise Unmappable("a full snapshot without its node")
    root = _id(node.get("id"), base)
    if not isinstance(root, int) or root < 0:
        raise Unmappable("root")
    _node(node, base, root)
    return ({"type": INCREMENTAL, "timestamp": event["timestamp"],
             "data": {"source": MUTATION, "adds": [{"parentId": None, "nextId": None,
                                                    "node": node}],
                      "removes": [], "texts": [], "attributes": [], "isAttachIframe": True}},
            root)


def owned(attached: dict[str, Any], owner: int, floor: float) -> dict[str, Any]:
    """The attach mutation under the ``<iframe>`` ``owner``, no earlier than ``floor``
    (a replay orders by timestamp: the frame may have been snapshotted before its
    parent, whose snapshot holds the ``<iframe>``)."""
    out = dict(attached)
    out["timestamp"] = max(attached["timestamp"], floor)
    data = dict(attached["data"])
    data["adds"] = [dict(data["adds"][0], parentId=owner)]
    out["data"] = data
    return out


def blank(base: int, timestamp: float) -> tuple[dict[str, Any], int]:
    """The attach mutation of an empty document: a frame whose address became private
    (what it showed before stays on no console)."""
    return attach({"type": FULL_SNAPSHOT, "timestamp": timestamp,
                   "data": {"node": {"type": DOCUMENT, "id": 1, "childNodes": []}}}, base)


def transform(event: dict[str, Any], base: int, root: int) -> dict[str, Any] | None:
    """One incremental event of a frame with its ids moved (in place, as :func:`attach`),
    or None when it is dropped (of a kind the merge does not carry, or with an id
    outside the frame's range: what was moved of it before is thrown away with it)."""
    if event.get("type") != INCREMENTAL:
        return None  # meta, load, DOMContentLoaded; custom and plugin: see the docstring
    out = event
    data = out["data"]
    source = data.get("source")
    try:
        if source == MUTATION:
            for add in _each(data.get("adds"), "adds"):
                _keys(add, base, ("parentId", "nextId", "previousId"))
                _node(add.get("node"), base, root)
            for key, fields in (("removes", ("parentId", "id")), ("attributes", ("id",)),
                                ("texts", ("id",))):
                for item in _each(data.get(key), key):
                    _keys(item, base, fields)
        elif source in POSITIONS:
            for position in _each(data.get("positions"), "positions"):
                _keys(position, base, ("id",))
        elif source in DATA_ID:
            _keys(data, base, ("id",))
        elif source in STYLE_RULES:
            _keys(data, base, ("id", "styleId"))
        elif source == SELECTION:
            for r in _each(data.get("ranges"), "ranges"):
                _keys(r, base, ("start", "end"))
        elif source == ADOPTED:
            _keys(data, base, ("id",), ("styleIds",))
            for style in _each(data.get("styles"), "styles"):
                _keys(style, base, ("styleId",))
        elif source == CUSTOM_ELEMENT:
            pass  # a custom element's name: no id
        else:
            return None  # viewport (rrweb drops it), font, log, unknown
    except Unmappable:
        return None
    return out


class Frame:
    """One frame that records itself: its range, its ``<iframe>`` in the parent, and
    what it holds back until that is known (bounded)."""

    def __init__(self, session_id: str, frame_id: str) -> None:
        self.session_id = session_id
        self.frame_id = frame_id
        #: The frame's range since its last full snapshot (None: no snapshot yet).
        self.base: int | None = None
        self.root: int | None = None
        #: The id of its ``<iframe>`` in the merged stream, and what it was read under
        #: (the parent's epoch: a parent's full snapshot gives its nodes new ids).
        self.owner: int | None = None
        self.owner_epoch: object = None
        #: Its snapshot went out under ``owner``: its events go straight out.
        self.attached = False
        #: The attach mutation (parentId to fill in) and the events after it.
        self.held: list[dict[str, Any]] = []
        self.held_bytes = 0
        #: What went out of it is no longer in the view (the parent was snapshotted
        #: again, the buffer overflowed, events were dropped): a fresh snapshot is due.
        self.stale = False
        self.floor = 0.0
        #: Its own allowance (the same gate as a page's: sizes and rates).
        self.gate = ev.Gate()
        self.looking = False
        #: Something changed while a lookup ran: it runs again.
        self.again = False
        self.lookups = 0
        self.retry_at = 0.0
        self.asked_at = -1e9

    @property
    def epoch(self) -> object:
        return self.base

    def snapshot(self, event: dict[str, Any], base: int, size: int = 0) -> bool:
        """A full snapshot of the frame: a new range; the attach mutation is held until
        :meth:`release`. False when it is not a snapshot the merge can use."""
        try:
            attached, root = attach(event, base)
        except Unmappable:
            return False
        self.base, self.root = base, root
        self.attached = False
        self.stale = False
        self.held = [attached]
        self.held_bytes = size
        return True

    def add(self, event: dict[str, Any], size: int) -> dict[str, Any] | None:
        """One incremental event: moved into the range; returned when it goes out now,
        held (None) while the frame is not attached."""
        if event.get("type") != INCREMENTAL:
            return None  # meta, load, DOMContentLoaded (before or after a snapshot)
        if self.base is None or self.root is None:
            self.stale = True
            return None
        moved = transform(event, self.base, self.root)
        if moved is None:
            return None
        if self.attached:
            moved["timestamp"] = max(moved["timestamp"], self.floor)
            return moved
        if not self.held or len(self.held) >= MAX_BUFFER_EVENTS or (
                self.held_bytes + size > MAX_BUFFER_BYTES):
            self.forget()
            self.stale = True
            return None
        self.held.append(moved)
        self.held_bytes += size
        return None

    def release(self, owner: int, floor: float) -> list[dict[str, Any]]:
        """What was held, now under ``owner``: the frame is attached."""
        if not self.held:
            return []
        first = owned(self.held[0], owner, floor)
        self.floor = first["timestamp"]
        out = [first]
        for moved in self.held[1:]:
            moved["timestamp"] = max(moved["timestamp"], self.floor)
            out.append(moved)
        self.held, self.held_bytes = [], 0
        self.attached = True
        return out

    def forget(self) -> None:
        """Its content in the view is gone (or never came): held events too."""
        self.held, self.held_bytes = [], 0
        self.attached = False

    def new_document(self) -> None:
        """The frame loaded another document: its recorder starts again (the
        ``<iframe>`` is the same element: its id stays)."""
        self.forget()
        self.base = self.root = None
        self.stale = False
