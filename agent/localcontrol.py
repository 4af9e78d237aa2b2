"""The running agent's local control socket: how the customer ends a session at once.

``backline-agent sessions`` lists the live support sessions (id, technician, what they
are using now, since when) and ``backline-agent end ID`` ends one; ``end-sessions``
ends them all. They reach the running agent through a UNIX socket in its state
directory (``control.sock``; the directory is 0700 and the socket 0600, and a peer
whose uid is neither the agent's nor root's is refused by its credentials).

One request per connection: one JSON line of at most :data:`MAX_REQUEST` bytes, read
within :data:`TIMEOUT_S`, answered with one JSON line. Requests::

    {"op": "sessions"}              -> {"ok": true, "sessions": [...]}
    {"op": "end", "id": "ss_..."}   -> {"ok": true} | {"ok": false, "error": "no_such_session"}
    {"op": "end_all"}               -> {"ok": true, "ended": N}
    {"op": "status"}                -> {"ok": true, "pid": N, "sessions": N, "loaded": [...],
                                        "modules": N}
    {"op": "modules"}               -> {"ok": true, "modules": [every imported module's name]}
    {"op": "fix_reports"}           -> {"ok": true}  (``fix run`` kept a report: send it now)

``loaded`` names the capability machinery this process has imported (asyncssh, the
diagnostics collectors, psutil, the pty module): none while nobody is being helped.
Every refusal is logged and written to the activity log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from backline.agent.activity import CUSTOMER_ENDED, ActivityLog
from backline.common.protocol import SESSION_ID_RE

log = logging.getLogger("backline.agent.local")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1024
MAX_ANSWER = 256 * 1024
TIMEOUT_S = 5.0
#: The machinery an idle agent should not hold; ``status`` says which are loaded.
#: cryptography: the agent signs in a child (agent/keychild.py) until a session needs
#: asyncssh (docs/benchmarks.md, "Idle agent").
MACHINERY = ("asyncssh", "psutil", "backline.agent.diagnostics.engine",
             "backline.agent.diagnostics.collectors", "backline.agent.sshserver",
             "backline.agent.capabilities.shell", "backline.agent.capabilities.diagnostics",
             "backline.agent.capabilities.cobrowse", "backline.agent.cobrowse",
             "cryptography")
#: AF_UNIX paths are short (108 bytes on Linux, with the terminating NUL).
MAX_PATH = 107


class Sessions(Protocol):
    def sessions(self) -> list[dict[str, Any]]: ...

    def end_here(self, session_id: str, reason: str = ..., code: str = ...) -> bool: ...

    def end_all(self, reason: str = ..., code: str = ...) -> None: ...

    def __len__(self) -> int: ...


class LocalError(Exception):
    """The running agent could not be reached or refused; the message says why."""


def socket_path(state_root: Path) -> Path:
    return state_root / SOCKET_NAME


def loaded_machinery() -> list[str]:
    return [name for name in MACHINERY if name in sys.modules]


def _peer_allowed(sock: socket.socket | None) -> bool:
    """Linux: the peer's uid from its credentials; elsewhere the 0600 socket decides."""
    option = getattr(socket, "SO_PEERCRED", None)
    if sock is None or option is None:
        return True
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    except OSError:
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid in (os.getuid(), 0)


class LocalControl:
    def __init__(self, state_root: Path, sessions: Sessions, activity: ActivityLog,
                 fix_reports: Callable[[], None] | None = None) -> None:
        self.path = socket_path(state_root)
        self.sessions = sessions
        self.activity = activity
        #: Wakes the sender of self-service fix reports (agent/fix_reports.py).
        self.fix_reports = fix_reports
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> bool:
        """Listen; False (and a warning) when the socket cannot be made."""
        if len(os.fsencode(self.path)) > MAX_PATH:
            log.warning("state directory path too long for a control socket (%s): "
                        "`backline-agent sessions` and `end` cannot reach this agent",
                        self.path)
            return False
        with contextlib.suppress(FileNotFoundError):
            if self.path.is_socket():
                self.path.unlink()  # a previous agent's; a second agent would steal it
        old = os.umask(0o177)
        try:
            self.server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                          limit=MAX_REQUEST + 1)
        except OSError as exc:
            log.warning("cannot listen on %s (%s): `backline-agent sessions` and `end` "
                        "cannot reach this agent", self.path, exc)
            return False
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        return True

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
                     ) -> None:
        try:
            if not _peer_allowed(writer.get_extra_info("socket")):
                answer = self._refused("peer_not_allowed", "another user's process")
            else:
                try:
                    async with asyncio.timeout(TIMEOUT_S):
                        line = await reader.readuntil(b"\n")
                    answer = self.answer(line)
                except TimeoutError:
                    answer = self._refused("timeout", f"no request within {TIMEOUT_S:g} s")
                except asyncio.LimitOverrunError:
                    answer = self._refused("too_large", f"over {MAX_REQUEST} bytes")
                except asyncio.IncompleteReadError as exc:
                    answer = self.answer(exc.partial) if exc.partial else self._refused(
                        "empty", "no request")
            writer.write(json.dumps(answer).encode() + b"\n")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(writer.drain(), TIMEOUT_S)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    def answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_REQUEST:
            return self._refused("too_large", f"over {MAX_REQUEST} bytes")
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return self._refused("malformed", "not one JSON object")
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return self._refused("malformed", "no op")
        op = request["op"]
        if op == "sessions" and len(request) == 1:
            return {"ok": True, "sessions": self.sessions.sessions()}
        if op == "status" and len(request) == 1:
            return {"ok": True, "pid": os.getpid(), "sessions": len(self.sessions),
                    "loaded": loaded_machinery(), "modules": len(sys.modules)}
        if op == "modules" and len(request) == 1:  # what `bench.agent_idle` looks at
            return {"ok": True, "modules": sorted(sys.modules)}
        if op == "fix_reports" and len(request) == 1:
            if self.fix_reports is not None:
                self.fix_reports()
            return {"ok": self.fix_reports is not None}
        if op == "end_all" and len(request) == 1:
            count = len(self.sessions)
            self.sessions.end_all(CUSTOMER_ENDED, "customer")
            return {"ok": True, "ended": count}
        if op == "end" and set(request) == {"op", "id"}:
            session_id = request["id"]
            if not isinstance(session_id, str) or not SESSION_ID_RE.fullmatch(session_id):
                return self._refused("malformed", "id is not a session id")
            if not self.sessions.end_here(session_id, CUSTOMER_ENDED, "customer"):
                return {"ok": False, "error": "no_such_session",
                        "detail": f"no live session {session_id}"}
            return {"ok": True}
        return self._refused("unknown_op", f"unknown request {op[:32]!r}")

    def _refused(self, reason: str, detail: str) -> dict[str, Any]:
        self.activity.record("local.refused", reason=reason, detail=detail)
        return {"ok": False, "error": reason, "detail": detail}


def request(state_root: Path, body: dict[str, Any], timeout: float = TIMEOUT_S
            ) -> dict[str, Any]:
    """Ask the running agent (the command-line side); raises :class:`LocalError`."""
    path = socket_path(state_root)
    if not path.exists():
        raise LocalError("the agent is not running here (no control socket in "
                         f"{state_root})")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps(body).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n") and len(data) <= MAX_ANSWER:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        raise LocalError("the agent is not running here (its control socket is stale)"
                         ) from None
    except OSError as exc:
        raise LocalError(f"cannot reach the running agent: {exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise LocalError("the running agent gave no answer") from None
    if not isinstance(answer, dict):
        raise LocalError("the running agent gave a malformed answer")
    return answer
