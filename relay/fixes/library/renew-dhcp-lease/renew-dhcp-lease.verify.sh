#!/bin/sh
# Passes when the interface is up with a global IPv4 address.
set -u
iface="${BACKLINE_PARAM_INTERFACE:-}"
case "$iface" in ""|-*|.|..|*[!A-Za-z0-9_.-]*) echo "bad INTERFACE"; exit 1 ;; esac
[ -e "/sys/class/net/$iface" ] || { echo "no such interface: $iface"; exit 1; }
addr="$(ip -4 -o addr show dev "$iface" scope global 2>/dev/null | awk '{print $4; exit}')"
if [ -n "$addr" ]; then echo "$iface has $addr"; exit 0; fi
echo "$iface has no IPv4 address"
exit 1
