#!/bin/sh
# Passes when the clock is within a second of SERVER.
set -u
server="${BACKLINE_PARAM_SERVER:-time.apple.com}"
case "$server" in ""|-*|*[!A-Za-z0-9.:-]*) echo "bad SERVER"; exit 1 ;; esac
offset="$(sntp "$server" 2>/dev/null | awk '/^[+-][0-9]/ {print $1; exit}')"
[ -n "$offset" ] || { echo "no answer from $server"; exit 1; }
echo "$offset" | awk '{o = $1 + 0; if (o < 0) o = -o; exit (o < 1) ? 0 : 1}' && { echo "offset $offset s"; exit 0; }
echo "offset $offset s is a second or more"
exit 1
