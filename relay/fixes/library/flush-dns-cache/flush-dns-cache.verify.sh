#!/bin/sh
# Passes when the flushed cache(s) still run and a lookup through the system
# resolver answers (a flush that took the resolver down is a failure).
set -u
resolver="${BACKLINE_PARAM_RESOLVER:-auto}"
has() { command -v "$1" >/dev/null 2>&1; }
pids_named() {
    for comm in /proc/[0-9]*/comm; do
        [ -r "$comm" ] || continue
        IFS= read -r name < "$comm" 2>/dev/null || continue
        if [ "$name" = "$1" ]; then pid="${comm#/proc/}"; echo "${pid%/comm}"; fi
    done
}
found=0
case "$resolver" in
    auto|systemd-resolved)
        if [ -d /run/systemd/resolve ] && has resolvectl; then
            resolvectl status >/dev/null 2>&1 || { echo "systemd-resolved does not answer"; exit 1; }
            found=1
        fi ;;
esac
case "$resolver" in
    auto|nscd) if [ -n "$(pids_named nscd)" ]; then found=1; fi ;;
esac
case "$resolver" in
    auto|dnsmasq) if [ -n "$(pids_named dnsmasq)" ]; then found=1; fi ;;
esac
if [ "$found" -eq 0 ]; then
    echo "no DNS cache runs here"
    exit 1
fi
if getent hosts localhost >/dev/null 2>&1; then
    echo "resolver cache running, lookups answer"
    exit 0
fi
echo "the resolver does not answer a lookup of localhost"
exit 1
