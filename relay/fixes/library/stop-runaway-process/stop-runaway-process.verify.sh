#!/bin/sh
# Passes when no process named NAME runs (the verify script's own ancestors aside).
set -u
name="${BACKLINE_PARAM_NAME:-}"
case "$name" in ""|-*|*[!A-Za-z0-9._+-]*) echo "bad NAME"; exit 1 ;; esac
ancestors=" $$ "
pid=$$
while [ "$pid" -gt 1 ] 2>/dev/null; do
    pid="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$pid" ] || break
    ancestors="$ancestors$pid "
done
for comm in /proc/[0-9]*/comm; do
    IFS= read -r cname < "$comm" 2>/dev/null || continue
    [ "$cname" = "$name" ] || continue
    p="${comm#/proc/}"; p="${p%/comm}"
    case "$ancestors" in *" $p "*) continue ;; esac
    # a zombie has ended; only its parent can reap it
    state="$(awk '/^State:/ {print $2}' "/proc/$p/status" 2>/dev/null)"
    [ "$state" = Z ] && continue
    echo "$name still runs (pid $p)"; exit 1
done
echo "no process named $name runs"
exit 0
