"""Fixtures of the browser tests: one Chromium per module (Debian's, never a
downloaded one), one relay per module, and a fresh browser context per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.helpers import CHROMIUM, CHROMIUM_ARGS, CHROMIUM_PRESENT, Watched
from tests.harness import RelayProcess, admin_api

if CHROMIUM_PRESENT:
    from playwright.sync_api import Browser, sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Playwright gives every launch a fresh, temporary --user-data-dir of its own.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def site(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay per test module; a module's ``RELAY_ENV`` (a dict) adds settings."""
    relay = RelayProcess(tmp_path_factory.mktemp("console"),
                         extra_env=getattr(request.module, "RELAY_ENV", None)).start()
    api = admin_api(relay)
    api.close()
    try:
        yield relay
    finally:
        relay.stop()


@pytest.fixture
def page(browser: Browser, site: RelayProcess) -> Iterator[Watched]:
    context = browser.new_context(ignore_https_errors=True, base_url=site.url,
                                  viewport={"width": 1440, "height": 900})
    watched = Watched(context.new_page())
    try:
        yield watched
    finally:
        context.close()
    watched.check()
