"""Exit statuses of the ``backline-agent`` command line (not of capability channels,
whose statuses are :class:`backline.common.capabilities.ChannelExit`)."""

EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_PIN = 4
#: The relay (or the customer) refused what the command asked.
EXIT_REFUSED = 5
EXIT_NOT_ENROLLED = 6
EXIT_NOT_RUNNING = 6
EXIT_DECLINED = 7
#: ``backline-agent fix run``: the fix ran and did not work (its exit status, its
#: timeout or its verify script said so).
EXIT_FIX_FAILED = 8
