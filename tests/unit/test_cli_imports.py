"""The relay's command line starts light: ``audit export`` and the other small commands
are run by operators' cron jobs and ~140 times by the test suite, and importing the
whole relay (sessions, capabilities, the SSH library) cost each call about 0.2 s of CPU
more. Commands that need the relay import it themselves."""

from __future__ import annotations

import json
import subprocess
import sys


def test_importing_the_cli_loads_neither_the_relay_nor_asyncssh() -> None:
    code = ("import json, sys, backline.relay.cli; print(json.dumps(sorted(m for m in "
            "sys.modules if m.split('.')[0] in ('asyncssh', 'starlette') or m == "
            "'backline.relay.state')))")
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], check=True,
                                       capture_output=True, text=True).stdout)
    assert loaded == [], loaded
