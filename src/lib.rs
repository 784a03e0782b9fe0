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

/// The log filter of the daemon and the development server: `RUST_LOG` when it is set and
/// valid (comma-separated `level` or `target=level`, such as `warn,webpushd=debug`), else
/// `default`. An invalid `RUST_LOG` is reported on standard error and ignored.
pub fn log_filter(rust_log: Option<&str>, default: &str) -> tracing_subscriber::filter::Targets {
    if let Some(s) = rust_log.filter(|s| !s.trim().is_empty()) {
        match s.parse() {
            Ok(t) => return t,
            Err(e) => eprintln!(
                "webpushd: RUST_LOG={s:?} ignored ({e}): use a level or target=level, separated by commas"
            ),
        }
    }
    default.parse().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use tracing::Level;

    #[test]
    fn log_filter_takes_rust_log_or_the_default() {
        let f = super::log_filter(Some("warn,webpushd=debug"), "info");
        assert!(f.would_enable("webpushd::push", &Level::DEBUG));
        assert!(!f.would_enable("zbus", &Level::INFO));
        let f = super::log_filter(None, "warn,webpushd=info");
        assert!(f.would_enable("webpushd", &Level::INFO));
        assert!(!f.would_enable("webpushd", &Level::DEBUG));
        let f = super::log_filter(Some("webpushd=[{x}]"), "info");
        assert!(
            f.would_enable("anything", &Level::INFO),
            "invalid: the default"
        );
    }
}
