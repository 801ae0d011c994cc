#!/bin/sh
# ping-survey.sh PREFIX...: one echo request to the first 254 addresses of each prefix.
for p in "$@"; do
  base=${p%/*}
  case $base in
  *:*) for i in $(seq 1 254); do ping -6 -c1 -W1 "${base%::*}::$(printf %x "$i")" >/dev/null 2>&1 && echo "up ${base%::*}::$(printf %x "$i")"; done ;;
  *) for i in $(seq 1 254); do ping -c1 -W1 "${base%.*}.$i" >/dev/null 2>&1 && echo "up ${base%.*}.$i"; done ;;
  esac
done
