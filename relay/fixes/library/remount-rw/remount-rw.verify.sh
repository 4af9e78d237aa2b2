#!/bin/sh
# Passes when the mount point is mounted read-write.
set -u
mp="${BACKLINE_PARAM_MOUNTPOINT:-/}"
case "$mp" in /*) ;; *) echo "bad MOUNTPOINT"; exit 1 ;; esac
options="$(findmnt -n -r -o OPTIONS --mountpoint "$mp" 2>/dev/null | tail -n 1)"
[ -n "$options" ] || { echo "$mp is not a mount point"; exit 1; }
case ",$options," in *,rw,*) echo "$mp is read-write"; exit 0 ;; esac
echo "$mp is still read-only ($options)"
exit 1
