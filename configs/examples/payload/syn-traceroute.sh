#!/bin/sh
# syn-traceroute.sh PORTS: TCP SYN traceroute (tcptraceroute-style, SYN only) to each target on stdin.
ports=${1:-80}
while read -r target; do
  for port in $(echo "$ports" | tr ',' ' '); do
    traceroute -T -p "$port" -q 1 -w 1 "$target"
  done
done
