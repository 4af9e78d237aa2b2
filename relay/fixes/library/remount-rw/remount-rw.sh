#!/bin/sh
# Remount one mount point read-write, after checking it is a mount point whose file
# system can be written at all.
set -u
mp="${BACKLINE_PARAM_MOUNTPOINT:-/}"
case "$mp" in /*) ;; *) echo "refused: MOUNTPOINT must be an absolute path" >&2; exit 64 ;; esac
case "$mp" in *[!A-Za-z0-9/._-]*) echo "refused: MOUNTPOINT holds unexpected characters" >&2; exit 64 ;; esac
command -v findmnt >/dev/null 2>&1 || { echo "findmnt (util-linux) is not installed" >&2; exit 69; }
info="$(findmnt -n -r -o FSTYPE,OPTIONS --mountpoint "$mp" 2>/dev/null | tail -n 1)"
if [ -z "$info" ]; then echo "$mp is not a mount point" >&2; exit 66; fi
fstype="${info%% *}"; options="${info#* }"
case "$fstype" in
    proc|sysfs|cgroup|cgroup2|devpts|securityfs|pstore|bpf|tracefs|debugfs|configfs|fusectl|\
    mqueue|hugetlbfs|binfmt_misc|autofs|efivarfs|squashfs|iso9660|erofs|udf|nsfs|rpc_pipefs)
        echo "refused: $mp is $fstype, which is not made to be remounted read-write" >&2; exit 64 ;;
esac
case ",$options," in
    *,rw,*) echo "$mp ($fstype) is already read-write"; exit 0 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
if [ -r /dev/kmsg ] && command -v dmesg >/dev/null 2>&1; then
    dmesg 2>/dev/null | grep -i 'remounting filesystem read-only' | tail -n 3 | sed 's/^/kernel: /'
fi
echo "remounting $mp ($fstype) read-write"
if mount -o remount,rw -- "$mp"; then
    findmnt -n -o TARGET,SOURCE,FSTYPE,OPTIONS --mountpoint "$mp" | tail -n 1
    exit 0
fi
echo "mount -o remount,rw $mp failed" >&2
exit 1
