#!/bin/sh
# Restart a named service through systemd, or a SysV init script when systemd is not
# the init system. The name is re-checked here (defence in depth) and always quoted.
set -u
service="${BACKLINE_PARAM_SERVICE:-}"
case "$service" in
    ""|-*|*[!A-Za-z0-9@._:-]*)
        echo "refused: SERVICE must be a unit or init script name" >&2; exit 64 ;;
esac
base="${service%.service}"
case "$base" in
    dbus|dbus-broker|systemd-logind|gdm|gdm3|sddm|lightdm|display-manager|systemd-journald|init)
        echo "refused: restarting $base ends every session or the logging; reboot instead" >&2
        exit 64 ;;
    backline-agent)
        echo "refused: use the restart-agent fix for the agent itself" >&2; exit 64 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    case "$service" in *.*) unit="$service" ;; *) unit="$service.service" ;; esac
    state="$(systemctl show -p LoadState --value -- "$unit" 2>/dev/null)"
    if [ "$state" != loaded ]; then
        echo "no such systemd unit: $unit (LoadState: ${state:-unknown})" >&2; exit 66
    fi
    echo "restarting $unit with systemd"
    if systemctl restart -- "$unit"; then
        systemctl --no-pager --lines=0 status -- "$unit" 2>/dev/null | head -n 5
        exit 0
    fi
    echo "systemctl restart $unit failed; its last log lines:" >&2
    journalctl --no-pager -n 20 -u "$unit" 2>/dev/null >&2
    exit 1
fi

script="/etc/init.d/$base"
if [ -f "$script" ] && [ -x "$script" ]; then
    echo "systemd is not the init system; restarting $base with $script"
    if "$script" restart; then exit 0; fi
    echo "$script restart failed" >&2
    exit 1
fi

init="$(cat /proc/1/comm 2>/dev/null || echo unknown)"
if [ -d /etc/init.d ] && [ ! -d /run/systemd/system ]; then
    echo "systemd is not the init system here (PID 1 is $init) and there is no init script $script" >&2
else
    echo "no service manager this fix can drive (PID 1 is $init)" >&2
fi
exit 69
