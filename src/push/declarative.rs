//! Declarative push messages (W3C Push API, "declarative push message"): a JSON payload the
//! user agent shows as a notification without running app code.
//!
//! Parsing is strict: anything that breaks the rules (not JSON, `web_push` not 8030, no
//! `title` or `navigate`, a URL that is not absolute http(s), wrong types) is `None`, and
//! the payload is delivered to the app as an ordinary message — never dropped.

use serde::Deserialize;

/// What the daemon shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Declarative {
    pub notification: Notification,
    pub app_badge: Option<u64>,
    pub mutable: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub title: String,
    pub navigate: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub lang: String,
    #[serde(default)]
    pub dir: Option<String>,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub icon: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub badge: Option<String>,
    #[serde(default)]
    pub timestamp: Option<u64>,
    #[serde(default)]
    pub silent: Option<bool>,
    #[serde(default)]
    pub renotify: bool,
    #[serde(default)]
    pub require_interaction: bool,
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    #[serde(default)]
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Action {
    pub action: String,
    pub title: String,
    pub navigate: String,
}

#[derive(Deserialize)]
struct Wire {
    web_push: u64,
    notification: WireNotification,
    #[serde(default, deserialize_with = "badge")]
    app_badge: Option<u64>,
    #[serde(default)]
    mutable: Option<bool>,
}

/// Safari reads `mutable` and `app_badge` inside `notification`; the draft has them at the
/// top level. Both are accepted; the top level wins when both are there.
#[derive(Deserialize)]
struct WireNotification {
    #[serde(flatten)]
    notification: Notification,
    #[serde(default, deserialize_with = "badge")]
    app_badge: Option<u64>,
    #[serde(default)]
    mutable: Option<bool>,
}

/// A badge count: a number, or (as Safari accepts) a string of ASCII digits.
fn badge<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Badge {
        Number(u64),
        Digits(String),
    }
    match Option::<Badge>::deserialize(d)? {
        None => Ok(None),
        Some(Badge::Number(n)) => Ok(Some(n)),
        Some(Badge::Digits(s))
            if !s.is_empty() && s.len() <= 19 && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().map(Some).map_err(serde::de::Error::custom)
        }
        Some(Badge::Digits(s)) => Err(serde::de::Error::custom(format!(
            "app_badge {s:?} is not a count"
        ))),
    }
}

/// Longest title/body we pass on; notification servers truncate anyway.
const MAX_TEXT: usize = 4096;
/// At most this many actions are offered (the draft leaves it to the user agent).
pub const MAX_ACTIONS: usize = 4;

/// An absolute http(s) URL with a host. Only these are opened: `file:`, `javascript:` or
/// custom schemes from a push message must never reach `xdg-open`.
pub fn is_web_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    let Some(rest) = rest else {
        return false;
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    !host.is_empty()
        && !host.contains('@')
        && s.len() <= 2048
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

pub fn parse(payload: &[u8]) -> Option<Declarative> {
    // Cheap rejection first: every message passes through here.
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    if wire.web_push != 8030 {
        return None;
    }
    let app_badge = wire.app_badge.or(wire.notification.app_badge);
    let mutable = wire.mutable.or(wire.notification.mutable).unwrap_or(false);
    let n = wire.notification.notification;
    if n.title.is_empty() || n.title.len() > MAX_TEXT || n.body.len() > MAX_TEXT {
        return None;
    }
    if !is_web_url(&n.navigate) {
        return None;
    }
    if n.actions.iter().any(|a| {
        a.action.is_empty()
            || a.action == "default"
            || a.title.is_empty()
            || !is_web_url(&a.navigate)
    }) {
        return None;
    }
    let mut n = n;
    n.actions.truncate(MAX_ACTIONS);
    Some(Declarative {
        notification: n,
        app_badge,
        mutable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_message_parses() {
        let d = parse(br#"{"web_push":8030,"notification":{"title":"Hi","body":"There","navigate":"https://example.org/inbox","tag":"t","requireInteraction":true,"silent":true,"actions":[{"action":"read","title":"Read","navigate":"https://example.org/read"}]},"app_badge":3,"mutable":true}"#).unwrap();
        assert_eq!(d.notification.title, "Hi");
        assert!(d.notification.require_interaction);
        assert_eq!(d.notification.actions[0].action, "read");
        assert_eq!(d.app_badge, Some(3));
        assert!(d.mutable);
    }

    #[test]
    fn anything_off_the_rules_is_an_ordinary_message() {
        for bad in [
            &br#"hello"#[..],
            br#"{"web_push":8031,"notification":{"title":"a","navigate":"https://e/"}}"#,
            br#"{"web_push":8030,"notification":{"navigate":"https://e/"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"not a url"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"file:///etc/passwd"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"javascript:alert(1)"}}"#,
            br#"{"web_push":8030,"notification":{"title":7,"navigate":"https://e/"}}"#,
            br#"{"web_push":"8030","notification":{"title":"a","navigate":"https://e/"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"https://e/","actions":[{"action":"x","title":"X","navigate":"ftp://e/"}]}}"#,
            br#"{"web_push":8030,"notification":{"title":"","navigate":"https://e/"}}"#,
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn mutable_and_app_badge_inside_notification_as_safari_reads_them() {
        let d = parse(br#"{"web_push":8030,"notification":{"title":"Hi","navigate":"https://e/","app_badge":"12","mutable":true}}"#).unwrap();
        assert_eq!((d.app_badge, d.mutable), (Some(12), true));
        let d = parse(br#"{"web_push":8030,"notification":{"title":"Hi","navigate":"https://e/","app_badge":4}}"#).unwrap();
        assert_eq!((d.app_badge, d.mutable), (Some(4), false));
        // The draft's top level wins when both are given.
        let d = parse(br#"{"web_push":8030,"app_badge":"7","mutable":false,"notification":{"title":"Hi","navigate":"https://e/","app_badge":1,"mutable":true}}"#).unwrap();
        assert_eq!((d.app_badge, d.mutable), (Some(7), false));
        for bad in [
            &br#"{"web_push":8030,"app_badge":"seven","notification":{"title":"a","navigate":"https://e/"}}"#[..],
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"https://e/","app_badge":"-1"}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"https://e/","app_badge":""}}"#,
            br#"{"web_push":8030,"notification":{"title":"a","navigate":"https://e/","mutable":"yes"}}"#,
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn urls() {
        assert!(is_web_url("https://example.org"));
        assert!(is_web_url("http://127.0.0.1:8080/x?y#z"));
        assert!(!is_web_url("https://"));
        assert!(!is_web_url("https://user@evil/"));
        assert!(!is_web_url("mailto:x@y"));
    }
}
