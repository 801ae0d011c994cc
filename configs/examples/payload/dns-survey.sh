#!/bin/sh
# dns-survey.sh LIST: NS, A and AAAA of every name in LIST, one line each.
while read -r name; do
  [ -z "$name" ] && continue
  for t in NS A AAAA; do
    echo "$name $t $(dig +short "$name" "$t" | tr '\n' ' ')"
  done
done < "$1"
