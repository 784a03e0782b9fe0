#!/bin/sh
# Time the settings window's start: from exec until the daemon's state is on screen
# (WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN makes it report that and quit), ten runs, against a
# daemon with two subscriptions on a private bus, on Xvfb with software rendering.
#
#   scripts/bench-settings-startup.sh [BIN_DIR]     (default: target/release)
set -eu
bin=$(cd "${1:-target/release}" && pwd)
dir=$(mktemp -d)
Xvfb -displayfd 3 -screen 0 1280x900x24 -nolisten tcp 3>"$dir/display" 2>/dev/null &
xvfb=$!
dbus-daemon --session --fork --address="unix:path=$dir/bus" --print-pid=1 >"$dir/bus.pid"
trap 'kill "$daemon" "$xvfb" "$(cat "$dir/bus.pid")" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
while [ ! -s "$dir/display" ]; do sleep 0.05; done
export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus" DISPLAY=":$(cat "$dir/display")"
export GSK_RENDERER=cairo NO_AT_BRIDGE=1 GSETTINGS_BACKEND=memory
HOME=$dir XDG_CONFIG_HOME=$dir/config XDG_STATE_HOME=$dir/state \
    "$bin/webpushd" --server-url local >"$dir/daemon.log" 2>&1 &
daemon=$!
until "$bin/pushctl" status >/dev/null 2>&1; do sleep 0.05; done
"$bin/pushctl" --app-id org.example.Chat subscribe inbox >/dev/null
"$bin/pushctl" --app-id org.example.Mail subscribe new-mail >/dev/null
for _ in 1 2 3 4 5 6 7 8 9 10; do
    WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN=1 "$bin/webpushd-settings" 2>&1 |
        sed -n 's/.*on screen \([0-9]*\) ms.*/\1/p'
done | sort -n | awk '{ a[NR] = $1 } END { printf "state on screen after start: median %d ms, min %d, max %d (%d runs)\n", a[int((NR + 1) / 2)], a[1], a[NR], NR }'
