#!/bin/sh
# rootfs.sh DIR [EXTRA_BINARY...]: build a small container root for arkgw
# tests and the demo from this host's own binaries and their shared
# libraries (no network, no package manager): a shell, coreutils basics,
# ps, ping, ip. File capabilities are not copied (ping gets CAP_NET_RAW from
# the sandbox's ambient set). The root also has the mount points the
# sandbox binds into (not required: the sandbox puts the ones a root lacks
# in a skeleton layer of its own, never in the root), /etc/passwd and
# /etc/group with the experiment user "ark" (uid/gid 1000).
#
# The result is a container version: put it at
# <state_dir>/containers/<version>/ (make rootfs does: ark-2026.1).
set -eu
DIR=${1:?usage: rootfs.sh DIR [EXTRA_BINARY...]}
shift
TMP="$DIR.new.$$"
trap 'rm -rf "$TMP"' EXIT
rm -rf "$TMP"
mkdir -p "$TMP"
umask 022

# merged /usr like the host (Debian 12): /bin -> usr/bin, ...
for l in bin sbin lib lib32 lib64 libx32; do
	if [ -L "/$l" ]; then
		t=$(readlink "/$l")
		ln -s "$t" "$TMP/$l"
		case "$t" in /*) mkdir -p "$TMP$t" ;; *) mkdir -p "$TMP/$t" ;; esac
	fi
done
mkdir -p "$TMP/usr/bin" "$TMP/usr/sbin" "$TMP/usr/lib"

copy() { # copy a file to the same path (resolving symlinks), mode kept, no xattrs
	src=$1
	dst="$TMP$src"
	[ -e "$dst" ] && return 0
	mkdir -p "$(dirname "$dst")"
	cp -L "$src" "$dst"
	chmod go+rX "$dst"
}
copy_with_libs() {
	bin=$1
	copy "$bin"
	# shared libraries and the dynamic loader, as ldd resolves them
	for lib in $(ldd "$bin" 2>/dev/null | awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}'); do
		copy "$lib"
	done
}

BINS="sh dash bash ls cat echo id ps ping ip head tail dd sleep true false env mkdir touch rm cp mv ln
grep sed awk wc uname hostname printf readlink stat df tr seq yes timeout kill nproc date tee sort cut
find xargs chmod mknod basename dirname test expr od md5sum sha256sum getent"
for b in $BINS; do
	p=
	for d in /usr/bin /usr/sbin /bin /sbin; do
		if [ -x "$d/$b" ] && [ ! -d "$d/$b" ]; then
			p="$d/$b"
			break
		fi
	done
	if [ -n "$p" ]; then
		copy_with_libs "$p"
	else
		echo "rootfs.sh: $b not on this host, skipped" >&2
	fi
done
for b in "$@"; do
	copy_with_libs "$b"
done

# mount points and generated files the sandbox binds over
mkdir -p "$TMP/proc" "$TMP/dev" "$TMP/tmp" "$TMP/run" "$TMP/experiment" "$TMP/etc"
chmod 1777 "$TMP/tmp"
for f in etc/resolv.conf etc/hosts etc/hostname usr/bin/pcap; do
	: >"$TMP/$f"
done
cat >"$TMP/etc/passwd" <<'P'
root:x:0:0:root:/root:/bin/sh
ark:x:1000:1000:arkgw experiment:/tmp:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
P
cat >"$TMP/etc/group" <<'G'
root:x:0:
tty:x:5:
ark:x:1000:
nogroup:x:65534:
G
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$TMP/etc/nsswitch.conf"
echo "ark-rootfs built $(date -u +%Y-%m-%dT%H:%M:%SZ) from $(uname -srm)" >"$TMP/etc/ark-release"

rm -rf "$DIR"
mkdir -p "$(dirname "$DIR")"
mv "$TMP" "$DIR"
trap - EXIT
echo "rootfs.sh: container root in $DIR ($(du -sh "$DIR" | cut -f1))"
