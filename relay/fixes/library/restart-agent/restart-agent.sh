#!/bin/sh
# Queue a restart of the agent's own systemd unit and return at once: the restart
# stops the agent (and with it this run's reporting), so nothing may wait for it.
set -u
unit="${BACKLINE_PARAM_UNIT:-backline-agent.service}"
case "$unit" in
    backline-agent*.service) ;;
    *) echo "refused: UNIT must be the agent's unit, backline-agent*.service" >&2; exit 64 ;;
esac
case "$unit" in *[!A-Za-z0-9@._-]*) echo "refused: UNIT holds characters a unit name cannot" >&2; exit 64 ;; esac
if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
    echo "systemd is not the init system here (PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)):" >&2
    echo "restart the agent the way it was started" >&2
    exit 69
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
state="$(systemctl show -p LoadState --value -- "$unit" 2>/dev/null)"
if [ "$state" != loaded ]; then echo "no such unit: $unit (LoadState: ${state:-unknown})" >&2; exit 66; fi
echo "queueing a restart of $unit; the agent reconnects in a few seconds"
if systemctl --no-block restart -- "$unit"; then exit 0; fi
echo "systemctl refused to restart $unit" >&2
exit 1
