#!/bin/sh
# Renew the DHCP lease of one interface with the DHCP client in use.
set -u
iface="${BACKLINE_PARAM_INTERFACE:-}"
case "$iface" in ""|-*|.|..|*[!A-Za-z0-9_.-]*) echo "refused: INTERFACE must be an interface name" >&2; exit 64 ;; esac
if [ ! -e "/sys/class/net/$iface" ]; then
    echo "no such network interface: $iface (have: $(ls /sys/class/net | tr '\n' ' '))" >&2; exit 66
fi
if [ "$iface" = lo ] || [ "$(cat "/sys/class/net/$iface/type" 2>/dev/null)" = 772 ]; then
    echo "refused: $iface is the loopback interface, it has no DHCP lease" >&2; exit 64
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
has() { command -v "$1" >/dev/null 2>&1; }
runs() {
    for comm in /proc/[0-9]*/comm; do
        IFS= read -r cname < "$comm" 2>/dev/null || continue
        [ "$cname" = "$1" ] && return 0
    done
    return 1
}
if has nmcli && runs NetworkManager; then
    echo "NetworkManager: reapplying the connection of $iface"
    nmcli device reapply "$iface" && exit 0
    nmcli device connect "$iface" && exit 0
    echo "nmcli could not renew $iface" >&2; exit 1
fi
if has networkctl && runs systemd-network; then
    echo "systemd-networkd: renewing $iface"
    networkctl renew "$iface" && exit 0
    echo "networkctl renew $iface failed" >&2; exit 1
fi
if has dhcpcd && runs dhcpcd; then
    echo "dhcpcd: rebinding $iface"
    dhcpcd -n "$iface" && exit 0
    echo "dhcpcd -n $iface failed" >&2; exit 1
fi
if has dhclient; then
    # Release and request run in a session of their own: a cancel, or the support
    # session dropping when the lease is released, ends this script's session, and
    # must not leave the interface between the two without any lease.
    echo "dhclient: releasing and requesting a lease on $iface"
    setsid sh -c 'dhclient -r "$1" 2>/dev/null; exec dhclient -1 "$1"' sh "$iface" \
        </dev/null &
    if wait "$!"; then exit 0; fi
    echo "dhclient could not get a lease on $iface" >&2; exit 1
fi
if has udhcpc; then
    echo "udhcpc: requesting a lease on $iface"
    udhcpc -i "$iface" -n -q && exit 0
    echo "udhcpc could not get a lease on $iface" >&2; exit 1
fi
echo "no DHCP client here: none of NetworkManager, systemd-networkd, dhcpcd runs and" >&2
echo "neither dhclient nor udhcpc is installed ($iface is configured some other way)" >&2
exit 69
