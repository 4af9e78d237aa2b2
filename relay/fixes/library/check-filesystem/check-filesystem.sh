#!/bin/sh
# Report what a mounted file system records about its own health; changes nothing.
set -u
mp="${BACKLINE_PARAM_MOUNTPOINT:-/}"
case "$mp" in /*) ;; *) echo "refused: MOUNTPOINT must be an absolute path" >&2; exit 64 ;; esac
case "$mp" in *[!A-Za-z0-9/._-]*) echo "refused: MOUNTPOINT holds unexpected characters" >&2; exit 64 ;; esac
command -v findmnt >/dev/null 2>&1 || { echo "findmnt (util-linux) is not installed" >&2; exit 69; }
info="$(findmnt -n -r -o SOURCE,FSTYPE,OPTIONS --mountpoint "$mp" 2>/dev/null | tail -n 1)"
if [ -z "$info" ]; then echo "$mp is not a mount point" >&2; exit 66; fi
source="${info%% *}"; rest="${info#* }"; fstype="${rest%% *}"; options="${rest#* }"
echo "$mp: $source ($fstype), mounted $options"
status=0
case "$fstype" in
    ext2|ext3|ext4)
        if ! sb="$(tune2fs -l "$source" 2>&1)"; then
            echo "cannot read the superblock of $source: $sb" >&2; exit 1
        fi
        printf '%s\n' "$sb" | grep -E '^(Filesystem state|Errors behavior|FS Error count|First error|Last error|Last checked|Mount count|Maximum mount count|Last mount time):'
        state="$(printf '%s\n' "$sb" | sed -n 's/^Filesystem state: *//p')"
        if [ "$state" != clean ]; then echo "the file system records errors (state: $state)"; status=1; fi ;;
    btrfs)
        if command -v btrfs >/dev/null 2>&1; then
            stats="$(btrfs device stats -- "$mp" 2>&1)" || { echo "btrfs device stats failed: $stats" >&2; exit 1; }
            printf '%s\n' "$stats"
            if printf '%s\n' "$stats" | awk '$2 != 0 {bad = 1} END {exit bad ? 0 : 1}'; then
                echo "btrfs counts device errors"; status=1
            fi
        else
            echo "btrfs-progs is not installed: only the kernel log is checked"
        fi ;;
    *) echo "$fstype keeps no error state this fix reads: only the kernel log is checked" ;;
esac
dev="${source##*/}"
if [ -n "$dev" ] && command -v dmesg >/dev/null 2>&1; then
    # the lines since the device was last mounted (an old mount's errors were its own)
    lines="$(dmesg 2>/dev/null | awk -v dev="$dev" 'index($0, dev) {
            if ($0 ~ /mounted filesystem/) n = 0; else seen[n++] = $0 }
        END {for (i = 0; i < n; i++) print seen[i]}' \
        | grep -i -E 'error|remounting filesystem read-only|i/o' | tail -n 20)"
    if [ -n "$lines" ]; then
        echo "kernel log lines about $dev:"
        printf '%s\n' "$lines"
        status=1
    fi
fi
if [ "$status" -eq 0 ]; then echo "no error recorded for $mp"; fi
exit "$status"
