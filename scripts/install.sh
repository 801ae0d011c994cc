#!/bin/sh
# install.sh BIN DESTDIR PREFIX: what `make install` does. The three
# binaries go side by side (arkgw finds arkgw-init and pcap beside itself),
# the unit names the installed arkgw, and an owner's node.toml is never
# overwritten: the commented defaults go beside it as node.toml.dist.
set -eu
BIN=${1:?usage: install.sh BIN DESTDIR PREFIX}
DESTDIR=${2:-}
PREFIX=${3:-/usr/local}
sbin="$PREFIX/sbin"

install -d -m 0755 "$DESTDIR$sbin" "$DESTDIR/etc/systemd/system" "$DESTDIR$PREFIX/share/doc/arkgw"
install -d -m 0750 "$DESTDIR/etc/arkgw"
install -m 0755 "$BIN/arkgw" "$BIN/arkgw-init" "$BIN/pcap" "$DESTDIR$sbin/"
sed -e "s|/usr/local/sbin/arkgw|$sbin/arkgw|g" \
    -e "s|file:///usr/share/doc/arkgw/README.md|file://$PREFIX/share/doc/arkgw/README.md|" \
    configs/arkgw.service > "$DESTDIR/etc/systemd/system/arkgw.service.new"
chmod 0644 "$DESTDIR/etc/systemd/system/arkgw.service.new"
mv "$DESTDIR/etc/systemd/system/arkgw.service.new" "$DESTDIR/etc/systemd/system/arkgw.service"
install -m 0644 README.md "$DESTDIR$PREFIX/share/doc/arkgw/README.md"
if [ -e "$DESTDIR/etc/arkgw/node.toml" ]; then
	install -m 0640 configs/node.toml "$DESTDIR/etc/arkgw/node.toml.dist"
	echo "install: kept the existing $DESTDIR/etc/arkgw/node.toml (the defaults are in node.toml.dist)"
else
	install -m 0640 configs/node.toml "$DESTDIR/etc/arkgw/node.toml"
fi
echo "install: $DESTDIR$sbin/{arkgw,arkgw-init,pcap}, $DESTDIR/etc/systemd/system/arkgw.service, $DESTDIR/etc/arkgw/node.toml"
