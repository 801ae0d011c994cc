#!/usr/bin/env bash
# bench.sh NAME PKG TESTNAME: runs one benchmark test (skipped in `make test`)
# and prints its result line last, so `make bench-NAME | tail -1` is the figure.
set -euo pipefail
name=$1 pkg=$2 test=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
# The share of CPU time the hypervisor gave to others (vmstat's "st") while
# the benchmark ran: on a shared VM the figures swing with it.
cpustat() { awk '/^cpu /{t=0; for(i=2;i<=9;i++) t+=$i; print t, $9}' /proc/stat; }
read -r t0 s0 < <(cpustat)
ARKGW_BENCH=1 go test -count=1 -timeout 30m -run "^${test}\$" -v "$pkg" 2>&1 | tee "$out"
read -r t1 s1 < <(cpustat)
line=$(grep -E "^bench-${name} " "$out" | tail -1 || true)
if [ -z "$line" ]; then echo "bench-${name}: no result line printed" >&2; exit 1; fi
awk -v d=$((t1 - t0)) -v s=$((s1 - s0)) -v n="$name" 'BEGIN { if (d > 0) printf "bench-%s ran with %.1f%% of the CPU time stolen by the host (above a few %%, figures swing)\n", n, 100 * s / d }'
echo "$line"
