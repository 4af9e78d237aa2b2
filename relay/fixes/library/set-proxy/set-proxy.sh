#!/bin/sh
# Write the proxy variables into /etc/environment as a marked block. The values are
# checked again here: they land in a file that shells and PAM read, so only the
# characters a URL or host list needs are allowed (no quote, $, backslash, space).
set -u
url="${BACKLINE_PARAM_PROXY_URL:-}"
no_proxy="${BACKLINE_PARAM_NO_PROXY:-localhost,127.0.0.1,::1}"
case "$url" in
    http://?*|https://?*) ;;
    *) echo "refused: PROXY_URL must be http://HOST[:PORT] or https://HOST[:PORT]" >&2; exit 64 ;;
esac
case "$url" in *[!A-Za-z0-9.:/-]*) echo "refused: PROXY_URL holds characters a proxy URL does not need" >&2; exit 64 ;; esac
case "$no_proxy" in ""|*[!A-Za-z0-9.*:/_,-]*) echo "refused: NO_PROXY holds unexpected characters" >&2; exit 64 ;; esac

if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
target=/etc/environment
begin='# BEGIN backline proxy (set-proxy fix; remove with clear-proxy-settings)'
end='# END backline proxy'
new="$(mktemp "$target.backline.XXXXXX")" || { echo "cannot write next to $target" >&2; exit 1; }
trap 'rm -f "$new"' EXIT
if [ -f "$target" ]; then
    awk -v begin="$begin" -v end="$end" '
        $0 == begin {skip = 1; next}
        skip && $0 == end {skip = 0; next}
        skip {next}
        /^[[:space:]]*(export[[:space:]]+)?([Hh][Tt][Tt][Pp][Ss]?|[Nn][Oo]|[Ff][Tt][Pp]|[Aa][Ll][Ll])_[Pp][Rr][Oo][Xx][Yy][[:space:]]*=/ {
            print "# disabled by the backline set-proxy fix: " $0; next }
        {print}' "$target" > "$new" || exit 1
    chmod --reference="$target" "$new" 2>/dev/null || chmod 644 "$new"
else
    chmod 644 "$new"
fi
{
    echo "$begin"
    for var in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY; do echo "$var=\"$url\""; done
    for var in no_proxy NO_PROXY; do echo "$var=\"$no_proxy\""; done
    echo "$end"
} >> "$new"
mv -f -- "$new" "$target" || { echo "could not replace $target" >&2; exit 1; }
trap - EXIT
echo "proxy $url set in $target (no_proxy: $no_proxy); it applies to new logins"
exit 0
