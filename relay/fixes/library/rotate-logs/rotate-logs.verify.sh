#!/bin/sh
# Passes when logrotate recorded a run in the last ten minutes and a dry run of the
# configuration reports no error.
set -u
state=/var/lib/logrotate/status
[ -d /var/lib/logrotate ] || state=/var/lib/logrotate.status
if [ ! -f "$state" ] || [ -z "$(find "$state" -mmin -10 2>/dev/null)" ]; then
    echo "logrotate has not run in the last ten minutes ($state)"; exit 1
fi
if logrotate -d -s "$state" /etc/logrotate.conf 2>&1 | grep -q '^error'; then
    echo "logrotate -d reports errors:"; logrotate -d -s "$state" /etc/logrotate.conf 2>&1 | grep '^error' | head -n 5
    exit 1
fi
echo "logrotate ran; its configuration reports no error"
exit 0
