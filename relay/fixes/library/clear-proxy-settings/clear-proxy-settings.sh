#!/bin/sh
# Remove the proxy variables from /etc/environment (commenting out what we did not write).
set -u
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
target=/etc/environment
if [ ! -f "$target" ]; then echo "$target does not exist: no proxy set there"; exit 0; fi
begin='# BEGIN backline proxy (set-proxy fix; remove with clear-proxy-settings)'
end='# END backline proxy'
new="$(mktemp "$target.backline.XXXXXX")" || { echo "cannot write next to $target" >&2; exit 1; }
trap 'rm -f "$new"' EXIT
awk -v begin="$begin" -v end="$end" '
    $0 == begin {skip = 1; removed++; next}
    skip && $0 == end {skip = 0; next}
    skip {next}
    /^[[:space:]]*(export[[:space:]]+)?([Hh][Tt][Tt][Pp][Ss]?|[Nn][Oo]|[Ff][Tt][Pp]|[Aa][Ll][Ll])_[Pp][Rr][Oo][Xx][Yy][[:space:]]*=/ {
        print "# disabled by the backline clear-proxy-settings fix: " $0; disabled++; next }
    {print}
    END {printf "removed %d backline block(s), commented out %d other proxy line(s)\n", removed, disabled > "/dev/stderr"}' \
    "$target" > "$new" || exit 1
chmod --reference="$target" "$new" 2>/dev/null || chmod 644 "$new"
mv -f -- "$new" "$target" || { echo "could not replace $target" >&2; exit 1; }
trap - EXIT
echo "no proxy is set in $target any more; it applies to new logins"
exit 0
