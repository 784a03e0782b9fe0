#!/bin/sh
# Build the Debian packages of webpushd with cargo-deb: webpushd (the daemon, pushctl,
# the development server) and webpushd-settings (the settings window, GTK 4).
#
#   packaging/deb/build.sh            build release binaries, then the .deb
#   packaging/deb/build.sh --no-build package binaries already in target/release
#
# The .debs land in target/debian/. Their contents are declared in Cargo.toml and
# settings/Cargo.toml under [package.metadata.deb]; the shell completions listed there are generated
# here from the built pushctl, since cargo-deb cannot run it.
# Needs: cargo, rustc, gcc, dpkg-dev (for $auto
# dependencies), libgtk-4-dev and libadwaita-1-dev (scripts/deps.sh installs them), and
# cargo-deb (installed on first use).
set -eu

cd "$(dirname "$0")/../.."

build=yes
case "${1:-}" in
    --no-build) build=no ;;
    "") ;;
    *) echo "usage: $0 [--no-build]" >&2; exit 2 ;;
esac

# Binaries, completions and the .deb all go to ./target.
unset CARGO_TARGET_DIR

if [ "$build" = yes ]; then
    cargo build --release --locked
fi
for bin in webpushd pushctl webpushd-settings; do
    if [ ! -x "target/release/$bin" ]; then
        echo "target/release/$bin is missing: run without --no-build first" >&2
        exit 1
    fi
done

mkdir -p target/completions
target/release/pushctl completions bash > target/completions/pushctl.bash
target/release/pushctl completions zsh > target/completions/_pushctl
target/release/pushctl completions fish > target/completions/pushctl.fish

if ! cargo deb --version >/dev/null 2>&1; then
    cargo install cargo-deb --locked
fi
for pkg in webpushd webpushd-settings; do
    # cargo-deb prints the path of the package it wrote.
    out=$(cargo deb -p "$pkg" --no-build)
    deb=$(printf '%s\n' "$out" | tail -n 1)
    if [ ! -f "$deb" ]; then
        deb=$(ls -t target/debian/"$pkg"_*.deb | head -n 1)
    fi
    echo "Built $deb:"
    dpkg-deb --info "$deb"
    dpkg-deb -c "$deb"
done
