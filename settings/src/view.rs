//! What the window shows for a given state of the daemon: plain values and words, no GTK,
//! so that it is tested without a display.

use std::collections::BTreeMap;

/// Mozilla's push service, the daemon's default server.
pub const MOZILLA: &str = "wss://push.services.mozilla.com/";

/// The self-test's temporary subscriptions: not an app's, not listed.
pub const SELFTEST_SCOPE_PREFIX: &str = "webpushd-selftest:";

/// One subscription, as its object's properties say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// The D-Bus object path.
    pub path: String,
    pub app_id: String,
    pub scope: String,
    /// `webpush` or `unifiedpush`.
    pub kind: String,
    pub description: String,
    pub push_count: u64,
    /// ms since the epoch; 0 for never.
    pub last_push: i64,
    pub quota: i32,
    pub quota_applies: bool,
    pub expired: bool,
    pub expired_reason: String,
    pub pending: u32,
}

/// Everything the window shows, as read from the daemon.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonState {
    /// `offline`, `connecting`, `connected` or `backoff`.
    pub state: String,
    /// A WebSocket URL or `local`.
    pub server_url: String,
    pub version: String,
    /// ms since the epoch; 0 when not connected.
    pub connected_since: i64,
    /// ms since the epoch of the next attempt; 0 when none is planned.
    pub next_retry: i64,
    pub last_error: String,
    pub subscriptions: Vec<Subscription>,
    pub notifications_denied: Vec<String>,
}

/// The daemon as the window knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// Not asked yet (the window has just opened).
    Loading,
    /// It cannot be reached or started: why, in plain words.
    Unavailable(String),
    Running(DaemonState),
}

/// The connection group: a headline and the line under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionView {
    pub title: String,
    pub subtitle: String,
    /// The last error in plain words, if there is one worth showing.
    pub error: Option<String>,
    pub connected: bool,
}

pub fn connection(s: &DaemonState, now_ms: i64) -> ConnectionView {
    let server = server_label(&s.server_url);
    let (title, subtitle) = match s.state.as_str() {
        "connected" => (
            "Connected".to_string(),
            if s.connected_since > 0 {
                format!("{server}, {}", since(s.connected_since, now_ms))
            } else {
                server
            },
        ),
        "connecting" => ("Connecting…".to_string(), server),
        "backoff" => (
            "Waiting to reconnect".to_string(),
            if s.next_retry > now_ms {
                format!(
                    "{server}, next attempt in {}",
                    duration_words((s.next_retry - now_ms) / 1000)
                )
            } else {
                server
            },
        ),
        "offline" => (
            "Offline".to_string(),
            format!("{server}: waiting for the network or for an app to subscribe"),
        ),
        other => (other.to_string(), server),
    };
    let error =
        (!s.last_error.is_empty() && s.state != "connected").then(|| plain_error(&s.last_error));
    ConnectionView {
        title,
        subtitle,
        error,
        connected: s.state == "connected",
    }
}

/// The push server in words.
pub fn server_label(url: &str) -> String {
    match server_choice(url) {
        ServerChoice::Mozilla => "Mozilla's push service".to_string(),
        ServerChoice::Local => "The local push service (this computer only)".to_string(),
        ServerChoice::Custom(u) => host_of(&u).unwrap_or(&u).to_string(),
    }
}

fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    rest.split('/').next().filter(|h| !h.is_empty())
}

/// The three choices the server group offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerChoice {
    Mozilla,
    Local,
    Custom(String),
}

pub fn server_choice(url: &str) -> ServerChoice {
    let trimmed = url.trim_end_matches('/');
    if url == "local" {
        ServerChoice::Local
    } else if trimmed == MOZILLA.trim_end_matches('/') || url.is_empty() {
        ServerChoice::Mozilla
    } else {
        ServerChoice::Custom(url.to_string())
    }
}

/// What `SetServerUrl` gets for a choice.
pub fn server_url(choice: &ServerChoice) -> String {
    match choice {
        ServerChoice::Mozilla => MOZILLA.to_string(),
        ServerChoice::Local => "local".to_string(),
        ServerChoice::Custom(u) => u.clone(),
    }
}

/// A custom server as typed: a `wss://` URL with a host (the daemon may also take `ws://`
/// when its config allows it; it says so itself when not). The error says what to fix.
pub fn validate_custom(input: &str) -> Result<String, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err("Type the server's address, such as wss://push.example.org/".into());
    }
    if s.chars().any(char::is_whitespace) {
        return Err("An address has no spaces".into());
    }
    if s == "local" {
        return Ok(s.into());
    }
    if !(s.starts_with("wss://") || s.starts_with("ws://")) {
        return Err("The address starts with wss:// (a secure WebSocket)".into());
    }
    webpushd::config::ServerUrl::parse(s, true)
        .map(|u| u.as_str().to_string())
        .map_err(|e| {
            e.strip_prefix("server_url: ")
                .unwrap_or(&e)
                .replace('"', "")
        })
}

/// One app and its subscriptions, as the Apps page lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppView {
    pub app_id: String,
    pub notifications_allowed: bool,
    pub subscriptions: Vec<SubscriptionView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionView {
    pub path: String,
    pub title: String,
    pub subtitle: String,
    pub expired: bool,
    /// Whether "reset quota" means anything for it.
    pub quota_applies: bool,
}

/// The apps, sorted by id, each with its subscriptions sorted by scope; the self-test's
/// temporary subscriptions are left out.
pub fn apps(s: &DaemonState, now_ms: i64) -> Vec<AppView> {
    let mut by_app: BTreeMap<&str, Vec<&Subscription>> = BTreeMap::new();
    for sub in &s.subscriptions {
        if sub.scope.starts_with(SELFTEST_SCOPE_PREFIX) {
            continue;
        }
        by_app.entry(&sub.app_id).or_default().push(sub);
    }
    by_app
        .into_iter()
        .map(|(app, mut subs)| {
            subs.sort_by(|a, b| a.scope.cmp(&b.scope));
            AppView {
                app_id: app.to_string(),
                notifications_allowed: !s.notifications_denied.iter().any(|d| d == app),
                subscriptions: subs.into_iter().map(|x| subscription(x, now_ms)).collect(),
            }
        })
        .collect()
}

pub fn subscription(s: &Subscription, now_ms: i64) -> SubscriptionView {
    let title = if s.kind == "unifiedpush" && !s.description.is_empty() {
        s.description.clone()
    } else {
        s.scope.clone()
    };
    let mut parts: Vec<String> = vec![match s.kind.as_str() {
        "unifiedpush" => "UnifiedPush".to_string(),
        _ => "Web Push".to_string(),
    }];
    if s.expired {
        parts.push(match s.expired_reason.as_str() {
            "quota" => "expired: quota used up".to_string(),
            "server" => "expired: the server dropped it".to_string(),
            "app-removed" => "expired: removed".to_string(),
            _ => "expired".to_string(),
        });
    }
    parts.push(match s.push_count {
        0 => "no pushes yet".to_string(),
        1 => "1 push".to_string(),
        n => format!("{n} pushes"),
    });
    if s.last_push > 0 {
        parts.push(format!("last {}", ago(s.last_push, now_ms)));
    }
    if s.quota_applies {
        parts.push(format!("quota {}", s.quota.max(0)));
    }
    if s.pending > 0 {
        parts.push(format!("{} waiting", s.pending));
    }
    SubscriptionView {
        path: s.path.clone(),
        title,
        subtitle: parts.join(" · "),
        expired: s.expired,
        quota_applies: s.quota_applies,
    }
}

/// `ms` (since the epoch) relative to now: "just now", "5 min ago", …
pub fn ago(ms: i64, now_ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    if s < 60 {
        "just now".into()
    } else {
        format!("{} ago", duration_words(s))
    }
}

fn since(ms: i64, now_ms: i64) -> String {
    let s = (now_ms - ms).max(0) / 1000;
    if s < 60 {
        "since a moment ago".into()
    } else {
        format!("for {}", duration_words(s))
    }
}

fn duration_words(s: i64) -> String {
    match s {
        ..60 => format!("{} s", s.max(1)),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h", s / 3600),
        _ => match s / 86_400 {
            1 => "1 day".into(),
            d => format!("{d} days"),
        },
    }
}

/// An error from the daemon or the bus, in words a person can act on.
pub fn plain_error(e: &str) -> String {
    let lower = e.to_ascii_lowercase();
    let known: &[(&str, &str)] = &[
        (
            "serviceunknown",
            "The push daemon is not installed, or D-Bus cannot start it.",
        ),
        (
            "spawn.",
            "D-Bus could not start the push daemon; see `journalctl --user -u webpushd`.",
        ),
        ("noreply", "The push daemon did not answer in time."),
        (
            "accessdenied",
            "The push daemon refused: this window is not allowed to do that.",
        ),
        (
            "connection refused",
            "The push server refused the connection: is it running, and is the address right?",
        ),
        (
            "dns",
            "The push server's name could not be found: check the network and the address.",
        ),
        (
            "failed to lookup",
            "The push server's name could not be found: check the network and the address.",
        ),
        (
            "certificate",
            "The push server's certificate is not trusted.",
        ),
        ("timed out", "The push server did not answer in time."),
        ("network is unreachable", "No network."),
    ];
    for (needle, words) in known {
        if lower.contains(needle) {
            return format!("{words} ({})", e.trim());
        }
    }
    e.trim().to_string()
}

/// The self-test's steps, named for people.
pub fn step_label(name: &str) -> &'static str {
    match name {
        "connected" => "Connected to the push server",
        "subscribe" => "Made a test subscription",
        "send" => "Sent a push through the server",
        "receive" => "Received it, decrypted and intact",
        "unsubscribe" => "Removed the test subscription",
        "gone" => "The old address is refused",
        _ => "Step",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn sub(app: &str, scope: &str) -> Subscription {
        Subscription {
            path: format!("/org/webpushd/Push1/subscription/{}", scope.len()),
            app_id: app.into(),
            scope: scope.into(),
            kind: "webpush".into(),
            quota: 16,
            quota_applies: true,
            ..Default::default()
        }
    }

    #[test]
    fn connected_says_server_and_how_long() {
        let s = DaemonState {
            state: "connected".into(),
            server_url: MOZILLA.into(),
            connected_since: NOW - 3 * 3600 * 1000,
            last_error: "old error".into(),
            ..Default::default()
        };
        let v = connection(&s, NOW);
        assert_eq!(v.title, "Connected");
        assert_eq!(v.subtitle, "Mozilla's push service, for 3 h");
        assert_eq!(v.error, None, "an old error is not shown while connected");
        assert!(v.connected);
    }

    #[test]
    fn backoff_shows_the_error_in_plain_words_and_the_next_attempt() {
        let s = DaemonState {
            state: "backoff".into(),
            server_url: "wss://push.example.org/".into(),
            next_retry: NOW + 90_000,
            last_error: "connect: Connection refused (os error 111)".into(),
            ..Default::default()
        };
        let v = connection(&s, NOW);
        assert_eq!(v.title, "Waiting to reconnect");
        assert_eq!(v.subtitle, "push.example.org, next attempt in 1 min");
        let e = v.error.unwrap();
        assert!(
            e.starts_with("The push server refused the connection"),
            "{e}"
        );
        assert!(
            e.contains("os error 111"),
            "the original stays for searching: {e}"
        );
    }

    #[test]
    fn server_choices_round_trip() {
        assert_eq!(
            server_choice("wss://push.services.mozilla.com"),
            ServerChoice::Mozilla
        );
        assert_eq!(server_choice(MOZILLA), ServerChoice::Mozilla);
        assert_eq!(server_choice("local"), ServerChoice::Local);
        let c = server_choice("wss://push.example.org/");
        assert_eq!(c, ServerChoice::Custom("wss://push.example.org/".into()));
        for c in [ServerChoice::Mozilla, ServerChoice::Local, c] {
            assert_eq!(server_choice(&server_url(&c)), c);
        }
        assert_eq!(
            server_label("local"),
            "The local push service (this computer only)"
        );
    }

    #[test]
    fn custom_urls_are_validated_with_a_reason() {
        assert_eq!(
            validate_custom(" wss://push.example.org/ ").unwrap(),
            "wss://push.example.org/"
        );
        assert!(validate_custom("").unwrap_err().contains("wss://"));
        assert!(validate_custom("https://push.example.org/")
            .unwrap_err()
            .contains("wss://"));
        assert!(validate_custom("wss://").unwrap_err().contains("no host"));
        assert!(validate_custom("wss://a b/")
            .unwrap_err()
            .contains("spaces"));
    }

    #[test]
    fn apps_group_sort_and_hide_the_selftest() {
        let mut chat = sub("org.example.Chat", "inbox");
        chat.push_count = 3;
        chat.last_push = NOW - 5 * 60_000;
        chat.pending = 2;
        let mut up = sub("org.example.Mail", "up-1");
        up.kind = "unifiedpush".into();
        up.description = "Mail sync".into();
        up.quota_applies = false;
        let mut gone = sub("org.example.Chat", "alerts");
        gone.expired = true;
        gone.expired_reason = "quota".into();
        gone.quota = 0;
        let s = DaemonState {
            subscriptions: vec![up, chat, gone, sub("pushctl", "webpushd-selftest:00ff")],
            notifications_denied: vec!["org.example.Mail".into()],
            ..Default::default()
        };
        let apps = apps(&s, NOW);
        assert_eq!(
            apps.iter().map(|a| a.app_id.as_str()).collect::<Vec<_>>(),
            ["org.example.Chat", "org.example.Mail"]
        );
        assert!(apps[0].notifications_allowed);
        assert!(!apps[1].notifications_allowed);
        let chat = &apps[0].subscriptions;
        assert_eq!(chat[0].title, "alerts");
        assert_eq!(
            chat[0].subtitle,
            "Web Push · expired: quota used up · no pushes yet · quota 0"
        );
        assert!(chat[0].expired);
        assert_eq!(
            chat[1].subtitle,
            "Web Push · 3 pushes · last 5 min ago · quota 16 · 2 waiting"
        );
        let mail = &apps[1].subscriptions[0];
        assert_eq!(mail.title, "Mail sync");
        assert_eq!(mail.subtitle, "UnifiedPush · no pushes yet");
        assert!(!mail.quota_applies);
    }

    #[test]
    fn times_in_words() {
        assert_eq!(ago(NOW - 10_000, NOW), "just now");
        assert_eq!(ago(NOW - 2 * 86_400_000, NOW), "2 days ago");
        assert_eq!(
            ago(NOW + 5_000, NOW),
            "just now",
            "a clock step back is not the future"
        );
    }

    #[test]
    fn bus_errors_in_plain_words() {
        let e =
            plain_error("org.freedesktop.DBus.Error.ServiceUnknown: The name is not activatable");
        assert!(e.starts_with("The push daemon is not installed"), "{e}");
        assert_eq!(plain_error("something new"), "something new");
    }
}
