#!/bin/sh
# Passes when no active line of /etc/environment sets a proxy variable.
set -u
target=/etc/environment
[ -f "$target" ] || { echo "$target does not exist: no proxy set"; exit 0; }
n="$(grep -cE '^[[:space:]]*(export[[:space:]]+)?[A-Za-z]+_[Pp][Rr][Oo][Xx][Yy][[:space:]]*=' "$target")"
if [ "$n" = 0 ]; then echo "no proxy variable in $target"; exit 0; fi
echo "$n proxy lines still active in $target"
exit 1
