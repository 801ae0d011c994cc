#!/usr/bin/env bash
# fuzz-all.sh DURATION: runs every Fuzz* target in the module for DURATION each.
set -euo pipefail
dur=${1:-10s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/' | sort -u); do
    echo "fuzz $pkg $f ($dur)"
    go test -run '^$' -fuzz "^${f}\$" -fuzztime "$dur" "$pkg"
  done
done
