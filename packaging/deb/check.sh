#!/usr/bin/env bash
# CI check of the Debian package: build it from the binaries already built by the test
# run (debug profile, so CI does not compile everything twice) and compare its contents
# with the paths the package must install. A release package is built by build.sh.
set -eu
cd "$(dirname "$0")/../.."
if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --version 3.8.0 --locked
fi
cargo build --locked --bins -p webpushd -p webpushd-settings
mkdir -p target/completions
target/debug/pushctl completions bash > target/completions/pushctl.bash
target/debug/pushctl completions zsh > target/completions/_pushctl
target/debug/pushctl completions fish > target/completions/pushctl.fish
deb=target/debian/webpushd-check.deb
mkdir -p target/debian
cargo deb --no-build --profile dev --no-strip --fast -o "$deb" >/dev/null 2>&1 || cargo deb --no-build --profile dev --no-strip --fast -o "$deb"
got=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$' | sort)
want=$(sort <<'LIST'
/usr/bin/pushctl
/usr/bin/webpushd
/usr/bin/webpushd-devserver
/usr/lib/systemd/user/webpushd.service
/usr/share/bash-completion/completions/pushctl
/usr/share/dbus-1/interfaces/org.webpushd.Push1.xml
/usr/share/dbus-1/services/org.unifiedpush.Distributor.webpushd.service
/usr/share/dbus-1/services/org.webpushd.Push1.service
/usr/share/doc/webpushd/config.toml.example
/usr/share/doc/webpushd/copyright
/usr/share/fish/vendor_completions.d/pushctl.fish
/usr/share/man/man1/pushctl.1.gz
/usr/share/man/man1/webpushd-devserver.1.gz
/usr/share/man/man1/webpushd.1.gz
/usr/share/man/man5/webpushd.toml.5.gz
/usr/share/zsh/vendor-completions/_pushctl
LIST
)
if [ "$got" != "$want" ]; then
    echo "packaging/deb/check.sh: the .deb does not install what it should:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    exit 1
fi
echo "deb ok: $(echo "$got" | wc -l) files in $deb"

# The settings window's own package.
deb=target/debian/webpushd-settings-check.deb
cargo deb -p webpushd-settings --no-build --profile dev --no-strip --fast -o "$deb" >/dev/null 2>&1 || cargo deb -p webpushd-settings --no-build --profile dev --no-strip --fast -o "$deb"
got=$(dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' | grep -v '/$' | sort)
want=$(sort <<'LIST'
/usr/bin/webpushd-settings
/usr/share/applications/org.webpushd.Settings.desktop
/usr/share/doc/webpushd-settings/copyright
/usr/share/icons/hicolor/scalable/apps/org.webpushd.Settings.svg
/usr/share/man/man1/webpushd-settings.1.gz
LIST
)
if [ "$got" != "$want" ]; then
    echo "packaging/deb/check.sh: webpushd-settings does not install what it should:" >&2
    diff <(echo "$want") <(echo "$got") >&2 || true
    exit 1
fi
if ! dpkg-deb -f "$deb" Depends | grep -qE '(^|, )webpushd(,|$)'; then
    echo "packaging/deb/check.sh: webpushd-settings must depend on webpushd" >&2
    exit 1
fi
if command -v desktop-file-validate >/dev/null 2>&1; then
    desktop-file-validate dist/org.webpushd.Settings.desktop
fi
echo "deb ok: $(echo "$got" | wc -l) files in $deb"
