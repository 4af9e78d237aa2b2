"""The relay has no import circle: no module reaches itself through the modules it
imports, whether at the top of a file or inside a function (a lazy import only hides a
circle until the function runs; it is still two modules that cannot be understood, or
changed, one without the other). Imports under ``if TYPE_CHECKING:`` do not count: they
never run. The graph is grimp's (import-linter's own), read from the source."""

from __future__ import annotations

import itertools
from collections import deque

import grimp

PACKAGE = "backline.relay"


def relay_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)
    modules = set(graph.modules)
    return {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components (iterative: no recursion limit), those that hold a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges[node]:
                    found.append(component)
    return found


def shortest_circle(edges: dict[str, set[str]], component: set[str]) -> list[str]:
    """One shortest circle inside ``component`` (breadth first from each member)."""
    best: list[str] = []
    for start in sorted(component):
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:
            node = queue.popleft()
            if start in edges[node]:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                circle = [*reversed(path), start]
                if not best or len(circle) < len(best):
                    best = circle
                break
            for child in sorted(edges[node] & component):
                if child not in came_from and child != start:
                    came_from[child] = node
                    queue.append(child)
    return best


def describe(circle: list[str]) -> str:
    graph = grimp.build_graph(PACKAGE, exclude_type_checking_imports=True, cache_dir=None)
    steps = []
    for importer, imported in itertools.pairwise(circle):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = "; ".join(f"l.{d['line_number']}: {d['line_contents']}" for d in details)
        steps.append(f"    {importer} -> {imported} ({where})")
    return "\n".join(steps)


def test_the_circle_finder_finds_a_circle_and_only_circles() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    components = sorted(strongly_connected(edges), key=len)
    assert components == [{"e"}, {"a", "b", "c"}]
    assert shortest_circle(edges, {"a", "b", "c"}) == ["a", "b", "c", "a"]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_the_relay_has_no_import_circle() -> None:
    edges = relay_graph()
    assert edges.get("backline.relay.app"), "no graph read"
    components = strongly_connected(edges)
    report = []
    for component in sorted(components, key=lambda c: (-len(c), sorted(c))):
        circle = shortest_circle(edges, component)
        report.append(f"{len(component)} modules in a circle: {', '.join(sorted(component))}\n"
                      f"  for example:\n{describe(circle)}")
    assert not components, (f"{len(components)} import circle(s) in the relay:\n"
                            + "\n".join(report))
