//! webpushd-settings: the "Push Services" window of webpushd. It speaks to the daemon
//! only through its public D-Bus API (`daemon`); what it shows for a given state is decided
//! without GTK (`view`) and drawn by `window`.

pub mod daemon;
pub mod view;
pub mod window;

/// The application id: the `.desktop` file's name and the D-Bus name of the window.
pub const APP_ID: &str = "org.webpushd.Settings";

/// When `main` began, for `WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN` timings.
pub static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
