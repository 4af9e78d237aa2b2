#!/bin/sh
# Report the largest files and sub-folders below a folder; changes nothing.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/}"
count="${BACKLINE_PARAM_COUNT:-20}"
min_mb="${BACKLINE_PARAM_MIN_SIZE_MB:-100}"
case "$folder" in /*) ;; *) echo "refused: FOLDER must be an absolute path" >&2; exit 64 ;; esac
case "$count$min_mb" in *[!0-9]*) echo "refused: COUNT and MIN_SIZE_MB are whole numbers" >&2; exit 64 ;; esac
[ -d "$folder" ] || { echo "no such folder: $folder" >&2; exit 66; }
echo "file system of $folder:"
df -h -- "$folder" | tail -n 1
echo
echo "largest sub-folders of $folder (MiB):"
du -x -m -d 1 -- "$folder" 2>/dev/null | sort -rn | head -n 15
echo
echo "the $count largest files of at least $min_mb MiB (MiB, modified, path):"
# -size +Nc: more than N bytes, so at least MIN_SIZE_MB MiB is more than MIN*1MiB-1
bytes=$((min_mb * 1048576 - 1)); [ "$bytes" -ge 0 ] || bytes=0
find "$folder" -xdev -type f -size +"$bytes"c -printf '%s\t%TY-%Tm-%Td\t%p\n' 2>/dev/null \
    | sort -rn | head -n "$count" | awk -F '\t' '{printf "%10.1f  %s  %s\n", $1 / 1048576, $2, $3}'
exit 0
