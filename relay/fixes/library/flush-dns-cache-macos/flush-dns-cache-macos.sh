#!/bin/sh
# Flush the macOS DNS caches.
set -u
command -v dscacheutil >/dev/null 2>&1 || { echo "dscacheutil not found: this is not macOS" >&2; exit 69; }
dscacheutil -flushcache || { echo "dscacheutil -flushcache failed" >&2; exit 1; }
killall -HUP mDNSResponder || { echo "could not signal mDNSResponder" >&2; exit 1; }
echo "DNS caches flushed"
exit 0
