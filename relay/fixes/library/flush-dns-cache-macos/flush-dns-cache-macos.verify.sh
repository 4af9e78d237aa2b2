#!/bin/sh
# Passes when mDNSResponder runs and resolves localhost.
set -u
pgrep -x mDNSResponder >/dev/null 2>&1 || { echo "mDNSResponder does not run"; exit 1; }
dscacheutil -q host -a name localhost | grep -q 'ip_address' || { echo "localhost does not resolve"; exit 1; }
echo "mDNSResponder runs and answers"
exit 0
