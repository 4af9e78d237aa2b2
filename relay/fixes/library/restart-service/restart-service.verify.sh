#!/bin/sh
# Passes when the service is running after the restart.
set -u
service="${BACKLINE_PARAM_SERVICE:-}"
case "$service" in ""|-*|*[!A-Za-z0-9@._:-]*) echo "bad SERVICE"; exit 1 ;; esac
base="${service%.service}"
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    case "$service" in *.*) unit="$service" ;; *) unit="$service.service" ;; esac
    if systemctl is-active --quiet -- "$unit"; then echo "$unit is active"; exit 0; fi
    echo "$unit is $(systemctl is-active -- "$unit" 2>/dev/null)"
    exit 1
fi
script="/etc/init.d/$base"
if [ -f "$script" ] && [ -x "$script" ]; then
    if "$script" status >/dev/null 2>&1; then echo "$base is running"; exit 0; fi
    echo "$base is not running ($script status)"
    exit 1
fi
echo "no service manager to ask"
exit 1
