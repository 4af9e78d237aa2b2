"""What the browser tests share: where Chromium is, a page watched for dialogs, CSP
violations and script errors (any of which fails the test), and the few steps every
test takes (sign in, navigate, screenshot, make a user)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.harness import RelayProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_PRESENT = Path(CHROMIUM).exists()
SKIP_REASON = ("BROWSER TESTS SKIPPED: Debian's chromium is not installed (scripts/test "
               "installs it when run as root)")
ARTIFACTS = Path(os.environ.get("BACKLINE_ARTIFACTS", Path(__file__).parent.parent / "artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-quic"]

if CHROMIUM_PRESENT:
    from playwright.sync_api import Page, expect

    # Generous: CI machines have two cores shared with a relay and agents.
    expect.set_options(timeout=15_000)


class Watched:
    """A page whose dialogs, CSP violations and uncaught errors are collected, to fail
    the test."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))

    def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"dialog {dialog.type}: {dialog.message}")
        dialog.dismiss()

    def _console(self, msg: Any) -> None:
        text = msg.text
        if "Content Security Policy" in text or "Content-Security-Policy" in text:
            at = msg.location or {}
            where = ":".join(str(at.get(k, "?")) for k in ("url", "lineNumber", "columnNumber"))
            self.problems.append(f"CSP violation: {text} (at {where})")

    def check(self) -> None:
        assert not self.problems, self.problems


def sign_in(page: Page, username: str, password: str, totp: str | None = None) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    if totp:
        page.get_by_label("Authenticator code").fill(totp)
    page.get_by_role("button", name="Sign in").click()


def nav(page: Page, name: str) -> None:
    """Follow the main navigation's link named exactly ``name`` ("Sessions" is not
    "Find sessions")."""
    page.get_by_role("navigation", name="Main").get_by_role("link", name=name,
                                                             exact=True).click()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def new_user(site: RelayProcess, username: str, role: str, password: str) -> None:
    site.cli("user", "create", username, "--role", role, "--password-stdin",
             input=password + "\n")
