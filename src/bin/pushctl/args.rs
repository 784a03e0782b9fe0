//! The command line: what pushctl accepts, as clap reads it, and the checks of the values
//! themselves (`--navigate`, `--action`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "pushctl",
    version,
    about = "Manage webpushd and send test pushes"
)]
pub struct Cli {
    /// Act as app ID: own this name on the bus before calling
    #[arg(long, global = true, value_name = "ID")]
    pub app_id: Option<String>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Show the daemon's state
    Status,
    /// List subscriptions (this app's, or every app's with --all)
    List {
        #[arg(long)]
        all: bool,
    },
    /// Show one subscription
    Show {
        /// A scope of the acting app, or a subscription object path
        target: String,
    },
    /// Create (or return) the subscription for SCOPE
    Subscribe {
        scope: String,
        /// VAPID application server public key (base64url)
        #[arg(long, value_name = "K", allow_hyphen_values = true)]
        key: Option<String>,
        /// Ask for a system subscription (no quota)
        #[arg(long)]
        system: bool,
    },
    /// Unregister and delete a subscription
    Unsubscribe {
        /// A scope of the acting app, or a subscription object path
        target: String,
    },
    /// Print the pending messages of SCOPE
    Messages { scope: String },
    /// Acknowledge message ID of SCOPE
    Ack { scope: String, id: String },
    /// Print events as they happen, until interrupted
    Monitor,
    /// Quota administration
    Quota {
        #[command(subcommand)]
        action: QuotaCmd,
    },
    /// Reconnect to the push server now
    Reconnect,
    /// Play the application server: encrypt, sign VAPID and POST a push
    Send(Box<SendArgs>),
    /// Allow or forbid desktop notifications from an app (administration)
    Notifications {
        /// The app id, as `list --all` shows it
        app: String,
        #[arg(value_enum, value_name = "on|off")]
        state: OnOff,
    },
    /// Show the push server, or move every subscription to another one (administration)
    Server {
        /// A wss:// URL (ws:// with allow_insecure), or "local"
        url: Option<String>,
    },
    /// Check the push server end to end: subscribe, push, receive, unsubscribe
    Selftest {
        /// Seconds each step may wait for the daemon or the push server
        #[arg(long, value_name = "SECONDS", default_value_t = 20)]
        timeout: u64,
    },
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Restore a subscription's quota to the maximum
    Reset {
        /// A subscription object path, or a scope of the acting app
        target: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// An endpoint URL (with --p256dh and --auth), or a scope of the acting app
    pub target: String,
    /// The subscription's public key (base64url), with an endpoint URL
    #[arg(long, value_name = "K", requires = "auth", allow_hyphen_values = true)]
    pub p256dh: Option<String>,
    /// The subscription's auth secret (base64url), with an endpoint URL
    #[arg(
        long,
        value_name = "A",
        requires = "p256dh",
        allow_hyphen_values = true
    )]
    pub auth: Option<String>,
    /// VAPID private key (PEM); a fresh key is used when absent
    #[arg(long, value_name = "FILE")]
    pub vapid_key: Option<PathBuf>,
    /// VAPID subject
    #[arg(long, default_value = "mailto:pushctl@localhost")]
    pub subject: String,
    /// Time to live, seconds
    #[arg(long, default_value_t = 60)]
    pub ttl: u32,
    #[arg(long, value_parser = ["very-low", "low", "normal", "high"])]
    pub urgency: Option<String>,
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long, default_value = "aes128gcm", value_parser = ["aes128gcm", "aesgcm"])]
    pub encoding: String,
    /// The payload; "-" reads standard input; none sends an empty push
    pub data: Option<String>,
    #[command(flatten)]
    pub notification: NotificationArgs,
}

/// `send` options that compose a declarative push message (W3C Push API) instead of DATA:
/// the daemon shows it as a desktop notification without running the app.
#[derive(clap::Args, Debug)]
pub struct NotificationArgs {
    /// Send a declarative push message with this notification title (instead of DATA)
    #[arg(long, value_name = "T", requires = "navigate", conflicts_with = "data")]
    pub title: Option<String>,
    /// The notification's body text
    #[arg(long, value_name = "B", requires = "title")]
    pub body: Option<String>,
    /// The http(s) URL a click on the notification opens
    #[arg(long, value_name = "URL", requires = "title", value_parser = http_url)]
    pub navigate: Option<String>,
    /// A tag: a notification with the same tag replaces this one
    #[arg(long, value_name = "T", requires = "title")]
    pub tag: Option<String>,
    /// A button: its ID, its label and the http(s) URL it opens (repeatable)
    #[arg(long = "action", value_name = "ID:TITLE:URL", requires = "title", value_parser = parse_action)]
    pub actions: Vec<Action>,
    /// Set the app's launcher badge to N (0 clears it)
    #[arg(long, value_name = "N", requires = "title")]
    pub app_badge: Option<u64>,
    /// Let a running app handle the message first (shown only if it does not acknowledge it)
    #[arg(long, requires = "title")]
    pub mutable: bool,
    /// Keep the notification until the user dismisses it
    #[arg(long, requires = "title")]
    pub require_interaction: bool,
    /// Show the notification without a sound
    #[arg(long, requires = "title")]
    pub silent: bool,
}

/// One `--action ID:TITLE:URL`.
#[derive(Clone, Debug)]
pub struct Action {
    pub id: String,
    pub title: String,
    pub navigate: String,
}

/// An absolute http or https URL with a host, as a declarative message's `navigate` must be.
/// (The daemon takes a message with any other `navigate` as an ordinary payload.)
fn http_url(s: &str) -> Result<String, String> {
    let bad = || "not an absolute http:// or https:// URL".to_string();
    let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(bad());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        host_port.split(']').next().map(|h| &h[1..]).unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    if host.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// `ID:TITLE:URL`, split at the first two colons: the URL has colons of its own.
fn parse_action(s: &str) -> Result<Action, String> {
    let mut parts = s.splitn(3, ':');
    let (Some(id), Some(title), Some(navigate)) = (parts.next(), parts.next(), parts.next()) else {
        return Err("not ID:TITLE:URL (three parts separated by colons)".into());
    };
    if id.is_empty() || title.is_empty() {
        return Err("the action's ID and TITLE must not be empty".into());
    }
    if id == "default" {
        // Notification servers call a click on the notification itself "default".
        return Err(
            "the action ID \"default\" is the notification's own click; choose another".into(),
        );
    }
    Ok(Action {
        id: id.to_string(),
        title: title.to_string(),
        navigate: http_url(navigate).map_err(|e| format!("its URL {navigate:?} is {e}"))?,
    })
}

/// An endpoint URL rather than a scope or an object path.
pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}
