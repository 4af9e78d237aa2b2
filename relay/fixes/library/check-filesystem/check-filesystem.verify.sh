#!/bin/sh
# Passes when the file system records no error (ext*: state clean) and the kernel log
# names no error for its device.
set -u
mp="${BACKLINE_PARAM_MOUNTPOINT:-/}"
case "$mp" in /*) ;; *) echo "bad MOUNTPOINT"; exit 1 ;; esac
info="$(findmnt -n -r -o SOURCE,FSTYPE --mountpoint "$mp" 2>/dev/null | tail -n 1)"
[ -n "$info" ] || { echo "$mp is not a mount point"; exit 1; }
source="${info%% *}"; fstype="${info#* }"
case "$fstype" in
    ext2|ext3|ext4)
        state="$(tune2fs -l "$source" 2>/dev/null | sed -n 's/^Filesystem state: *//p')"
        [ "$state" = clean ] || { echo "$mp: state ${state:-unreadable}"; exit 1; } ;;
esac
dev="${source##*/}"
if [ -n "$dev" ] && dmesg 2>/dev/null | awk -v dev="$dev" 'index($0, dev) {
        if ($0 ~ /mounted filesystem/) n = 0; else seen[n++] = $0 }
    END {for (i = 0; i < n; i++) print seen[i]}' \
        | grep -q -i -E 'error|remounting filesystem read-only|i/o'; then
    echo "the kernel log names errors for $dev"; exit 1
fi
echo "$mp records no error"
exit 0
