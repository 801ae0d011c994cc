#!/usr/bin/env bash
# demo.sh: the main job on a fresh machine (as root): a throw-away netlab node
# with a fake Internet, the arkgw daemon, two experiments (one well-behaved,
# one that breaks its declaration), the owner page and the alert stream.
# Ctrl-C removes everything. Settings: ARKGW_DEMO_LISTEN (127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
if [ "$(id -u)" != 0 ]; then
  echo "make demo needs root: it builds network namespaces and sandboxes" >&2
  exit 1
fi
./scripts/deps.sh demo
mkdir -p bin
go test -c -o bin/demo.test ./runner
exec env ARKGW_DEMO=1 bin/demo.test -test.run '^TestDemo$' -test.v -test.timeout 0
