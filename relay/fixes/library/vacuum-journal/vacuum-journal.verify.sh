#!/bin/sh
# Passes when the archived journal files take at most MAX_SIZE_MB MiB (counted on
# disk, as journalctl counts them: allocated blocks).
set -u
size="${BACKLINE_PARAM_MAX_SIZE_MB:-500}"
case "$size" in ""|*[!0-9]*) echo "bad MAX_SIZE_MB"; exit 1 ;; esac
if [ ! -d /var/log/journal ] && [ ! -d /run/log/journal ]; then echo "no journal folder"; exit 1; fi
used="$(find /var/log/journal /run/log/journal \( -name '*@*.journal' -o -name '*.journal~' \) \
    -type f -printf '%b\n' 2>/dev/null | awk '{s+=$1*512} END {printf "%d", s}')"
limit=$((size * 1048576))
if [ "$used" -le "$limit" ]; then
    echo "archived journals use $used bytes, at most $limit"; exit 0
fi
echo "archived journals still use $used bytes, more than $limit"
exit 1
