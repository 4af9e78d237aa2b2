#!/bin/sh
# The fix only reads: this passes when a log source naming the service can be read.
set -u
service="${BACKLINE_PARAM_SERVICE:-}"
case "$service" in ""|-*|*[!A-Za-z0-9@._:-]*) echo "bad SERVICE"; exit 1 ;; esac
case "$service" in *.*) unit="$service" ;; *) unit="$service.service" ;; esac
base="${service%.service}"
if command -v journalctl >/dev/null 2>&1 && \
        [ -n "$(journalctl --no-pager -q -n 1 -u "$unit" 2>/dev/null)" ]; then
    echo "the journal holds entries for $unit"; exit 0
fi
for file in /var/log/syslog /var/log/messages /var/log/daemon.log; do
    if [ -r "$file" ] && grep -q -F -w -- "$base" "$file"; then echo "$file names $base"; exit 0; fi
done
echo "no readable log names $base"
exit 1
