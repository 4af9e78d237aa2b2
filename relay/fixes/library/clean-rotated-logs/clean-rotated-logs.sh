#!/bin/sh
# Delete old rotated (numbered, dated or compressed) log files below /var/log.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/var/log}"
age="${BACKLINE_PARAM_AGE_DAYS:-14}"
case "$age" in ""|*[!0-9]*) echo "refused: AGE_DAYS must be a whole number" >&2; exit 64 ;; esac
if [ "$age" -lt 1 ] || [ "$age" -gt 3650 ]; then echo "refused: AGE_DAYS is 1..3650" >&2; exit 64; fi
case "$folder" in /*) ;; *) echo "refused: FOLDER must be an absolute path" >&2; exit 64 ;; esac
[ -e "$folder" ] || { echo "no such folder: $folder" >&2; exit 66; }
real="$(realpath -e -- "$folder")" || { echo "cannot resolve $folder" >&2; exit 66; }
[ -d "$real" ] || { echo "not a folder: $folder" >&2; exit 66; }
logs_real="$(realpath -e /var/log)" || { echo "there is no /var/log" >&2; exit 66; }
case "$real/" in
    "$logs_real"/*) ;;
    *) echo "refused: $folder resolves to $real, which is not inside /var/log" >&2; exit 64 ;;
esac
minutes=$((age * 1440))
rotated() {
    find "$real" -regextype posix-extended -xdev -type f -mmin +"$minutes" \( \
        -regex '.*\.[0-9]{1,2}(\.(gz|xz|bz2|zst))?' -o \
        -regex '.*-[0-9]{8}(\.(gz|xz|bz2|zst))?' -o \
        -name '*.old' -o -name '*.gz' -o -name '*.xz' -o -name '*.bz2' -o -name '*.zst' \) "$@"
}
summary="$(rotated -printf '%s\n' 2>/dev/null | awk '{n++; s+=$1} END {printf "%d %d", n, s}')"
echo "deleting ${summary% *} rotated log files (${summary#* } bytes) older than $age days from $real"
status=0
rotated -delete || status=1
left="$(rotated -print 2>/dev/null | head -n 1)"
[ -z "$left" ] || { echo "could not delete every old rotated file, e.g. $left" >&2; status=1; }
df -h -- "$real" | tail -n 1
exit "$status"
