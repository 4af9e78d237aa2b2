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
  JavaScript). The top's ids are rrweb's counter from 1: they never reach 2**40, and
  the agent holds the top to that (:func:`check_top`: the embedding page can call its
  own binding too). An id that does not fit its range (a forged one) drops its event,
  and so does a negative one other than rrweb's -1 ("none"); an add under no node
  (rrweb's -2, its ignored node) is taken out of its event.

What is not rrweb's: custom, plugin and font events of a frame are dropped (the
recorder sends none; a forged one has nothing to do in the view), and so is an event
of a source rrweb does not move. A page script calling a frame's binding with forged
events can therefore at worst add DOM inside that frame's own range: its ids cannot
name a node of the parent or of another frame; and the embedding page, calling its own
binding, can name none of a frame's nodes nor add under the ``<iframe>`` a frame that
records itself is attached to.
"""

from __future__ import annotations

import time
from typing import Any

from backline.agent.cobrowse import events as ev

#: The first base, and the room each document of a frame gets (rrweb's id counter does
#: not start again within a document: its full snapshots all fit one range).
FIRST_BASE = 2**40
SPAN = 2**32
MAX_SAFE = 2**53 - 1
#: The last whole range below 2**53 is kept for blanks (one id each: an empty
#: document), so that a frame reaching a private address is blanked even once the
#: documents' ranges are used up.
BLANK_BASE = (MAX_SAFE // SPAN - 1) * SPAN
#: Full snapshots a frame may send (its script can call its ``_snapshot`` in a loop),
#: and new ranges the whole co-browse may hand out, per second and in a burst: at the
#: sustained rate the 2**21 ranges last 18 hours (the frames' 32 allowances together).
SNAPSHOTS_PER_S, SNAPSHOTS_BURST = 1.0, 5.0
BASES_PER_S, BASES_BURST = 32.0, 160.0
#: What a frame may hold back while its ``<iframe>``'s id in the parent is not known,
#: and what all frames may hold together (each snapshot is up to 15 MiB by itself).
MAX_BUFFER_EVENTS = 2000
MAX_BUFFER_BYTES = 8 * 1024 * 1024
MAX_HELD_BYTES = 32 * 1024 * 1024

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
    """Hands out the id ranges of one co-browse: one per frame document, at a bounded
    rate (a hostile frame cannot use them up in minutes), and blanks' ids from a range
    of their own (a blank never fails)."""

    def __init__(self) -> None:
        self.next = FIRST_BASE
        self.bucket = ev.Bucket(BASES_PER_S, BASES_BURST)
        self.blanks = 0

    def peek(self, now: float | None = None) -> int | None:
        """The base :meth:`take` would give now, or None (used up, or over the rate)."""
        now = time.monotonic() if now is None else now
        self.bucket.refill(now)
        if self.next + SPAN > BLANK_BASE or self.bucket.level < 1:
            return None
        return self.next

    def take(self, now: float | None = None) -> int | None:
        """A fresh base, or None: taken only for a snapshot already found valid."""
        base = self.peek(now)
        if base is None:
            return None
        self.bucket.take(1, time.monotonic() if now is None else now)
        self.next += SPAN
        return base

    def blank(self) -> int:
        """A base whose ``+ 1`` is an id no document has had: 2**32 - 1 blanks (a
        navigation each) before it comes round again, onto an empty document too."""
        base = BLANK_BASE + self.blanks % (SPAN - 1)
        self.blanks += 1
        return base


def _id(value: object, base: int, limit: int = SPAN, strict: bool = False) -> object:
    """One id moved into a range (``base`` up to ``base + limit``). ``None`` stays (no
    next sibling) and so does -1 (rrweb's "none": a pointer over a node it did not
    serialise), except where ``strict``: a node's own ``id`` and an add's ``parentId``
    must name a node. Any other negative is refused (rrweb makes none; a forged -5 would
    be a key in the replayer's mirror that no range owns)."""
    if value is None:
        if strict:
            raise Unmappable("None")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise Unmappable(repr(value)[:40])
    if value < 0:
        if strict or value != -1:
            raise Unmappable(str(value))
        return -1
    if value >= limit:
        raise Unmappable(str(value))
    return base + value


def _keys(obj: object, base: int, keys: tuple[str, ...], lists: tuple[str, ...] = (),
          limit: int = SPAN, strict: tuple[str, ...] = ()) -> None:
    """rrweb's ``replaceIds``: each of ``keys`` present in ``obj`` (an id), each of
    ``lists`` (a list of ids); those of ``strict`` must be there and name a node.
    Anything else where an id belongs is refused."""
    if not isinstance(obj, dict):
        raise Unmappable("not an object")
    for key in strict:
        obj[key] = _id(obj.get(key), base, limit, strict=True)
    for key in keys:
        if key in obj:
            obj[key] = _id(obj[key], base, limit)
    for key in lists:
        if key in obj:
            value = obj[key]
            if not isinstance(value, list) or len(value) > 10_000:
                raise Unmappable(key)
            obj[key] = [_id(v, base, limit) for v in value]


def _node(node: object, base: int, root: int | None, limit: int = SPAN) -> None:
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
        _keys(n, base, ("rootId",), limit=limit, strict=("id",))
        if root is not None and n.get("type") != DOCUMENT and not (
                isinstance(n.get("rootId"), int) and n["rootId"] > 0):  # absent or -1
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
    root = _id(node.get("id"), base, strict=True)
    if not isinstance(root, int):
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


def _nowhere(value: object) -> bool:
    """An add's ``parentId`` that names no node: rrweb sends -2 (its ignored node) for
    a child of a script it leaves out; the replayer places such an add nowhere."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool)
                             and value < 0)


def _walk(data: dict[str, Any], base: int, root: int | None, limit: int) -> bool | None:
    """The ids of one incremental event's ``data`` moved into ``base`` .. ``base +
    limit`` (in place); None for a source that has no place in the merge (of a frame:
    viewport, font, log, unknown), else whether adds under no node were taken out
    (rather than the whole event dropped: rrweb sends them beside real ones). Raises
    :class:`Unmappable`."""
    source = data.get("source")
    changed = False
    if source == MUTATION:
        adds = _each(data.get("adds"), "adds")
        kept = [a for a in adds if not (isinstance(a, dict) and _nowhere(a.get("parentId")))]
        if len(kept) != len(adds):
            data["adds"], changed = kept, True
        for add in kept:
            _keys(add, base, ("nextId", "previousId"), limit=limit, strict=("parentId",))
            _node(add.get("node"), base, root, limit)
        for key, fields in (("removes", ("parentId", "id")), ("attributes", ("id",)),
                            ("texts", ("id",))):
            for item in _each(data.get(key), key):
                _keys(item, base, fields, limit=limit)
    elif source in POSITIONS:
        for position in _each(data.get("positions"), "positions"):
            _keys(position, base, ("id",), limit=limit)
    elif source in DATA_ID:
        _keys(data, base, ("id",), limit=limit)
    elif source in STYLE_RULES:
        _keys(data, base, ("id", "styleId"), limit=limit)
    elif source == SELECTION:
        for r in _each(data.get("ranges"), "ranges"):
            _keys(r, base, ("start", "end"), limit=limit)
    elif source == ADOPTED:
        _keys(data, base, ("id",), ("styleIds",), limit=limit)
        for style in _each(data.get("styles"), "styles"):
            _keys(style, base, ("styleId",), limit=limit)
    elif source != CUSTOM_ELEMENT:  # a custom element's name: no id
        return None
    return changed


def transform(event: dict[str, Any], base: int, root: int) -> dict[str, Any] | None:
    """One incremental event of a frame with its ids moved (in place, as :func:`attach`),
    or None when it is dropped (of a kind the merge does not carry, or with an id
    outside the frame's range: what was moved of it before is thrown away with it)."""
    if event.get("type") != INCREMENTAL:
        return None  # meta, load, DOMContentLoaded; custom and plugin: see the docstring
    data = event.get("data")
    if not isinstance(data, dict):
        return None
    try:
        if _walk(data, base, root, SPAN) is None:
            return None  # viewport (rrweb drops it), font, log, unknown
    except Unmappable:
        return None
    if data.get("isAttachIframe") and not all(
            isinstance(add.get("node"), dict) and add["node"].get("type") == DOCUMENT
            for add in data.get("adds") or []):
        # rrweb's own attach (of a same-origin frame inside this one) adds documents
        # only; on anything else the flag is forged (a replayer or a test reading it
        # as "a frame's document" would be misled).
        del data["isAttachIframe"]
    return event


def check_top(event: dict[str, Any], owners: frozenset[int] | set[int]) -> bool | None:
    """Is an event of a page's top its own? The top's rrweb counts from 1 and never
    reaches :data:`FIRST_BASE`, so an id at or above it (a frame's, or one a frame will
    use next) or a negative one other than -1 is forged: a page script can call its
    binding (its name is found on the global object, or by patching what inject.js's
    flush calls). None drops the event; adds under a self-recording frame's
    ``<iframe>`` (``owners``) are taken out of it (that frame's document is the frame's
    own, never the embedding page's to write), and then True says it changed (its text
    is to be made again), False that it goes out as it came (the walk with base 0
    changes nothing else)."""
    kind = event.get("type")
    data = event.get("data")
    if kind not in (FULL_SNAPSHOT, INCREMENTAL):
        return False  # meta, load, custom, plugin: no node ids
    if not isinstance(data, dict):
        return None
    try:
        if kind == FULL_SNAPSHOT:
            _node(data.get("node"), 0, None, FIRST_BASE)
            return False
        changed = bool(_walk(data, 0, None, FIRST_BASE))
    except Unmappable:
        return None
    adds = data.get("adds")
    if owners and data.get("source") == MUTATION and adds:
        kept = [a for a in adds if a.get("parentId") not in owners]
        if len(kept) != len(adds):
            data["adds"], changed = kept, True
    return changed


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
        #: Its <iframe> is blocked (or inside a blocked element): not looked up again
        #: until its parent's next full snapshot.
        self.blocked = False
        self.asked_at = -1e9
        #: Its full snapshots (each rebuilds its nodes in the view under new ids), and
        #: those over its allowance, dropped (it is asked for one again later).
        self.snapshots = 0
        self.snapshot_bucket = ev.Bucket(SNAPSHOTS_PER_S, SNAPSHOTS_BURST)
        self.snapshots_dropped = 0

    @property
    def epoch(self) -> object:
        """What its nodes' ids in the view belong to: its range and its snapshot."""
        return (self.base, self.snapshots)

    def allow_snapshot(self, now: float | None = None) -> bool:
        """One more full snapshot within its allowance; else it is counted, and a fresh
        one is due (what it sends next names nodes the view does not have)."""
        if self.snapshot_bucket.take(1, time.monotonic() if now is None else now):
            return True
        self.snapshots_dropped += 1
        self.stale = True
        return False

    def snapshot(self, event: dict[str, Any], base: int, size: int = 0) -> bool:
        """A full snapshot of the frame in ``base`` (its document's range: the same for
        each snapshot of one document); the attach mutation is held until
        :meth:`release`. False when it is not a snapshot the merge can use."""
        try:
            attached, root = attach(event, base)
        except Unmappable:
            return False
        self.snapshots += 1
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
