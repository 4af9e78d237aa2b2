#!/bin/sh
# The fix only reads: this passes when the folder could be listed.
set -u
folder="${BACKLINE_PARAM_FOLDER:-/}"
if [ -d "$folder" ] && [ -r "$folder" ] && [ -x "$folder" ]; then echo "$folder is readable"; exit 0; fi
echo "$folder cannot be listed"
exit 1
