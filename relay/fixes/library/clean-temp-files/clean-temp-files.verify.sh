#!/bin/sh
# Passes when no file older than AGE_DAYS is left in the (resolved, allowed) folder.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/tmp}"
age="${BACKLINE_PARAM_AGE_DAYS:-7}"
case "$age" in ""|*[!0-9]*) echo "bad AGE_DAYS"; exit 1 ;; esac
real="$(realpath -e -- "$folder" 2>/dev/null)" || { echo "no such folder: $folder"; exit 1; }
case "$real/" in
    "$(realpath -e /tmp)"/*|"$(realpath -e /var/tmp 2>/dev/null || echo /var/tmp)"/*) ;;
    *) echo "$real is not an allowed folder"; exit 1 ;;
esac
left="$(find "$real" -xdev -mindepth 1 \
    ! -path "$real/systemd-private-*" ! -path "$real/.*-unix" ! -path "$real/.*-unix/*" ! -name '.X*-lock' \
    \( -type f -o -type l \) -mmin +"$((age * 1440))" -amin +"$((age * 1440))" -print 2>/dev/null | head -n 1)"
if [ -n "$left" ]; then echo "old files remain, e.g. $left"; exit 1; fi
echo "no file older than $age days left in $real"
exit 0
