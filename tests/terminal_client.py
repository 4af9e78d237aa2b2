"""A console's side of the terminal socket (SHELL_CONTRACT.md), for tests and benches:
binary frames out and in, JSON control frames, and acknowledgements as it renders."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

from websockets.exceptions import ConnectionClosed

ACK_EVERY = 32 * 1024


class TerminalClient:
    def __init__(self, ws: Any, ack: bool = True, keep: bool = True) -> None:
        self.ws = ws
        self.ack = ack
        self.keep = keep  # keep the output (else only count it)
        self.out = bytearray()
        self.received = 0
        self.acked = 0
        self.messages: list[dict[str, Any]] = []
        self.closed = False
        self.on_output: Callable[[bytes], None] | None = None

    # --- to the relay --------------------------------------------------------------

    def type(self, data: bytes | str) -> None:
        self.ws.send(data.encode() if isinstance(data, str) else data)

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def resize(self, cols: int, rows: int) -> None:
        self.send(type="resize", cols=cols, rows=rows)

    # --- from the relay ------------------------------------------------------------

    def step(self, timeout: float) -> bool:
        """Take one frame (False when none came within ``timeout`` or the socket closed)."""
        if self.closed:
            return False
        try:
            frame = self.ws.recv(timeout)
        except TimeoutError:
            return False
        except ConnectionClosed:
            self.closed = True
            return False
        if isinstance(frame, bytes):
            self.received += len(frame)
            if self.keep:
                self.out += frame
            if self.on_output is not None:
                self.on_output(frame)
            if self.ack and self.received - self.acked >= ACK_EVERY:
                self.send_ack()
        else:
            self.messages.append(json.loads(frame))
        return True

    def send_ack(self) -> None:
        self.acked = self.received
        try:
            self.send(type="ack", bytes=self.received)
        except ConnectionClosed:
            self.closed = True

    def until(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = check()
            if found:
                return found
            got = self.step(min(0.2, max(0.01, deadline - time.monotonic())))
            if not got and self.ack and self.received > self.acked:
                self.send_ack()  # rendered all there is: say so
            if self.closed:
                found = check()
                if found:
                    return found
                raise AssertionError(f"the socket closed waiting for {what}; messages: "
                                     f"{self.messages[-3:]}, output: {bytes(self.out[-300:])!r}")
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; messages: "
                             f"{self.messages[-3:]}, output: {bytes(self.out[-300:])!r}")

    def message(self, kind: str, timeout: float = 20) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((m for m in self.messages if m["type"] == kind), None)

        msg: dict[str, Any] = self.until(found, timeout, f"a {kind!r} message")
        self.messages.remove(msg)
        return msg

    def output(self, needle: bytes, timeout: float = 20) -> None:
        self.until(lambda: needle in self.out, timeout, f"{needle!r} in the output")

    def line(self, text: bytes, timeout: float = 20) -> None:
        """``text`` as a whole line of output (what a command printed, not its echo;
        shells may put escapes such as bracketed-paste toggles before it)."""
        pattern = re.compile(rb"[\r\n]" + re.escape(text) + rb"\r\n")
        self.until(lambda: pattern.search(self.out), timeout, f"the line {text!r}")
