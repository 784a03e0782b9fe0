#!/bin/sh
# Install what a fresh Debian machine lacks to build, run and test webpushd:
# dbus-daemon and dbus-run-session (the tests start private buses) and a C compiler
# (aws-lc, the crypto library, and SQLite are built from source by the cc crate; no
# OpenSSL, pkg-config or cmake). Does nothing when all is there.
set -e
need=""
command -v dbus-daemon >/dev/null 2>&1 || need="$need dbus-daemon"
command -v dbus-run-session >/dev/null 2>&1 || need="$need dbus-bin"
command -v cc >/dev/null 2>&1 || need="$need gcc"
[ -n "$need" ] || exit 0
echo "webpushd: installing:$need" >&2
if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
elif command -v sudo >/dev/null 2>&1; then
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need
else
    echo "webpushd: please install:$need" >&2
    exit 1
fi
