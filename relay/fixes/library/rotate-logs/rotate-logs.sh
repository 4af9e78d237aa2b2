#!/bin/sh
# Run the system's logrotate configuration now.
set -u
force="${BACKLINE_PARAM_FORCE:-false}"
case "$force" in true|1|yes) force=true ;; false|0|no) force=false ;;
    *) echo "refused: FORCE must be true or false" >&2; exit 64 ;; esac
command -v logrotate >/dev/null 2>&1 || { echo "logrotate is not installed here" >&2; exit 69; }
conf=/etc/logrotate.conf
[ -f "$conf" ] || { echo "there is no $conf" >&2; exit 69; }
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
state=/var/lib/logrotate/status
[ -d /var/lib/logrotate ] || state=/var/lib/logrotate.status
echo "space used by /var/log before: $(du -sh /var/log 2>/dev/null | cut -f1)"
out="$(mktemp)" || { echo "cannot make a temporary file" >&2; exit 1; }
set -- -v -s "$state"
if [ "$force" = true ]; then set -- "$@" -f; fi
logrotate "$@" "$conf" > "$out" 2>&1
status=$?
grep -E '^(rotating|renaming|compressing|removing|error)' "$out" | head -n 200
rm -f "$out"
if [ "$status" -ne 0 ]; then echo "logrotate reported an error (exit $status)" >&2; exit 1; fi
echo "space used by /var/log after: $(du -sh /var/log 2>/dev/null | cut -f1)"
exit 0
