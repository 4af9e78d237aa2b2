#!/bin/sh
# Passes when no file older than AGE_HOURS is left in the folder; prints inode use.
set -u
folder="${BACKLINE_PARAM_FOLDER:-}"
hours="${BACKLINE_PARAM_AGE_HOURS:-72}"
case "$hours" in ""|*[!0-9]*) echo "bad AGE_HOURS"; exit 1 ;; esac
real="$(realpath -e -- "$folder" 2>/dev/null)" || { echo "no such folder: $folder"; exit 1; }
allowed=no
for root in /tmp /var/tmp /var/cache /var/lib/php/sessions; do
    root_real="$(realpath -e "$root" 2>/dev/null)" || continue
    case "$real/" in "$root_real"/*) allowed=yes ;; esac
done
[ "$allowed" = yes ] || { echo "$real is not an allowed folder"; exit 1; }
left="$(find "$real" -xdev -mindepth 1 \( -type f -o -type l \) -mmin +"$((hours * 60))" -amin +"$((hours * 60))" -print 2>/dev/null | head -n 1)"
df -i -- "$real" | tail -n 1
if [ -n "$left" ]; then echo "old files remain, e.g. $left"; exit 1; fi
echo "no file older than $hours hours left in $real"
exit 0
