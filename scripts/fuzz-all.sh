#!/usr/bin/env bash
# fuzz-all.sh DURATION: runs every Fuzz* target in the module for DURATION each.
#
# A failure counts only when the fuzzer wrote a reproducer. Go 1.26's fuzz
# coordinator can report a bare "context deadline exceeded" when -fuzztime
# expires while a worker is mid-execution on a loaded machine
# (golang/go#75804, fixed in Go 1.27); that ends a run, it finds nothing.
set -euo pipefail
dur=${1:-10s}
fail=0
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -hoE '^func (Fuzz[A-Za-z0-9_]+)\(' "$dir"/*_test.go 2>/dev/null | sed -E 's/^func (Fuzz[A-Za-z0-9_]+)\(/\1/' | sort -u); do
    echo "fuzz $pkg $f ($dur)"
    corpus="$dir/testdata/fuzz/$f"
    before=$(ls "$corpus" 2>/dev/null | sort || true)
    out=$(mktemp)
    if go test -run '^$' -fuzz "^${f}\$" -fuzztime "$dur" "$pkg" 2>&1 | tee "$out"; then
      rm -f "$out"
      continue
    fi
    after=$(ls "$corpus" 2>/dev/null | sort || true)
    if [ "$before" = "$after" ] && grep -q "context deadline exceeded" "$out"; then
      echo "fuzz $f: the fuzzer stopped on Go's end-of-fuzztime race (golang/go#75804), no input failed"
    else
      echo "fuzz $f: FAILED; the failing input is in $corpus"
      fail=1
    fi
    rm -f "$out"
  done
done
exit $fail
