#!/bin/sh
# bcp38.sh COLLECTOR PORT: one unspoofed control packet; the spoofed ones are
# sent by the study's tool with the sources declared in the manifest.
echo "control $(date +%s)" | nc -u -w1 "$1" "$2"
exec /experiment/spoofer --collector "$1" --port "$2" 2>/dev/null || echo "spoofer tool not in this payload"
