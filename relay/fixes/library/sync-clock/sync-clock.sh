#!/bin/sh
# Step the clock now with the time synchronisation in use.
set -u
server="${BACKLINE_PARAM_SERVER:-pool.ntp.org}"
case "$server" in ""|-*|*[!A-Za-z0-9.:-]*) echo "refused: SERVER must be a host name or address" >&2; exit 64 ;; esac
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
has() { command -v "$1" >/dev/null 2>&1; }
if has chronyc && chronyc -n tracking >/dev/null 2>&1; then
    echo "chrony runs: asking for a burst of measurements, then stepping the clock"
    chronyc -a 'burst 4/4' >/dev/null 2>&1
    chronyc -n waitsync 10 0.5 >/dev/null 2>&1
    if chronyc -a makestep; then chronyc -n tracking | sed -n '1,6p'; exit 0; fi
    echo "chronyc makestep failed" >&2; exit 1
fi
if [ -d /run/systemd/system ] && has timedatectl && has systemctl; then
    echo "systemd-timesyncd: turning NTP on and restarting the service"
    timedatectl set-ntp true || { echo "timedatectl set-ntp true failed" >&2; exit 1; }
    systemctl restart systemd-timesyncd.service || { echo "restart of systemd-timesyncd failed" >&2; exit 1; }
    i=0
    while [ "$i" -lt 30 ]; do
        [ "$(timedatectl show -p NTPSynchronized --value 2>/dev/null)" = yes ] && { timedatectl; exit 0; }
        sleep 2; i=$((i + 1))
    done
    echo "timesyncd did not report synchronisation within 60 s" >&2; exit 1
fi
if has ntpdate; then
    echo "stepping the clock with ntpdate from $server"
    ntpdate -b -u -- "$server" && exit 0
    echo "ntpdate failed" >&2; exit 1
fi
if has sntp; then
    echo "stepping the clock with sntp from $server"
    sntp -S -- "$server" && exit 0
    echo "sntp failed" >&2; exit 1
fi
echo "no time synchronisation here: chrony does not run, systemd is not the init system" >&2
echo "(PID 1 is $(cat /proc/1/comm 2>/dev/null || echo unknown)), and neither ntpdate nor sntp is installed" >&2
exit 69
