#!/bin/sh
# Thin out a folder full of small old files. The folder is resolved first and must
# stay inside the allowed roots, so a link cannot redirect the deletion.
set -u
folder="${BACKLINE_PARAM_FOLDER:-}"
hours="${BACKLINE_PARAM_AGE_HOURS:-72}"
case "$hours" in ""|*[!0-9]*) echo "refused: AGE_HOURS must be a whole number" >&2; exit 64 ;; esac
if [ "$hours" -lt 1 ] || [ "$hours" -gt 87600 ]; then echo "refused: AGE_HOURS is 1..87600" >&2; exit 64; fi
case "$folder" in /*) ;; *) echo "refused: FOLDER must be an absolute path" >&2; exit 64 ;; esac
if [ ! -e "$folder" ]; then echo "no such folder: $folder" >&2; exit 66; fi
real="$(realpath -e -- "$folder")" || { echo "cannot resolve $folder" >&2; exit 66; }
[ -d "$real" ] || { echo "not a folder: $folder" >&2; exit 66; }
allowed=no
for root in /tmp /var/tmp /var/cache /var/lib/php/sessions; do
    root_real="$(realpath -e "$root" 2>/dev/null)" || continue
    case "$real/" in "$root_real"/*) allowed=yes ;; esac
done
if [ "$allowed" != yes ]; then
    echo "refused: $folder resolves to $real, outside /tmp, /var/tmp, /var/cache, /var/lib/php/sessions" >&2
    exit 64
fi

minutes=$((hours * 60))
echo "inode use before:"
df -i -- "$real" | tail -n 1
echo "sub-folders of $real holding the most files:"
find "$real" -xdev -mindepth 1 -type f -printf '%h\n' 2>/dev/null | sort | uniq -c | sort -rn | head -n 10
count="$(find "$real" -xdev -mindepth 1 \( -type f -o -type l \) -mmin +"$minutes" -amin +"$minutes" -print 2>/dev/null | wc -l)"
echo "deleting $count files not modified for $hours hours"
status=0
find "$real" -xdev -mindepth 1 \( -type f -o -type l \) -mmin +"$minutes" -amin +"$minutes" -delete || status=1
echo "inode use after:"
df -i -- "$real" | tail -n 1
left="$(find "$real" -xdev -mindepth 1 \( -type f -o -type l \) -mmin +"$minutes" -amin +"$minutes" -print 2>/dev/null | head -n 1)"
if [ -n "$left" ]; then echo "could not delete every old file, e.g. $left" >&2; status=1; fi
exit "$status"
