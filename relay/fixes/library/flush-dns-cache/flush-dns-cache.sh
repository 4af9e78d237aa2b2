#!/bin/sh
# Flush the DNS cache of whichever local caching resolver runs here.
# Parameters arrive as environment variables only and are always quoted.
set -u
resolver="${BACKLINE_PARAM_RESOLVER:-auto}"
case "$resolver" in
    auto|systemd-resolved|nscd|dnsmasq) ;;
    *) echo "refused: RESOLVER must be auto, systemd-resolved, nscd or dnsmasq" >&2; exit 64 ;;
esac

has() { command -v "$1" >/dev/null 2>&1; }

# pids whose command name is exactly $1 (no pattern matching: /proc/PID/comm compared)
pids_named() {
    for comm in /proc/[0-9]*/comm; do
        [ -r "$comm" ] || continue
        IFS= read -r name < "$comm" 2>/dev/null || continue
        if [ "$name" = "$1" ]; then
            pid="${comm#/proc/}"; echo "${pid%/comm}"
        fi
    done
}

resolved_runs() { [ -d /run/systemd/resolve ] && { has resolvectl || has systemd-resolve; }; }
nscd_runs() { has nscd && [ -n "$(pids_named nscd)" ]; }
dnsmasq_runs() { [ -n "$(pids_named dnsmasq)" ]; }

flushed=0
failed=0

if [ "$resolver" = auto ] || [ "$resolver" = systemd-resolved ]; then
    if resolved_runs; then
        if has resolvectl; then resolvectl flush-caches; else systemd-resolve --flush-caches; fi
        if [ $? -eq 0 ]; then echo "systemd-resolved: cache flushed"; flushed=$((flushed + 1))
        else echo "systemd-resolved: flush-caches failed" >&2; failed=1; fi
    elif [ "$resolver" = systemd-resolved ]; then
        echo "systemd-resolved does not run here (no /run/systemd/resolve or no resolvectl)" >&2
        exit 69
    fi
fi

if [ "$resolver" = auto ] || [ "$resolver" = nscd ]; then
    if nscd_runs; then
        if nscd -i hosts; then echo "nscd: hosts cache invalidated"; flushed=$((flushed + 1))
        else echo "nscd: nscd -i hosts failed" >&2; failed=1; fi
    elif [ "$resolver" = nscd ]; then
        echo "nscd does not run here" >&2
        exit 69
    fi
fi

if [ "$resolver" = auto ] || [ "$resolver" = dnsmasq ]; then
    if dnsmasq_runs; then
        for pid in $(pids_named dnsmasq); do
            # SIGHUP: dnsmasq clears its cache and re-reads /etc/hosts (dnsmasq(8))
            if kill -HUP "$pid"; then echo "dnsmasq (pid $pid): cache cleared (SIGHUP)"
                flushed=$((flushed + 1))
            else echo "dnsmasq (pid $pid): could not signal it" >&2; failed=1; fi
        done
    elif [ "$resolver" = dnsmasq ]; then
        echo "dnsmasq does not run here" >&2
        exit 69
    fi
fi

if [ "$failed" -ne 0 ]; then exit 1; fi
if [ "$flushed" -eq 0 ]; then
    echo "no DNS cache runs here (none of systemd-resolved, nscd, dnsmasq): the system" >&2
    echo "resolver keeps no cache, so there is nothing to flush" >&2
    exit 69
fi
exit 0
