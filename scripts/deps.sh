#!/bin/sh
# Install what a fresh Debian machine lacks to build, run and test webpushd:
# - dbus-daemon and dbus-run-session (the tests start private buses) and a C compiler
#   (aws-lc, the crypto library, and SQLite are built from source by the cc crate; the
#   daemon needs no OpenSSL, pkg-config or cmake);
# - for the settings window (settings/): GTK 4 and libadwaita headers, pkg-config to find
#   them, and Xvfb, the virtual display its test runs the real window on.
# `--daemon`: only what the daemon needs (scripts/run-daemon.sh). Does nothing when all is
# there.
set -e
daemon_only=no
[ "${1:-}" = --daemon ] && daemon_only=yes
need=""
command -v dbus-daemon >/dev/null 2>&1 || need="$need dbus-daemon"
command -v dbus-run-session >/dev/null 2>&1 || need="$need dbus-bin"
command -v cc >/dev/null 2>&1 || need="$need gcc"
if [ "$daemon_only" = no ]; then
    command -v pkg-config >/dev/null 2>&1 || need="$need pkg-config"
    pkg-config --exists 'gtk4 >= 4.8' 2>/dev/null || need="$need libgtk-4-dev"
    pkg-config --exists 'libadwaita-1 >= 1.2' 2>/dev/null || need="$need libadwaita-1-dev"
    command -v Xvfb >/dev/null 2>&1 || need="$need xvfb"
fi
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
