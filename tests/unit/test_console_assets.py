"""The relay finds the console's built assets as package data, and says plainly when
there are none (the wheel test, tests/integration/test_wheel.py, serves them from an
installed wheel)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from starlette.requests import Request

from backline.relay import console_assets
from backline.relay.app import console_index

CHECKOUT_DIST = Path(__file__).resolve().parents[2] / "console" / "dist"


def test_the_console_is_found_as_package_data() -> None:
    assert (CHECKOUT_DIST / "index.html").is_file(), "console/dist is not built: scripts/setup"
    assert console_assets.find() == CHECKOUT_DIST  # the editable install maps it here


def test_no_assets_is_none_not_an_error() -> None:
    assert console_assets.find("backline.common") is None  # a package with no dist/
    assert console_assets.find("backline_no_such_package") is None


def test_without_assets_the_page_says_what_is_missing_and_how_to_build_it() -> None:
    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []})
    answer = asyncio.run(console_index(None)(request))
    text = bytes(answer.body).decode()
    assert answer.status_code == 503
    assert "assets are missing" in text and "scripts/setup" in text
    assert answer.headers["content-type"].startswith("text/html")
