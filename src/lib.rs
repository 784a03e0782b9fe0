//! webpushd: a per-user Web Push daemon for Linux desktops.
//!
//! The library holds everything; `src/bin/webpushd.rs` and `src/bin/pushctl/` only parse
//! flags and call into it. See ARCHITECTURE.md for the code map and invariants.

pub mod appserver;
pub mod client;
pub mod clock;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod daemon;
pub mod dbus;
pub mod identity;
pub mod ids;
pub mod model;
pub mod push;
pub mod selftest;
pub mod server;
pub mod store;
pub mod vapid;

/// The version reported over D-Bus (`Admin.Version`) and by `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
