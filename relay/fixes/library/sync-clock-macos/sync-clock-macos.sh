#!/bin/sh
# Step the macOS clock from an NTP server and keep network time on.
set -u
server="${BACKLINE_PARAM_SERVER:-time.apple.com}"
case "$server" in ""|-*|*[!A-Za-z0-9.:-]*) echo "refused: SERVER must be a host name or address" >&2; exit 64 ;; esac
command -v sntp >/dev/null 2>&1 || { echo "sntp not found: this is not macOS" >&2; exit 69; }
systemsetup -setusingnetworktime on >/dev/null 2>&1 || echo "could not turn network time on (systemsetup)" >&2
if sntp -sS "$server"; then echo "clock stepped from $server"; exit 0; fi
echo "sntp -sS $server failed" >&2
exit 1
