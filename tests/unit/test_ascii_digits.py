"""Numbers typed by people or sent by peers are ASCII digits: ``\\d`` and
``str.isdigit`` also accept "٣" (Arabic-Indic three, which ``int`` reads as 3) and
"²" (which ``int`` refuses with a traceback)."""

from __future__ import annotations

import pytest
import typer

from backline.agent.diagnostics.config import ConfigError, parse_endpoint
from backline.relay.cli import parse_since
from backline.relay.tokens import parse_ttl

NOT_ASCII = ["٣d", "²h", "\uff11m", "٣"]


def test_ttl_takes_ascii_digits_only() -> None:
    assert parse_ttl("3d") == 3 * 86400
    for text in NOT_ASCII:
        with pytest.raises(ValueError, match="30m, 1h or 7d"):
            parse_ttl(text)


@pytest.mark.parametrize("port", ["٣", "²", "\uff14\uff14\uff13"])
def test_endpoint_port_takes_ascii_digits_only(port: str) -> None:
    assert parse_endpoint("example.net:443").port == 443
    with pytest.raises(ConfigError, match="expected host:port"):
        parse_endpoint(f"example.net:{port}")


def test_since_takes_ascii_digits_only() -> None:
    assert parse_since("1700000000") == 1700000000.0
    for text in NOT_ASCII:
        with pytest.raises(typer.BadParameter):
            parse_since(text)
