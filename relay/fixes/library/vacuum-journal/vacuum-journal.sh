#!/bin/sh
# Vacuum the archived systemd journal files down to a size.
set -u
size="${BACKLINE_PARAM_MAX_SIZE_MB:-500}"
case "$size" in ""|*[!0-9]*) echo "refused: MAX_SIZE_MB must be a whole number" >&2; exit 64 ;; esac
if [ "$size" -lt 1 ] || [ "$size" -gt 1048576 ]; then echo "refused: MAX_SIZE_MB is 1..1048576" >&2; exit 64; fi
if ! command -v journalctl >/dev/null 2>&1; then
    echo "journalctl is not installed: this machine keeps no systemd journal" >&2; exit 69
fi
if [ ! -d /var/log/journal ] && [ ! -d /run/log/journal ]; then
    echo "no journal folder (/var/log/journal, /run/log/journal): journald never ran here" >&2; exit 69
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
archived() {
    find /var/log/journal /run/log/journal \( -name '*@*.journal' -o -name '*.journal~' \) \
        -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {printf "%d", s/1048576}'
}
echo "archived journals before: $(archived) MiB; keeping at most $size MiB"
if ! journalctl --vacuum-size="${size}M"; then
    echo "journalctl --vacuum-size failed" >&2; exit 1
fi
echo "archived journals after: $(archived) MiB"
exit 0
