#!/bin/sh
# Delete old files from an allowed temporary folder. The folder is resolved first so
# a symbolic link cannot point the deletion anywhere else.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/tmp}"
age="${BACKLINE_PARAM_AGE_DAYS:-7}"
case "$age" in ""|*[!0-9]*) echo "refused: AGE_DAYS must be a whole number" >&2; exit 64 ;; esac
if [ "$age" -lt 1 ] || [ "$age" -gt 3650 ]; then echo "refused: AGE_DAYS is 1..3650" >&2; exit 64; fi
case "$folder" in /*) ;; *) echo "refused: FOLDER must be an absolute path" >&2; exit 64 ;; esac
if [ ! -e "$folder" ]; then echo "no such folder: $folder" >&2; exit 66; fi
real="$(realpath -e -- "$folder")" || { echo "cannot resolve $folder" >&2; exit 66; }
if [ ! -d "$real" ]; then echo "not a folder: $folder" >&2; exit 66; fi
tmp_real="$(realpath -e /tmp)"
vartmp_real="$(realpath -e /var/tmp 2>/dev/null || echo /var/tmp)"
case "$real/" in
    "$tmp_real"/*|"$vartmp_real"/*) ;;
    *) echo "refused: $folder resolves to $real, which is not inside /tmp or /var/tmp" >&2; exit 64 ;;
esac

minutes=$((age * 1440))
# -mmin +N: modified more than N minutes ago. -xdev: this file system only.
select_old() {
    find "$real" -xdev -mindepth 1 \
        ! -path "$real/systemd-private-*" ! -path "$real/.*-unix" ! -path "$real/.*-unix/*" ! -name '.X*-lock' \
        \( -type f -o -type l \) -mmin +"$minutes" -amin +"$minutes" "$@"
}
summary="$(select_old -printf '%s\n' 2>/dev/null | awk '{n++; s+=$1} END {printf "%d %d", n, s}')"
count="${summary% *}"; bytes="${summary#* }"
echo "deleting $count files ($bytes bytes) older than $age days from $real"
status=0
select_old -delete || status=1
# then the folders left empty (deepest first, -delete implies -depth)
find "$real" -xdev -mindepth 1 -type d -empty \
    ! -path "$real/systemd-private-*" ! -name '.*-unix' -mmin +"$minutes" -delete 2>/dev/null
left="$(select_old -print 2>/dev/null | head -n 1)"
if [ -n "$left" ]; then
    echo "some old files could not be deleted, e.g. $left" >&2
    status=1
fi
df -h -- "$real" | tail -n 1
exit "$status"
