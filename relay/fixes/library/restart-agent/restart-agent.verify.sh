#!/bin/sh
# Passes when the agent's unit is active again (waits up to 25 s for the restart).
set -u
unit="${BACKLINE_PARAM_UNIT:-backline-agent.service}"
case "$unit" in backline-agent*.service) ;; *) echo "bad UNIT"; exit 1 ;; esac
case "$unit" in *[!A-Za-z0-9@._-]*) echo "bad UNIT"; exit 1 ;; esac
if [ ! -d /run/systemd/system ]; then echo "systemd is not the init system here"; exit 1; fi
i=0
while [ "$i" -lt 25 ]; do
    if systemctl is-active --quiet -- "$unit"; then echo "$unit is active"; exit 0; fi
    sleep 1; i=$((i + 1))
done
echo "$unit is not active: $(systemctl is-active -- "$unit" 2>/dev/null)"
exit 1
