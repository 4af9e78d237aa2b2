"""Every WebSocket a browser can reach is admitted by the one gate (browser_socket.admit)."""

from __future__ import annotations

import ast
import inspect
import textwrap

from backline.relay import app


def test_no_api_socket_is_mounted_outside_the_browser_list() -> None:
    """A WebSocketRoute under /api/ written anywhere else in the app would skip the test
    below; the agent's own sockets live under /agent/ and have their own admission."""
    tree = ast.parse(inspect.getsource(app))
    listed = next(n for n in tree.body if isinstance(n, ast.AnnAssign)
                  and getattr(n.target, "id", "") == "BROWSER_SOCKETS")
    inside = {id(n) for n in ast.walk(listed)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", "") == "WebSocketRoute"
                and isinstance(node.args[0], ast.Constant)
                and not str(node.args[0].value).startswith("/agent/")):
            assert id(node) in inside, f"{node.args[0].value} is not in BROWSER_SOCKETS"


def test_every_browser_socket_calls_the_gate_first() -> None:
    assert len(app.BROWSER_SOCKETS) >= 2  # /api/v1/live and the capability stream
    for route in app.BROWSER_SOCKETS:
        path, endpoint = route.path, route.endpoint
        body = ast.parse(textwrap.dedent(inspect.getsource(endpoint))).body[0]
        assert isinstance(body, ast.AsyncFunctionDef)
        calls = [n for n in ast.walk(body) if isinstance(n, ast.Await)
                 and isinstance(n.value, ast.Call)
                 and getattr(n.value.func, "id", "") == "admit"]
        assert calls, f"{path}: {endpoint.__name__} does not go through browser_socket.admit"
        # ... and nothing is accepted before it
        accepts = [n for n in ast.walk(body) if isinstance(n, ast.Attribute)
                   and n.attr == "accept"]
        assert all(a.lineno > calls[0].lineno for a in accepts), path
