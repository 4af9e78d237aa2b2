#!/bin/sh
# Restart a system launchd service by label.
set -u
label="${BACKLINE_PARAM_LABEL:-}"
case "$label" in ""|-*|*[!A-Za-z0-9._-]*) echo "refused: LABEL must be a launchd label" >&2; exit 64 ;; esac
case "$label" in
    com.apple.loginwindow|com.apple.WindowServer|com.apple.launchd*|com.apple.opendirectoryd|com.apple.securityd)
        echo "refused: $label is a core macOS service" >&2; exit 64 ;;
esac
command -v launchctl >/dev/null 2>&1 || { echo "launchctl not found: this is not macOS" >&2; exit 69; }
launchctl print "system/$label" >/dev/null 2>&1 || { echo "no such system service: $label" >&2; exit 66; }
if launchctl kickstart -k "system/$label"; then echo "$label restarted"; exit 0; fi
echo "launchctl kickstart -k system/$label failed" >&2
exit 1
