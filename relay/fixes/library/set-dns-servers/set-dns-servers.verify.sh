#!/bin/sh
# Passes when the resolver configuration names exactly SERVERS, in order.
set -u
# SERVERS is split into words on purpose (after its characters are checked): no globbing
set -f
servers="${BACKLINE_PARAM_SERVERS:-}"
case "$servers" in ""|*[!0-9A-Fa-f.:\ ]*) echo "bad SERVERS"; exit 1 ;; esac
dropin=/etc/systemd/resolved.conf.d/50-backline-dns.conf
case "$(readlink -- /etc/resolv.conf 2>/dev/null || true)" in
    */run/systemd/resolve/*|*/lib/systemd/resolv.conf)
        grep -qxF "DNS=$servers" "$dropin" 2>/dev/null && { echo "resolved is configured with $servers"; exit 0; }
        echo "$dropin does not name $servers"; exit 1 ;;
esac
have="$(awk '$1 == "nameserver" {printf "%s%s", sep, $2; sep = " "}' /etc/resolv.conf 2>/dev/null)"
want="$(echo $servers)"
if [ "$have" = "$want" ]; then echo "nameservers: $have"; exit 0; fi
echo "nameservers are '$have', not '$want'"
exit 1
