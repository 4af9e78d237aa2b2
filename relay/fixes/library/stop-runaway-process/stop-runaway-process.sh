#!/bin/sh
# Stop the processes whose command name is exactly NAME. /proc/PID/comm is compared
# as a string: no pgrep pattern, so "." or ".*" can never match other processes.
set -u
name="${BACKLINE_PARAM_NAME:-}"
sig="${BACKLINE_PARAM_SIGNAL:-TERM}"
grace="${BACKLINE_PARAM_GRACE_S:-10}"
force="${BACKLINE_PARAM_FORCE:-true}"
case "$name" in ""|-*|*[!A-Za-z0-9._+-]*) echo "refused: NAME must be a process name" >&2; exit 64 ;; esac
case "$sig" in TERM|INT|HUP|KILL) ;; *) echo "refused: SIGNAL must be TERM, INT, HUP or KILL" >&2; exit 64 ;; esac
case "$grace" in ""|*[!0-9]*) echo "refused: GRACE_S must be a whole number" >&2; exit 64 ;; esac
case "$force" in true|1|yes) force=true ;; false|0|no) force=false ;;
    *) echo "refused: FORCE must be true or false" >&2; exit 64 ;; esac
case "$name" in
    init|systemd|sh|bash|dash|zsh|ksh|fish|login|agetty|getty|sshd|su|sudo|dbus-daemon|dbus-broker|\
    systemd-logind|systemd-journal|systemd-udevd|Xorg|Xwayland|gnome-shell|kthreadd|backline-agent)
        echo "refused: $name is a system component; stopping it could take the machine or the support session down" >&2
        exit 64 ;;
esac

# the fix's own ancestors (the agent among them) are never signalled
ancestors=" $$ "
pid=$$
while [ "$pid" -gt 1 ] 2>/dev/null; do
    pid="$(awk '/^PPid:/ {print $2}' "/proc/$pid/status" 2>/dev/null)"
    [ -n "$pid" ] || break
    ancestors="$ancestors$pid "
done

matching() {
    for comm in /proc/[0-9]*/comm; do
        IFS= read -r cname < "$comm" 2>/dev/null || continue
        [ "$cname" = "$name" ] || continue
        p="${comm#/proc/}"; p="${p%/comm}"
        [ "$p" = 1 ] && continue
        case "$ancestors" in *" $p "*) continue ;; esac
        # a zombie has already ended: only its parent can reap it
        [ "$(awk '/^State:/ {print $2}' "/proc/$p/status" 2>/dev/null)" = Z ] && continue
        echo "$p"
    done
}

pids="$(matching)"
if [ -z "$pids" ]; then echo "no process named $name runs" >&2; exit 66; fi
echo "sending SIG$sig to $name: $(echo $pids)"
for p in $pids; do kill -s "$sig" "$p" 2>/dev/null || echo "could not signal $p" >&2; done
waited=0
while [ -n "$(matching)" ] && [ "$waited" -lt "$grace" ]; do sleep 1; waited=$((waited + 1)); done
left="$(matching)"
if [ -n "$left" ] && [ "$force" = true ] && [ "$sig" != KILL ]; then
    echo "still running after ${grace} s, sending SIGKILL: $(echo $left)"
    for p in $left; do kill -s KILL "$p" 2>/dev/null; done
    sleep 1
    left="$(matching)"
fi
if [ -n "$left" ]; then echo "still running: $(echo $left)" >&2; exit 1; fi
echo "no process named $name is left"
exit 0
