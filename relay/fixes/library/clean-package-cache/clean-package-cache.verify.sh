#!/bin/sh
# Passes when no downloaded package file is left in the package manager's cache.
set -u
manager="${BACKLINE_PARAM_MANAGER:-auto}"
has() { command -v "$1" >/dev/null 2>&1; }
if [ "$manager" = auto ]; then
    manager=""
    for m in apt-get dnf yum zypper pacman apk; do
        if has "$m"; then manager="$m"; break; fi
    done
fi
case "$manager" in
    apt|apt-get) left="$(find /var/cache/apt/archives -name '*.deb' -type f -print 2>/dev/null | head -n 1)" ;;
    dnf) left="$(find /var/cache/dnf -name '*.rpm' -type f -print 2>/dev/null | head -n 1)" ;;
    yum) left="$(find /var/cache/yum -name '*.rpm' -type f -print 2>/dev/null | head -n 1)" ;;
    zypper) left="$(find /var/cache/zypp/packages -name '*.rpm' -type f -print 2>/dev/null | head -n 1)" ;;
    pacman) left="" ;;  # -Sc keeps the installed versions on purpose
    apk) left="" ;;
    *) echo "no package manager"; exit 1 ;;
esac
if [ -n "$left" ]; then echo "package files remain, e.g. $left"; exit 1; fi
echo "no downloaded package files left ($manager)"
exit 0
