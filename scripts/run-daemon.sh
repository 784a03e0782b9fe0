#!/bin/sh
# Build and run webpushd in the foreground, for trying it out.
# - installs missing system packages (scripts/deps.sh);
# - uses the session bus when there is one, otherwise starts a private one and prints the
#   line to paste into another terminal so pushctl can reach it;
# - by default uses the embedded local push service (no network needed); pass
#   --server-url wss://push.services.mozilla.com/ (or set server_url in config.toml) for
#   Mozilla's service.
set -e
cd "$(dirname "$0")/.."
sh scripts/deps.sh --daemon
cargo build --quiet -p webpushd --bins
bin="$PWD/target/debug"
args="$*"
case " $args " in *" --server-url "*) ;; *) args="--server-url local $args" ;; esac
if [ -n "$DBUS_SESSION_BUS_ADDRESS" ] && dbus-send --session --dest=org.freedesktop.DBus \
        --type=method_call --print-reply / org.freedesktop.DBus.GetId >/dev/null 2>&1; then
    echo "webpushd: on your session bus. Try: $bin/pushctl subscribe demo && $bin/pushctl send demo hello && $bin/pushctl messages demo" >&2
    exec "$bin/webpushd" $args
fi
dir=$(mktemp -d)
dbus-daemon --session --fork --address="unix:path=$dir/bus" --print-pid=3 3>"$dir/pid"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$dir/bus"
trap 'kill "$(cat "$dir/pid")" 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
echo "webpushd: no session bus, started a private one. In another terminal:" >&2
echo "  export DBUS_SESSION_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS PATH=$bin:\$PATH" >&2
echo "  pushctl subscribe demo && pushctl send demo hello && pushctl messages demo" >&2
"$bin/webpushd" $args
