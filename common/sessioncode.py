"""Attended-session codes: nine digits a technician can read out over the phone.

Shown as ``123-456-789``; people may type them with spaces, dashes or neither.
Nine digits are a billion possibilities: with single use, a ten-minute life and
failures rate-limited per address and across the relay, guessing one is hopeless.
"""

from __future__ import annotations

import secrets

DIGITS = 9


class BadCode(ValueError):
    """Text that cannot be a session code."""


def generate() -> str:
    """A fresh code, as its nine digits."""
    return f"{secrets.randbelow(10**DIGITS):0{DIGITS}d}"


def parse(text: str) -> str:
    """The nine digits of ``123-456-789`` (spaces and dashes ignored)."""
    digits = "".join(ch for ch in text.strip() if ch not in " -")
    if len(digits) != DIGITS or not digits.isascii() or not digits.isdigit():
        raise BadCode("a session code is nine digits, like 123-456-789")
    return digits


def display(digits: str) -> str:
    return "-".join(digits[i: i + 3] for i in range(0, DIGITS, 3))
