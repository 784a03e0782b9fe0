//! The daemon's configuration: one `Config`, the defaults `webpushd.toml(5)` documents,
//! loaded once at startup.
//!
//! Precedence: command-line flags > `WEBPUSHD_*` environment > `config.toml` > defaults.
//! Every table denies unknown keys so a typo is a startup error that names the key and the
//! file, never a silently ignored setting. Nothing here does I/O after startup.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Mozilla's public push service, the default peer.
pub const DEFAULT_SERVER_URL: &str = "wss://push.services.mozilla.com/";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Invalid { file: PathBuf, message: String },
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {message}")]
    Override {
        origin: &'static str,
        message: String,
    },
    #[error("cannot find a home directory for the configuration and state paths")]
    NoHome,
}

/// Where the daemon connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerUrl {
    /// A `wss://` (or, with `allow_insecure`, `ws://`) URL.
    Remote(String),
    /// The embedded local push service on loopback.
    Local,
}

impl ServerUrl {
    pub fn parse(s: &str, allow_insecure: bool) -> Result<ServerUrl, String> {
        if s == "local" {
            return Ok(ServerUrl::Local);
        }
        let rest = if let Some(r) = s.strip_prefix("wss://") {
            r
        } else if let Some(r) = s.strip_prefix("ws://") {
            if !allow_insecure {
                return Err(format!(
                    "server_url: {s:?} is not encrypted; use wss:// (ws:// needs allow_insecure = true)"
                ));
            }
            r
        } else {
            return Err(format!(
                "server_url: {s:?} must be a wss:// URL or \"local\""
            ));
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("server_url: {s:?} has no host"));
        }
        Ok(ServerUrl::Remote(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            ServerUrl::Remote(u) => u,
            ServerUrl::Local => "local",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server_url: ServerUrl,
    pub allow_insecure: bool,
    pub connection: ConnectionConfig,
    pub quota: QuotaConfig,
    pub delivery: DeliveryConfig,
    pub notifications: NotificationsConfig,
    pub log: LogConfig,
    /// Not a config key: where the database lives (`$XDG_STATE_HOME/webpushd`).
    pub state_dir: PathBuf,
    /// Not a config key: the file this was read from, if any.
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionConfig {
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_base: Duration,
    #[serde(deserialize_with = "duration")]
    pub retry_max: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            request_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30 * 60),
            retry_base: Duration::from_secs(5),
            retry_max: Duration::from_secs(30 * 60),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    pub max_per_subscription: u32,
    #[serde(deserialize_with = "duration")]
    pub activation_grace: Duration,
    pub exempt_apps: Vec<String>,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_per_subscription: 16,
            activation_grace: Duration::from_secs(60),
            exempt_apps: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    pub max_pending_per_subscription: u32,
    #[serde(deserialize_with = "duration")]
    pub max_age: Duration,
    /// How long a message is safe from the pending cap (for its app to acknowledge it).
    #[serde(deserialize_with = "duration")]
    pub pending_grace: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_pending_per_subscription: 100,
            max_age: Duration::from_secs(30 * 24 * 3600),
            pending_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    pub enabled: bool,
    pub rate_per_minute: u32,
    #[serde(deserialize_with = "duration")]
    pub mutable_grace: Duration,
    pub fetch_images: bool,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            enabled: true,
            rate_per_minute: 10,
            mutable_grace: Duration::from_secs(5),
            fetch_images: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The file as written: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server_url: Option<String>,
    allow_insecure: Option<bool>,
    #[serde(default)]
    connection: ConnectionConfig,
    #[serde(default)]
    quota: QuotaConfig,
    #[serde(default)]
    delivery: DeliveryConfig,
    #[serde(default)]
    notifications: NotificationsConfig,
    #[serde(default)]
    log: LogConfig,
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| {
        serde::de::Error::custom(format!(
            "{s:?} is not a duration like \"30s\" or \"5m\": {e}"
        ))
    })
}

/// What the command line and environment say; `None` = not given.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub server_url: Option<String>,
    /// `-v` count: 1 = debug, 2+ = trace.
    pub verbose: u8,
}

impl Overrides {
    /// Fill unset fields from `WEBPUSHD_CONFIG`, `WEBPUSHD_STATE_DIR`, `WEBPUSHD_SERVER_URL`.
    pub fn with_env(mut self) -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        if self.config_file.is_none() {
            self.config_file = env("WEBPUSHD_CONFIG").map(PathBuf::from);
        }
        if self.state_dir.is_none() {
            self.state_dir = env("WEBPUSHD_STATE_DIR").map(PathBuf::from);
        }
        if self.server_url.is_none() {
            self.server_url = env("WEBPUSHD_SERVER_URL").and_then(|v| v.into_string().ok());
        }
        self
    }
}

/// `$XDG_CONFIG_HOME/webpushd/config.toml`.
pub fn default_config_file() -> Result<PathBuf, ConfigError> {
    let base = directories::BaseDirs::new().ok_or(ConfigError::NoHome)?;
    Ok(base.config_dir().join("webpushd").join("config.toml"))
}

/// `$XDG_STATE_HOME/webpushd`.
pub fn default_state_dir() -> Result<PathBuf, ConfigError> {
    let base = directories::BaseDirs::new().ok_or(ConfigError::NoHome)?;
    let state = base
        .state_dir()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| base.home_dir().join(".local/state"));
    Ok(state.join("webpushd"))
}

impl Config {
    /// Load the configuration. An explicitly named file must exist; the default one may not.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        let (file, explicit) = match &overrides.config_file {
            Some(f) => (f.clone(), true),
            None => (default_config_file()?, false),
        };
        let (parsed, source) = match std::fs::read_to_string(&file) {
            Ok(text) => (Self::parse_file(&text, &file)?, Some(file.clone())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                (FileConfig::default(), None)
            }
            Err(e) => return Err(ConfigError::Read { file, source: e }),
        };
        let state_dir = match &overrides.state_dir {
            Some(d) => d.clone(),
            None => default_state_dir()?,
        };
        let allow_insecure = parsed.allow_insecure.unwrap_or(false);
        let server_url = match &overrides.server_url {
            Some(u) => {
                ServerUrl::parse(u, allow_insecure).map_err(|message| ConfigError::Override {
                    origin: "--server-url / WEBPUSHD_SERVER_URL",
                    message,
                })?
            }
            None => ServerUrl::parse(
                parsed.server_url.as_deref().unwrap_or(DEFAULT_SERVER_URL),
                allow_insecure,
            )
            .map_err(|message| ConfigError::Invalid {
                file: file.clone(),
                message,
            })?,
        };
        let mut log = parsed.log;
        match overrides.verbose {
            0 => {}
            1 => log.level = LogLevel::Debug,
            _ => log.level = LogLevel::Trace,
        }
        let config = Config {
            server_url,
            allow_insecure,
            connection: parsed.connection,
            quota: parsed.quota,
            delivery: parsed.delivery,
            notifications: parsed.notifications,
            log,
            state_dir,
            source,
        };
        config.validate().map_err(|message| ConfigError::Invalid {
            file: file.clone(),
            message,
        })?;
        Ok(config)
    }

    fn parse_file(text: &str, file: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::Invalid {
            file: file.to_path_buf(),
            // toml's message names the key and shows the line.
            message: e.to_string().trim_end().to_string(),
        })
    }

    fn validate(&self) -> Result<(), String> {
        let c = &self.connection;
        if c.request_timeout.is_zero() {
            return Err("connection.request_timeout must be more than 0".into());
        }
        if c.ping_interval.is_zero() {
            return Err("connection.ping_interval must be more than 0".into());
        }
        if c.retry_base.is_zero() {
            return Err("connection.retry_base must be more than 0".into());
        }
        if c.retry_max < c.retry_base {
            return Err("connection.retry_max must not be less than connection.retry_base".into());
        }
        if self.quota.max_per_subscription == 0 || self.quota.max_per_subscription > i32::MAX as u32
        {
            return Err("quota.max_per_subscription must be between 1 and 2147483647".into());
        }
        if self.delivery.max_pending_per_subscription == 0 {
            return Err("delivery.max_pending_per_subscription must be at least 1".into());
        }
        if self.delivery.max_age.is_zero() {
            return Err("delivery.max_age must be more than 0".into());
        }
        if self.delivery.pending_grace.is_zero() {
            return Err("delivery.pending_grace must be more than 0".into());
        }
        Ok(())
    }

    /// Defaults everywhere, for tests and tools.
    pub fn defaults(state_dir: PathBuf) -> Config {
        Config {
            server_url: ServerUrl::Remote(DEFAULT_SERVER_URL.into()),
            allow_insecure: false,
            connection: ConnectionConfig::default(),
            quota: QuotaConfig::default(),
            delivery: DeliveryConfig::default(),
            notifications: NotificationsConfig::default(),
            log: LogConfig::default(),
            state_dir,
            source: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, text).unwrap();
        Config::load(&Overrides {
            config_file: Some(file),
            state_dir: Some(dir.path().join("state")),
            ..Default::default()
        })
    }

    #[test]
    fn empty_file_gives_spec_defaults() {
        let c = load("").unwrap();
        assert_eq!(c.server_url, ServerUrl::Remote(DEFAULT_SERVER_URL.into()));
        assert_eq!(c.connection.request_timeout, Duration::from_secs(10));
        assert_eq!(c.connection.ping_interval, Duration::from_secs(1800));
        assert_eq!(c.connection.retry_base, Duration::from_secs(5));
        assert_eq!(c.connection.retry_max, Duration::from_secs(1800));
        assert_eq!(c.quota.max_per_subscription, 16);
        assert_eq!(c.quota.activation_grace, Duration::from_secs(60));
        assert_eq!(c.delivery.max_pending_per_subscription, 100);
        assert!(c.notifications.enabled);
        assert_eq!(c.notifications.rate_per_minute, 10);
        assert!(!c.notifications.fetch_images);
    }

    #[test]
    fn durations_are_humantime() {
        let c = load("[connection]\nrequest_timeout = \"250ms\"\nping_interval = \"1h 30m\"\n")
            .unwrap();
        assert_eq!(c.connection.request_timeout, Duration::from_millis(250));
        assert_eq!(c.connection.ping_interval, Duration::from_secs(5400));
        let c = load("[delivery]\npending_grace = \"2s\"\n").unwrap();
        assert_eq!(c.delivery.pending_grace, Duration::from_secs(2));
        assert_eq!(
            Config::defaults("/".into()).delivery.pending_grace,
            Duration::from_secs(30)
        );
        let e = load("[delivery]\npending_grace = \"0s\"\n").unwrap_err();
        assert!(e.to_string().contains("pending_grace"), "{e}");
    }

    #[test]
    fn unknown_key_names_the_key_and_file() {
        let e = load("[connection]\nrequest_timout = \"5s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("request_timout"), "{e}");
        assert!(e.contains("config.toml"), "{e}");
    }

    #[test]
    fn bad_value_names_the_key() {
        let e = load("[quota]\nactivation_grace = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("activation_grace"), "{e}");
        let e = load("[quota]\nmax_per_subscription = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_per_subscription"), "{e}");
    }

    #[test]
    fn insecure_url_needs_opt_in() {
        let e = load("server_url = \"ws://127.0.0.1:1/\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("allow_insecure"), "{e}");
        let c = load("server_url = \"ws://127.0.0.1:1/\"\nallow_insecure = true\n").unwrap();
        assert_eq!(c.server_url, ServerUrl::Remote("ws://127.0.0.1:1/".into()));
        assert!(load("server_url = \"http://x/\"\n").is_err());
        assert_eq!(
            load("server_url = \"local\"\n").unwrap().server_url,
            ServerUrl::Local
        );
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "server_url = \"wss://a.example/\"\n").unwrap();
        let c = Config::load(&Overrides {
            config_file: Some(file),
            state_dir: Some(dir.path().into()),
            server_url: Some("local".into()),
            verbose: 2,
        })
        .unwrap();
        assert_eq!(c.server_url, ServerUrl::Local);
        assert_eq!(c.log.level, LogLevel::Trace);
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let e = Config::load(&Overrides {
            config_file: Some("/nonexistent/webpushd.toml".into()),
            state_dir: Some("/tmp".into()),
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/webpushd.toml"));
    }
}
