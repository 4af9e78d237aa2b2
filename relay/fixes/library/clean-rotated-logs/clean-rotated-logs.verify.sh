#!/bin/sh
# Passes when no rotated log file older than AGE_DAYS is left in the folder.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/var/log}"
age="${BACKLINE_PARAM_AGE_DAYS:-14}"
case "$age" in ""|*[!0-9]*) echo "bad AGE_DAYS"; exit 1 ;; esac
real="$(realpath -e -- "$folder" 2>/dev/null)" || { echo "no such folder: $folder"; exit 1; }
case "$real/" in "$(realpath -e /var/log)"/*) ;; *) echo "$real is not inside /var/log"; exit 1 ;; esac
left="$(find "$real" -regextype posix-extended -xdev -type f -mmin +"$((age * 1440))" \( \
    -regex '.*\.[0-9]{1,2}(\.(gz|xz|bz2|zst))?' -o \
    -regex '.*-[0-9]{8}(\.(gz|xz|bz2|zst))?' -o \
    -name '*.old' -o -name '*.gz' -o -name '*.xz' -o -name '*.bz2' -o -name '*.zst' \) \
    -print 2>/dev/null | head -n 1)"
if [ -n "$left" ]; then echo "old rotated files remain, e.g. $left"; exit 1; fi
echo "no rotated log file older than $age days in $real"
exit 0
