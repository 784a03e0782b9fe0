//! Validated identifiers. Outside input (D-Bus arguments, server JSON, database rows) is
//! parsed into these at the edge, so inner code never holds a bad value.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {why}")]
pub struct IdError {
    pub what: &'static str,
    pub why: String,
}

fn err(what: &'static str, why: impl Into<String>) -> IdError {
    IdError {
        what,
        why: why.into(),
    }
}

/// Who owns a subscription, derived from the caller's credentials (see `dbus::identity`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

impl AppId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<AppId, IdError> {
        if s.is_empty() {
            return Err(err("app id", "is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(err(
                "app id",
                format!("is longer than {} bytes", Self::MAX_LEN),
            ));
        }
        if s.chars().any(|c| c.is_control() || c == '/') {
            return Err(err("app id", "contains a control character or '/'"));
        }
        Ok(AppId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The app's name for a subscription, like a service worker scope: 1–1024 bytes of UTF-8.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope(String);

impl Scope {
    pub const MAX_LEN: usize = 1024;

    pub fn parse(s: &str) -> Result<Scope, IdError> {
        if s.is_empty() {
            return Err(err("scope", "is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(err(
                "scope",
                format!("is {} bytes; the limit is {}", s.len(), Self::MAX_LEN),
            ));
        }
        if s.contains('\0') {
            return Err(err("scope", "contains a NUL character"));
        }
        Ok(Scope(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A push channel: a lower-case dashed UUID, as the server insists (an upper-case one closes
/// the socket).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId(String);

impl ChannelId {
    pub fn generate() -> ChannelId {
        ChannelId(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// Accepts any case from the server (matching is case-insensitive) and normalises.
    pub fn parse(s: &str) -> Result<ChannelId, IdError> {
        let u = uuid::Uuid::try_parse(s).map_err(|e| err("channel id", e.to_string()))?;
        if s.len() != 36 {
            return Err(err("channel id", "must be a dashed UUID"));
        }
        Ok(ChannelId(u.hyphenated().to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The user agent id the server assigns: non-empty, at most 128 characters.
#[derive(Clone, PartialEq, Eq)]
pub struct Uaid(String);

impl Uaid {
    pub const MAX_LEN: usize = 128;

    pub fn parse(s: &str) -> Result<Uaid, IdError> {
        if s.is_empty() {
            return Err(err("uaid", "is empty"));
        }
        if s.chars().count() > Self::MAX_LEN {
            return Err(err("uaid", "is longer than 128 characters"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(err("uaid", "contains control characters"));
        }
        Ok(Uaid(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A prefix safe to log: the full UAID would let anyone knock our connection off.
    pub fn short(&self) -> &str {
        let end = self
            .0
            .char_indices()
            .nth(8)
            .map(|(i, _)| i)
            .unwrap_or(self.0.len());
        &self.0[..end]
    }
}

impl fmt::Debug for Uaid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Uaid({}…)", self.short())
    }
}

/// The id of a message, as apps see it in `Message` and pass to `AckMessage`. The daemon
/// makes them with `message_id`; an id an app sends back is any text (1-128 bytes, checked
/// on the D-Bus side) and simply matches no message if it is not one of ours.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(String);

impl MessageId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for MessageId {
    fn from(s: String) -> MessageId {
        MessageId(s)
    }
}

impl std::ops::Deref for MessageId {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The id of a message the server sent: 32 hex digits derived from the server's (channel,
/// version), so a copy the server sends again (its ack was lost, or the commit failed after
/// the app had been told) carries the same id and the app can recognise it.
pub fn message_id(channel: &ChannelId, version: &str) -> MessageId {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"webpushd message id\0");
    ctx.update(channel.as_str().as_bytes());
    ctx.update(b"\0");
    ctx.update(version.as_bytes());
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    // 32 lower-case hex digits, the form the random ids had.
    MessageId(uuid::Uuid::from_bytes(bytes).simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_follow_channel_and_version() {
        let a = ChannelId::parse("0a3c5b4e-8f1d-4c2a-9b7e-6d5f4e3c2b1a").unwrap();
        let b = ChannelId::parse("1a3c5b4e-8f1d-4c2a-9b7e-6d5f4e3c2b1a").unwrap();
        let id = message_id(&a, "v1");
        assert_eq!(id.len(), 32);
        assert!(id.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(id, message_id(&a, "v1"));
        assert_ne!(id, message_id(&a, "v2"));
        assert_ne!(id, message_id(&b, "v1"));
        // The separator keeps (channel, version) pairs apart that concatenate alike.
        assert_ne!(message_id(&a, "1v"), message_id(&a, "1\0v"));
    }

    #[test]
    fn scope_limits() {
        assert!(Scope::parse("").is_err());
        assert!(Scope::parse(&"a".repeat(1024)).is_ok());
        assert!(Scope::parse(&"a".repeat(1025)).is_err());
        assert!(Scope::parse("https://example.org/ünïcode").is_ok());
    }

    #[test]
    fn channel_ids_are_lower_case_dashed() {
        let c = ChannelId::parse("9D4A2C3E-1B6F-4F0A-8C2D-5E6F7A8B9C0D").unwrap();
        assert_eq!(c.as_str(), "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d");
        assert!(ChannelId::parse("9d4a2c3e1b6f4f0a8c2d5e6f7a8b9c0d").is_err());
        assert!(ChannelId::parse("nope").is_err());
        let g = ChannelId::generate();
        assert_eq!(g.as_str(), g.as_str().to_lowercase());
    }

    #[test]
    fn uaid_limits_and_redaction() {
        assert!(Uaid::parse("").is_err());
        assert!(Uaid::parse(&"a".repeat(129)).is_err());
        let u = Uaid::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert!(!format!("{u:?}").contains("89abcdef0123"));
    }
}
