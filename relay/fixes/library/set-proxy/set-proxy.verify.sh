#!/bin/sh
# Passes when /etc/environment holds exactly one Backline proxy block with the
# requested URL, and no other active line sets a proxy variable.
set -u
url="${BACKLINE_PARAM_PROXY_URL:-}"
target=/etc/environment
[ -f "$target" ] || { echo "$target is missing"; exit 1; }
blocks="$(grep -c '^# BEGIN backline proxy' "$target")"
[ "$blocks" = 1 ] || { echo "$blocks backline proxy blocks in $target"; exit 1; }
grep -qxF "https_proxy=\"$url\"" "$target" || { echo "https_proxy is not $url"; exit 1; }
grep -qxF "http_proxy=\"$url\"" "$target" || { echo "http_proxy is not $url"; exit 1; }
others="$(awk '/^# BEGIN backline proxy/ {s=1} s {if (/^# END backline proxy/) s=0; next}
    /^[[:space:]]*(export[[:space:]]+)?[A-Za-z]+_[Pp][Rr][Oo][Xx][Yy][[:space:]]*=/ {n++} END {print n+0}' "$target")"
[ "$others" = 0 ] || { echo "$others other proxy lines are active in $target"; exit 1; }
echo "proxy $url is set in $target"
exit 0
