#!/bin/sh
# Passes when launchd reports the service running.
set -u
label="${BACKLINE_PARAM_LABEL:-}"
case "$label" in ""|-*|*[!A-Za-z0-9._-]*) echo "bad LABEL"; exit 1 ;; esac
if launchctl print "system/$label" 2>/dev/null | grep -q 'state = running'; then echo "$label is running"; exit 0; fi
echo "$label is not running"
exit 1
