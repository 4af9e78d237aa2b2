#!/bin/sh
# Clean the package download cache of the package manager in use.
set -u
manager="${BACKLINE_PARAM_MANAGER:-auto}"
has() { command -v "$1" >/dev/null 2>&1; }
tool_of() {
    case "$1" in apt) echo apt-get ;; *) echo "$1" ;; esac
}
cache_of() {
    case "$1" in
        apt) echo /var/cache/apt ;; dnf) echo /var/cache/dnf ;; yum) echo /var/cache/yum ;;
        zypper) echo /var/cache/zypp ;; pacman) echo /var/cache/pacman/pkg ;; apk) echo /var/cache/apk ;;
    esac
}
case "$manager" in
    auto)
        manager=""
        for m in apt dnf yum zypper pacman apk; do
            if has "$(tool_of "$m")"; then manager="$m"; break; fi
        done
        if [ -z "$manager" ]; then echo "no known package manager (apt, dnf, yum, zypper, pacman, apk) here" >&2; exit 69; fi ;;
    apt|dnf|yum|zypper|pacman|apk)
        has "$(tool_of "$manager")" || { echo "$manager is not installed here" >&2; exit 69; } ;;
    *) echo "refused: MANAGER must be auto, apt, dnf, yum, zypper, pacman or apk" >&2; exit 64 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
    echo "needs root: this fix changes system state and runs as $(id -un 2>/dev/null || id -u)" >&2
    exit 77
fi
cache="$(cache_of "$manager")"
size() { du -sh -- "$cache" 2>/dev/null | cut -f1; }
echo "$manager cache $cache before: $(size)"
case "$manager" in
    apt) apt-get clean ;;
    dnf) dnf -y clean packages ;;
    yum) yum -y clean packages ;;
    zypper) zypper --non-interactive clean --all ;;
    pacman) pacman -Sc --noconfirm ;;
    apk) apk cache clean ;;
esac
status=$?
echo "$manager cache $cache after: $(size)"
if [ "$status" -ne 0 ]; then echo "$manager failed to clean its cache (exit $status)" >&2; exit 1; fi
exit 0
