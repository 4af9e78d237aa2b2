"""The ``backline-relay`` command.

For ``serve``, the listening socket is bound before the relay itself is imported
(:mod:`backline.relay.net.listening` says why); every command then runs from
:mod:`backline.relay.cli`."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        from backline.relay.net import listening

        listening.prebind(sys.argv[2:])
    from backline.relay.cli import main as cli_main

    cli_main()
