#!/usr/bin/env bash
# deps.sh [test|demo]: installs the Debian packages arkgw's tests or demo use,
# skipping what is already there (so it is quick on a prepared machine).
set -euo pipefail
base=(iproute2 nftables conntrack iputils-ping ca-certificates)
test=(iperf3 dnsperf dnsmasq unbound tcpdump tshark chromium bubblewrap crun ulogd2 ulogd2-json mmdebstrap squashfs-tools)
case "${1:-test}" in
  demo) want=("${base[@]}" iperf3 mmdebstrap squashfs-tools) ;;
  *)    want=("${base[@]}" "${test[@]}") ;;
esac
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "deps: missing packages ${missing[*]}; run as root or install them" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
