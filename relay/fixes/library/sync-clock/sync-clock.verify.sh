#!/bin/sh
# Passes when the time synchronisation in use reports a synchronised clock.
set -u
server="${BACKLINE_PARAM_SERVER:-pool.ntp.org}"
case "$server" in ""|-*|*[!A-Za-z0-9.:-]*) echo "bad SERVER"; exit 1 ;; esac
has() { command -v "$1" >/dev/null 2>&1; }
if has chronyc && chronyc -n tracking >/dev/null 2>&1; then
    leap="$(chronyc -n tracking | sed -n 's/^Leap status *: *//p')"
    [ "$leap" = Normal ] && { echo "chrony: synchronised"; exit 0; }
    echo "chrony: leap status ${leap:-unknown}"; exit 1
fi
if [ -d /run/systemd/system ] && has timedatectl; then
    [ "$(timedatectl show -p NTPSynchronized --value 2>/dev/null)" = yes ] && { echo "timesyncd: synchronised"; exit 0; }
    echo "timesyncd: not synchronised"; exit 1
fi
if has ntpdate; then
    ntpdate -q -u -- "$server" 2>/dev/null | awk '/offset/ {o=$(NF-1); if (o < 0) o = -o; if (o < 1) ok=1} END {exit ok ? 0 : 1}' \
        && { echo "offset to $server under 1 s"; exit 0; }
    echo "offset to $server is 1 s or more (or no answer)"; exit 1
fi
echo "no time synchronisation tool to ask"
exit 1
