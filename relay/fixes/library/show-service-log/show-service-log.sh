#!/bin/sh
# Print a service's last log lines: the journal when it has them, else syslog files.
set -u
service="${BACKLINE_PARAM_SERVICE:-}"
lines="${BACKLINE_PARAM_LINES:-100}"
case "$service" in ""|-*|*[!A-Za-z0-9@._:-]*) echo "refused: SERVICE must be a unit or service name" >&2; exit 64 ;; esac
case "$lines" in ""|*[!0-9]*) echo "refused: LINES must be a whole number" >&2; exit 64 ;; esac
if [ "$lines" -lt 1 ] || [ "$lines" -gt 2000 ]; then echo "refused: LINES is 1..2000" >&2; exit 64; fi
case "$service" in *.*) unit="$service" ;; *) unit="$service.service" ;; esac
base="${service%.service}"
found=no
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl --no-pager status -- "$unit" 2>/dev/null | head -n 12 && echo
fi
if command -v journalctl >/dev/null 2>&1; then
    out="$(journalctl --no-pager -q -o short-iso -n "$lines" -u "$unit" 2>/dev/null)"
    if [ -n "$out" ]; then
        echo "journal of $unit, last $lines lines:"
        printf '%s\n' "$out"
        found=yes
    fi
fi
if [ "$found" = no ]; then
    for file in /var/log/syslog /var/log/messages /var/log/daemon.log; do
        [ -f "$file" ] && [ -r "$file" ] || continue
        out="$(grep -F -w -- "$base" "$file" | tail -n "$lines")"
        if [ -n "$out" ]; then
            echo "$file, last $lines lines naming $base:"
            printf '%s\n' "$out"
            found=yes
        fi
    done
fi
if [ "$found" = no ]; then
    echo "no log line for $base: not in the journal, not in /var/log/syslog, messages or daemon.log" >&2
    exit 66
fi
exit 0
