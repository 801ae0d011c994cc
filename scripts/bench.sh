#!/usr/bin/env bash
# bench.sh NAME PKG TESTNAME: runs one benchmark test (skipped in `make test`)
# and prints its result line last, so `make bench-NAME | tail -1` is the figure.
set -euo pipefail
name=$1 pkg=$2 test=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
ARKGW_BENCH=1 go test -count=1 -timeout 30m -run "^${test}\$" -v "$pkg" 2>&1 | tee "$out"
line=$(grep -E "^bench-${name} " "$out" | tail -1 || true)
if [ -z "$line" ]; then echo "bench-${name}: no result line printed" >&2; exit 1; fi
echo "$line"
