//! pushctl: manage webpushd and play an application server, for people and scripts.
//!
//! Talks to the daemon only through its public D-Bus interfaces. Exit codes: 0 ok,
//! 1 failure, 2 usage. Every failure is one line on standard error that says what went
//! wrong and, where it can, what to do.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use webpushd::appserver::{self, SendOptions};
use webpushd::client::{AdminProxy, ManagerProxy, SubscriptionProxy};
use webpushd::crypto;
use webpushd::vapid::VapidKey;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};
use zbus::DBusError;

/// Where the daemon puts subscription objects.
const SUB_PREFIX: &str = "/org/webpushd/Push1/subscription/";
const NOT_RUNNING: &str = "webpushd is not running: systemctl --user start webpushd";
/// The daemon's name, the Admin object and its interface.
const ADMIN: (&str, &str, &str) = (
    "org.webpushd.Push1",
    "/org/webpushd/Push1",
    "org.webpushd.Push1.Admin",
);

#[derive(Parser, Debug)]
#[command(
    name = "pushctl",
    version,
    about = "Manage webpushd and send test pushes"
)]
struct Cli {
    /// Act as app ID: own this name on the bus before calling
    #[arg(long, global = true, value_name = "ID")]
    app_id: Option<String>,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
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
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum QuotaCmd {
    /// Restore a subscription's quota to the maximum
    Reset {
        /// A subscription object path, or a scope of the acting app
        target: String,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum OnOff {
    On,
    Off,
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// An endpoint URL (with --p256dh and --auth), or a scope of the acting app
    target: String,
    /// The subscription's public key (base64url), with an endpoint URL
    #[arg(long, value_name = "K", requires = "auth", allow_hyphen_values = true)]
    p256dh: Option<String>,
    /// The subscription's auth secret (base64url), with an endpoint URL
    #[arg(
        long,
        value_name = "A",
        requires = "p256dh",
        allow_hyphen_values = true
    )]
    auth: Option<String>,
    /// VAPID private key (PEM); a fresh key is used when absent
    #[arg(long, value_name = "FILE")]
    vapid_key: Option<PathBuf>,
    /// VAPID subject
    #[arg(long, default_value = "mailto:pushctl@localhost")]
    subject: String,
    /// Time to live, seconds
    #[arg(long, default_value_t = 60)]
    ttl: u32,
    #[arg(long, value_parser = ["very-low", "low", "normal", "high"])]
    urgency: Option<String>,
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, default_value = "aes128gcm", value_parser = ["aes128gcm", "aesgcm"])]
    encoding: String,
    /// The payload; "-" reads standard input; none sends an empty push
    data: Option<String>,
    #[command(flatten)]
    notification: NotificationArgs,
}

/// `send` options that compose a declarative push message (W3C Push API) instead of DATA:
/// the daemon shows it as a desktop notification without running the app.
#[derive(clap::Args, Debug)]
struct NotificationArgs {
    /// Send a declarative push message with this notification title (instead of DATA)
    #[arg(long, value_name = "T", requires = "navigate", conflicts_with = "data")]
    title: Option<String>,
    /// The notification's body text
    #[arg(long, value_name = "B", requires = "title")]
    body: Option<String>,
    /// The http(s) URL a click on the notification opens
    #[arg(long, value_name = "URL", requires = "title", value_parser = http_url)]
    navigate: Option<String>,
    /// A tag: a notification with the same tag replaces this one
    #[arg(long, value_name = "T", requires = "title")]
    tag: Option<String>,
    /// A button: its ID, its label and the http(s) URL it opens (repeatable)
    #[arg(long = "action", value_name = "ID:TITLE:URL", requires = "title", value_parser = parse_action)]
    actions: Vec<Action>,
    /// Set the app's launcher badge to N (0 clears it)
    #[arg(long, value_name = "N", requires = "title")]
    app_badge: Option<u64>,
    /// Let a running app handle the message first (shown only if it does not acknowledge it)
    #[arg(long, requires = "title")]
    mutable: bool,
    /// Keep the notification until the user dismisses it
    #[arg(long, requires = "title")]
    require_interaction: bool,
    /// Show the notification without a sound
    #[arg(long, requires = "title")]
    silent: bool,
}

/// One `--action ID:TITLE:URL`.
#[derive(Clone, Debug)]
struct Action {
    id: String,
    title: String,
    navigate: String,
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

impl NotificationArgs {
    /// The declarative push message to send, when `--title` was given.
    fn payload(&self) -> Option<Vec<u8>> {
        let (title, navigate) = (self.title.as_ref()?, self.navigate.as_ref()?);
        let mut n = json!({ "title": title, "navigate": navigate });
        if let Some(b) = &self.body {
            n["body"] = json!(b);
        }
        if let Some(t) = &self.tag {
            n["tag"] = json!(t);
        }
        if !self.actions.is_empty() {
            n["actions"] = self
                .actions
                .iter()
                .map(|a| json!({ "action": a.id, "title": a.title, "navigate": a.navigate }))
                .collect();
        }
        if self.require_interaction {
            n["requireInteraction"] = json!(true);
        }
        if self.silent {
            n["silent"] = json!(true);
        }
        let mut m = json!({ "web_push": 8030, "notification": n });
        if let Some(badge) = self.app_badge {
            m["app_badge"] = json!(badge);
        }
        if self.mutable {
            m["mutable"] = json!(true);
        }
        Some(serde_json::to_vec(&m).expect("json values serialise"))
    }
}

/// Print one line on standard output. A reader that went away (`pushctl … | head -1`)
/// ends pushctl quietly instead of with a panic.
fn line(s: &str) {
    let mut o = std::io::stdout().lock();
    if let Err(e) = writeln!(o, "{s}").and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("pushctl: cannot write the output: {e}");
        std::process::exit(1);
    }
}

macro_rules! say {
    ($($t:tt)*) => { line(&format!($($t)*)) };
}

struct Out {
    json: bool,
    color: bool,
}

impl Out {
    fn bold(&self, s: &str) -> String {
        if self.color {
            format!("\x1b[1m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }

    /// `Label:` padded to `width` columns; the padding stays outside the colour codes so
    /// the columns line up on a terminal too.
    fn label(&self, k: &str, width: usize) -> String {
        let text = format!("{k}:");
        let pad = width.saturating_sub(text.chars().count());
        format!("{}{}", self.bold(&text), " ".repeat(pad))
    }

    fn json(&self, v: &Json) {
        line(&serde_json::to_string_pretty(v).expect("json values serialise"));
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    check_usage(&cli);
    if let Cmd::Completions { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "pushctl", &mut script);
        line(String::from_utf8_lossy(&script).trim_end());
        return ExitCode::SUCCESS;
    }
    let out = Out {
        json: cli.json,
        color: std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match rt.block_on(run(cli, &out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = std::io::stdout().flush();
            eprintln!("pushctl: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// Usage mistakes clap cannot see: exit 2 with clap's usage message.
fn check_usage(cli: &Cli) {
    if let Cmd::Send(a) = &cli.command {
        if a.p256dh.is_some() && !is_url(&a.target) {
            let mut cmd = Cli::command();
            cmd.build();
            let send = cmd
                .find_subcommand_mut("send")
                .expect("send is a subcommand");
            send.error(
                ErrorKind::ArgumentConflict,
                "--p256dh and --auth go with an endpoint URL; for a SCOPE the daemon gives the keys",
            )
            .exit();
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

/// The last part of a D-Bus error name: `NotFound`, `UnknownObject`, `ServiceUnknown`, ….
fn short_name(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

/// The D-Bus error (full name, message) of a zbus error, if it is one.
fn zbus_parts(z: &zbus::Error) -> Option<(String, String)> {
    match z {
        zbus::Error::MethodError(name, msg, _) => {
            Some((name.to_string(), msg.clone().unwrap_or_default()))
        }
        zbus::Error::FDO(f) => Some(fdo_parts(f)),
        _ => None,
    }
}

fn zbus_error_is(z: &zbus::Error, names: &[&str]) -> bool {
    zbus_parts(z).is_some_and(|(n, _)| names.contains(&short_name(&n)))
}

/// The D-Bus error (full name, message) anywhere in an error chain.
fn dbus_error(e: &anyhow::Error) -> Option<(String, String)> {
    for cause in e.chain() {
        if let Some(parts) = cause.downcast_ref::<zbus::Error>().and_then(zbus_parts) {
            return Some(parts);
        }
        if let Some(f) = cause.downcast_ref::<zbus::fdo::Error>() {
            return Some(fdo_parts(f));
        }
    }
    None
}

fn fdo_parts(f: &zbus::fdo::Error) -> (String, String) {
    (
        f.name().to_string(),
        f.description().unwrap_or_default().to_string(),
    )
}

/// Whether the chain holds a D-Bus error whose short name is one of `names`.
fn is_dbus_error(e: &anyhow::Error, names: &[&str]) -> bool {
    dbus_error(e).is_some_and(|(n, _)| names.contains(&short_name(&n)))
}

/// The error chain on one line, with the daemon-not-running case said plainly and
/// repeated causes (a wrapper that prints its source) said once.
fn one_line(e: &anyhow::Error) -> String {
    if is_dbus_error(e, &["ServiceUnknown", "NameHasNoOwner"]) {
        return NOT_RUNNING.into();
    }
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let dbus = match cause.downcast_ref::<zbus::Error>() {
            Some(z) => zbus_parts(z),
            None => cause.downcast_ref::<zbus::fdo::Error>().map(fdo_parts),
        };
        let text = match dbus {
            Some((name, msg)) if !msg.is_empty() => format!("{}: {msg}", short_name(&name)),
            Some((name, _)) => short_name(&name).to_string(),
            None => cause.to_string(),
        };
        let text = text.replace('\n', " ");
        if parts.last().is_some_and(|p| p.contains(text.as_str())) {
            continue;
        }
        parts.push(text);
    }
    parts.join(": ")
}

/// `s` as one shell word, for the commands suggested in error messages.
fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@=+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Who pushctl acts as, for error messages.
struct Acting<'a>(Option<&'a str>);

impl Acting<'_> {
    fn no_subscription(&self, scope: &str) -> anyhow::Error {
        match self.0 {
            Some(id) => anyhow!(
                "NotFound: no subscription {scope:?} for app {id}; see pushctl --app-id {} list",
                shell_word(id)
            ),
            None => anyhow!(
                "NotFound: no subscription {scope:?} for pushctl's own app id; act as an app with --app-id ID (pushctl list --all shows every app's)"
            ),
        }
    }

    /// A failed call about `scope`: NotFound means there is no such subscription.
    fn scope_error(&self, e: zbus::Error, scope: &str, doing: String) -> anyhow::Error {
        let e = anyhow!(e);
        if is_dbus_error(&e, &["NotFound"]) {
            self.no_subscription(scope)
        } else {
            e.context(doing)
        }
    }
}

/// A failed call about the object at `path`.
fn path_error(e: anyhow::Error, path: &str) -> anyhow::Error {
    if is_dbus_error(&e, &["UnknownObject", "UnknownInterface", "NotFound"]) {
        anyhow!("NotFound: no subscription at {path}; pushctl list --all shows every subscription")
    } else {
        e
    }
}

async fn connect(app_id: Option<&str>) -> Result<zbus::Connection> {
    let mut b = zbus::connection::Builder::session()
        .context("cannot reach the D-Bus session bus (is DBUS_SESSION_BUS_ADDRESS set?)")?;
    if let Some(id) = app_id {
        // Never take the name from its owner (the running app), and never let another
        // program take it from us: zbus would otherwise ask for both.
        b = b
            .name(id.to_string())
            .with_context(|| format!("{id:?} is not a valid bus name to act as"))?
            .replace_existing_names(false)
            .allow_name_replacements(false);
    }
    b.build().await.map_err(|e| match (app_id, &e) {
        (Some(id), zbus::Error::NameTaken) => anyhow!(
            "cannot act as {id}: another program (the app itself, or another pushctl) owns that name on the bus; quit it first"
        ),
        _ => anyhow!(e).context("cannot connect to the D-Bus session bus"),
    })
}

async fn run(cli: Cli, out: &Out) -> Result<()> {
    // An endpoint with its keys needs no daemon and no bus.
    if let Cmd::Send(args) = &cli.command {
        if let (true, Some(k), Some(a)) = (is_url(&args.target), &args.p256dh, &args.auth) {
            let p256dh = crypto::b64(k)
                .ok()
                .filter(|k| k.len() == 65)
                .ok_or_else(|| anyhow!("--p256dh must be the subscription's 65-byte public key, base64url-encoded (87 characters)"))?;
            let auth = crypto::b64(a)
                .ok()
                .filter(|a| a.len() == 16)
                .ok_or_else(|| anyhow!("--auth must be the subscription's 16-byte auth secret, base64url-encoded (22 characters)"))?;
            let target = SendTarget {
                endpoint: args.target.clone(),
                p256dh,
                auth,
                has_key: false,
            };
            return post(target, args, out).await;
        }
    }
    let acting = Acting(cli.app_id.as_deref());
    let conn = connect(cli.app_id.as_deref()).await?;
    let manager = ManagerProxy::new(&conn).await?;
    // Uncached: a cache filled while the state changes can keep a stale value (zbus drops
    // changes that arrive before its GetAll answer).
    let admin = AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    match cli.command {
        Cmd::Status => status(&admin, out).await,
        Cmd::List { all } => {
            let paths = if all {
                admin
                    .list_all()
                    .await
                    .context("listing every subscription")?
            } else {
                manager
                    .list_subscriptions()
                    .await
                    .context("listing subscriptions")?
            };
            let mut rows = Vec::new();
            for p in paths {
                match describe(&conn, &p).await {
                    Ok(d) => rows.push(d),
                    // Removed between the listing and now.
                    Err(e) if is_dbus_error(&e, &["UnknownObject"]) => {}
                    Err(e) => return Err(e),
                }
            }
            print_list(&rows, out);
            Ok(())
        }
        Cmd::Show { target } => {
            let path = resolve(&manager, &acting, &target).await?;
            let d = describe(&conn, &path)
                .await
                .map_err(|e| path_error(e, path.as_str()))?;
            print_one(&d, out);
            Ok(())
        }
        Cmd::Subscribe { scope, key, system } => {
            let mut options: HashMap<&str, Value<'_>> = HashMap::new();
            if let Some(k) = &key {
                options.insert("application_server_key", Value::from(k.as_str()));
            }
            if system {
                options.insert("system", Value::from(true));
            }
            let path = manager
                .subscribe(&scope, options)
                .await
                .with_context(|| format!("subscribing {scope:?}"))?;
            let d = describe_new(&conn, &path).await?;
            print_one(&d, out);
            Ok(())
        }
        Cmd::Unsubscribe { target } => {
            if let Some(path) = sub_path(&target)? {
                let p = sub_proxy(&conn, &path).await?;
                match p.unsubscribe().await {
                    Ok(()) => {}
                    // Another app's subscription (from list --all): remove it as the user.
                    Err(e) if zbus_error_is(&e, &["AccessDenied"]) => admin
                        .remove(&path.as_ref())
                        .await
                        .map_err(|e| path_error(anyhow!(e).context("removing"), &target))?,
                    Err(e) => return Err(path_error(anyhow!(e).context("unsubscribing"), &target)),
                }
            } else {
                let removed = manager
                    .unsubscribe(&target)
                    .await
                    .map_err(|e| acting.scope_error(e, &target, "unsubscribing".into()))?;
                if !removed {
                    return Err(acting.no_subscription(&target));
                }
            }
            if out.json {
                out.json(&json!({ "removed": true }));
            } else {
                say!("Unsubscribed {target}");
            }
            Ok(())
        }
        Cmd::Messages { scope } => {
            let msgs = manager.fetch_messages(&scope).await.map_err(|e| {
                acting.scope_error(e, &scope, format!("reading messages of {scope:?}"))
            })?;
            print_messages(&msgs, out);
            Ok(())
        }
        Cmd::Ack { scope, id } => {
            // Tell a missing subscription from a missing message.
            manager
                .get_subscription(&scope)
                .await
                .map_err(|e| acting.scope_error(e, &scope, format!("finding {scope:?}")))?;
            manager.ack_message(&scope, &id).await.map_err(|e| {
                let e = anyhow!(e);
                if is_dbus_error(&e, &["NotFound"]) {
                    anyhow!(
                        "NotFound: no pending message {id:?} for {scope:?} (acknowledged already?); pushctl messages {} lists the pending ones",
                        shell_word(&scope)
                    )
                } else {
                    e.context(format!("acknowledging {id}"))
                }
            })?;
            if out.json {
                out.json(&json!({ "acknowledged": id }));
            } else {
                say!("Acknowledged {id}");
            }
            Ok(())
        }
        Cmd::Monitor => monitor(&conn, &manager, &admin, out).await,
        Cmd::Quota {
            action: QuotaCmd::Reset { target },
        } => {
            let p = resolve(&manager, &acting, &target).await?;
            admin
                .reset_quota(&p.as_ref())
                .await
                .map_err(|e| path_error(anyhow!(e).context("resetting quota"), p.as_str()))?;
            if out.json {
                out.json(&json!({ "reset": p.as_str() }));
            } else {
                say!("Quota reset for {target}");
            }
            Ok(())
        }
        Cmd::Reconnect => {
            admin.reconnect().await.context("asking to reconnect")?;
            if out.json {
                out.json(&json!({ "reconnecting": true }));
            } else {
                say!("Reconnecting");
            }
            Ok(())
        }
        Cmd::Send(args) => {
            let path = match sub_path(&args.target)? {
                Some(p) => p,
                None => manager.get_subscription(&args.target).await.map_err(|e| {
                    let e =
                        acting.scope_error(e, &args.target, format!("finding {:?}", args.target));
                    if is_url(&args.target) {
                        anyhow!(
                            "{}; to send to an endpoint URL, give --p256dh K and --auth A",
                            one_line(&e)
                        )
                    } else {
                        e
                    }
                })?,
            };
            let p = sub_proxy(&conn, &path).await?;
            let ctx = || format!("reading {}", path.as_str());
            let target = SendTarget {
                endpoint: p.endpoint().await.with_context(ctx)?,
                p256dh: p.get_key("p256dh").await.with_context(ctx)?.into_vec(),
                auth: p.get_key("auth").await.with_context(ctx)?.into_vec(),
                has_key: !p
                    .application_server_key()
                    .await
                    .with_context(ctx)?
                    .is_empty(),
            };
            post(target, &args, out).await
        }
        Cmd::Notifications { app, state } => {
            let allowed = matches!(state, OnOff::On);
            admin
                .set_notifications_allowed(&app, allowed)
                .await
                .map_err(|e| {
                    let e = anyhow!(e);
                    if is_dbus_error(&e, &["UnknownMethod"]) {
                        anyhow!("this webpushd cannot show notifications; update it and restart it (systemctl --user restart webpushd)")
                    } else {
                        e.context(format!("setting notifications of {app}"))
                    }
                })?;
            let word = if allowed { "on" } else { "off" };
            if out.json {
                out.json(&json!({ "app_id": app, "notifications": allowed }));
            } else {
                say!("Notifications {word} for {app}");
            }
            Ok(())
        }
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
}

fn parse_path(s: &str) -> Result<OwnedObjectPath> {
    OwnedObjectPath::try_from(s.to_string()).map_err(|_| anyhow!("{s:?} is not an object path"))
}

/// A subscription object path, or `None` when `target` is a scope.
fn sub_path(target: &str) -> Result<Option<OwnedObjectPath>> {
    if target.starts_with(SUB_PREFIX) {
        parse_path(target).map(Some)
    } else {
        Ok(None)
    }
}

async fn resolve(
    manager: &ManagerProxy<'_>,
    acting: &Acting<'_>,
    target: &str,
) -> Result<OwnedObjectPath> {
    if let Some(p) = sub_path(target)? {
        return Ok(p);
    }
    manager
        .get_subscription(target)
        .await
        .map_err(|e| acting.scope_error(e, target, format!("finding {target:?}")))
}

async fn sub_proxy(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> Result<SubscriptionProxy<'static>> {
    Ok(SubscriptionProxy::builder(conn)
        .path(path.clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// A subscription as pushctl prints it; `--json` field names are part of the interface.
async fn describe(conn: &zbus::Connection, path: &OwnedObjectPath) -> Result<Json> {
    let p = sub_proxy(conn, path).await?;
    let ctx = || format!("reading {}", path.as_str());
    Ok(json!({
        "path": path.as_str(),
        "app_id": p.app_id().await.with_context(ctx)?,
        "scope": p.scope().await.with_context(ctx)?,
        "endpoint": p.endpoint().await.with_context(ctx)?,
        "p256dh": crypto::b64_encode(&p.p256dh().await.with_context(ctx)?),
        "auth": crypto::b64_encode(&p.auth().await.with_context(ctx)?),
        "application_server_key": crypto::b64_encode(&p.application_server_key().await.with_context(ctx)?),
        "push_count": p.push_count().await.with_context(ctx)?,
        "last_push": p.last_push().await.with_context(ctx)?,
        "quota": p.quota().await.with_context(ctx)?,
        "quota_applies": p.quota_applies().await.with_context(ctx)?,
        "expired": p.expired().await.with_context(ctx)?,
        "created": p.created().await.with_context(ctx)?,
        "kind": p.kind().await.with_context(ctx)?,
        "bus_name": p.bus_name().await.with_context(ctx)?,
        "description": p.description().await.with_context(ctx)?,
    }))
}

/// `describe` for a path `Subscribe` just returned: the daemon may answer before the
/// object is on the bus, so wait for it a little.
async fn describe_new(conn: &zbus::Connection, path: &OwnedObjectPath) -> Result<Json> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match describe(conn, path).await {
            Err(e)
                if is_dbus_error(&e, &["UnknownObject", "UnknownInterface"])
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r => return r,
        }
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// "3 min ago", "in 5 s", "never".
fn relative(ms: i64) -> String {
    if ms <= 0 {
        return "never".into();
    }
    let delta = now_ms() - ms;
    let (abs, future) = (delta.unsigned_abs() / 1000, delta < 0);
    let text = match abs {
        0..=59 => format!("{abs} s"),
        60..=3599 => format!("{} min", abs / 60),
        3600..=86399 => format!("{} h", abs / 3600),
        _ => format!("{} days", abs / 86400),
    };
    if future {
        format!("in {text}")
    } else {
        format!("{text} ago")
    }
}

fn print_one(d: &Json, out: &Out) {
    if out.json {
        out.json(d);
        return;
    }
    let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
    let quota = d["quota"].as_i64().unwrap_or(0);
    let rows = [
        ("Path", s("path")),
        ("App", s("app_id")),
        ("Scope", s("scope")),
        ("Endpoint", s("endpoint")),
        ("P256dh", s("p256dh")),
        ("Auth", s("auth")),
        (
            "Server key",
            if s("application_server_key").is_empty() {
                "none".into()
            } else {
                s("application_server_key")
            },
        ),
        ("Pushes", d["push_count"].to_string()),
        ("Last push", relative(d["last_push"].as_i64().unwrap_or(0))),
        (
            "Quota",
            if quota < 0 {
                "exempt (system)".into()
            } else {
                quota.to_string()
            },
        ),
        (
            "State",
            if d["expired"].as_bool() == Some(true) {
                "expired".into()
            } else {
                "active".into()
            },
        ),
        ("Created", relative(d["created"].as_i64().unwrap_or(0))),
    ];
    let mut rows = rows.to_vec();
    if d["kind"] == "unifiedpush" {
        rows.insert(
            3,
            (
                "Kind",
                "UnifiedPush registration (Scope is its token)".into(),
            ),
        );
        rows.insert(4, ("Service", s("bus_name")));
        rows.insert(5, ("About", s("description")));
    } else if !s("bus_name").is_empty() {
        rows.insert(3, ("Bus name", s("bus_name")));
    }
    for (k, v) in rows {
        say!("{} {v}", out.label(k, 11));
    }
}

fn print_list(rows: &[Json], out: &Out) {
    if out.json {
        out.json(&Json::Array(rows.to_vec()));
        return;
    }
    if rows.is_empty() {
        say!("No subscriptions.");
        return;
    }
    let table: Vec<[String; 6]> = rows
        .iter()
        .map(|d| {
            let id = d["path"]
                .as_str()
                .unwrap_or("")
                .rsplit('/')
                .next()
                .unwrap_or("")
                .to_string();
            let quota = d["quota"].as_i64().unwrap_or(0);
            [
                id,
                d["app_id"].as_str().unwrap_or("").to_string(),
                // A UnifiedPush registration is known by its service and description.
                if d["kind"] == "unifiedpush" {
                    let desc = d["description"].as_str().unwrap_or("");
                    let service = d["bus_name"].as_str().unwrap_or("");
                    if desc.is_empty() {
                        format!("UnifiedPush {service}")
                    } else {
                        format!("UnifiedPush {service} \u{2014} {desc}")
                    }
                } else {
                    d["scope"].as_str().unwrap_or("").to_string()
                },
                if quota < 0 {
                    "-".into()
                } else {
                    quota.to_string()
                },
                d["push_count"].to_string(),
                if d["expired"].as_bool() == Some(true) {
                    "expired".into()
                } else {
                    relative(d["last_push"].as_i64().unwrap_or(0))
                },
            ]
        })
        .collect();
    let header = ["ID", "APP", "SCOPE", "QUOTA", "PUSHES", "LAST PUSH"];
    let mut widths = header.map(str::len);
    for r in &table {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    say!("{}", out.bold(&line(&header.map(String::from))));
    for r in &table {
        say!("{}", line(r));
    }
}

fn meta_json(meta: &HashMap<String, OwnedValue>) -> Json {
    let mut m = serde_json::Map::new();
    for (k, v) in meta {
        let j = match &**v {
            Value::Str(s) => json!(s.as_str()),
            Value::I64(n) => json!(n),
            Value::U32(n) => json!(n),
            Value::U64(n) => json!(n),
            Value::I32(n) => json!(n),
            Value::Bool(b) => json!(b),
            other => json!(other.to_string()),
        };
        m.insert(k.clone(), j);
    }
    Json::Object(m)
}

fn payload_json(payload: &[u8]) -> Json {
    json!({
        "payload": std::str::from_utf8(payload).ok(),
        "payload_base64": crypto::b64_encode(payload),
    })
}

fn print_messages(msgs: &[webpushd::client::FetchedMessage], out: &Out) {
    if out.json {
        let v: Vec<Json> = msgs
            .iter()
            .map(|(id, payload, meta)| {
                let mut o = payload_json(payload);
                o["id"] = json!(id);
                o["meta"] = meta_json(meta);
                o
            })
            .collect();
        out.json(&Json::Array(v));
        return;
    }
    if msgs.is_empty() {
        say!("No pending messages.");
        return;
    }
    for (id, payload, meta) in msgs {
        let received = match meta.get("received_at").map(|v| &**v) {
            Some(Value::I64(t)) => relative(*t),
            _ => "?".into(),
        };
        say!(
            "{} {id}  ({received}, {} bytes)",
            out.bold("Message"),
            payload.len()
        );
        say!("  {}", preview(payload));
    }
}

fn preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) if s.chars().count() > 200 => format!("{}…", s.chars().take(200).collect::<String>()),
        Ok(s) => s.to_string(),
        Err(_) => format!(
            "(binary) {}",
            crypto::b64_encode(&payload[..payload.len().min(150)])
        ),
    }
}

async fn status(admin: &AdminProxy<'_>, out: &Out) -> Result<()> {
    let s = admin
        .status()
        .await
        .context("asking webpushd for its status")?;
    let get_str = |k: &str| match s.get(k).map(|v| &**v) {
        Some(Value::Str(v)) => v.to_string(),
        _ => String::new(),
    };
    let get_num = |k: &str| -> i64 {
        match s.get(k).map(|v| &**v) {
            Some(Value::I64(n)) => *n,
            Some(Value::U64(n)) => *n as i64,
            Some(Value::U32(n)) => *n as i64,
            Some(Value::I32(n)) => *n as i64,
            _ => 0,
        }
    };
    if out.json {
        out.json(&json!({
            "state": get_str("state"),
            "server": get_str("server"),
            "uaid": get_str("uaid"),
            "version": get_str("version"),
            "subscriptions": get_num("subscriptions"),
            "expired": get_num("expired"),
            "pending_messages": get_num("pending_messages"),
            "messages_received": get_num("messages_received"),
            "connected_since": get_num("connected_since"),
            "last_error": get_str("last_error"),
            "next_retry": get_num("next_retry"),
            "failures": get_num("failures"),
        }));
        return Ok(());
    }
    let state = get_str("state");
    let detail = match state.as_str() {
        "connected" => format!("connected (since {})", relative(get_num("connected_since"))),
        "backoff" => format!(
            "backoff (retry {}, {} failures)",
            relative(get_num("next_retry")),
            get_num("failures")
        ),
        other => other.to_string(),
    };
    let uaid = get_str("uaid");
    let uaid = if uaid.is_empty() {
        "none yet".to_string()
    } else {
        format!("{}…", uaid.chars().take(8).collect::<String>())
    };
    let mut rows = vec![
        ("State", detail),
        ("Server", get_str("server")),
        ("UAID", uaid),
        (
            "Subscriptions",
            format!(
                "{} ({} expired)",
                get_num("subscriptions"),
                get_num("expired")
            ),
        ),
        (
            "Pending",
            format!("{} messages", get_num("pending_messages")),
        ),
        (
            "Received",
            format!("{} messages since start", get_num("messages_received")),
        ),
        ("Version", get_str("version")),
    ];
    let err = get_str("last_error");
    if !err.is_empty() {
        rows.push(("Last error", err));
    }
    for (k, v) in rows {
        say!("{} {v}", out.label(k, 14));
    }
    Ok(())
}

async fn monitor(
    conn: &zbus::Connection,
    manager: &ManagerProxy<'_>,
    admin: &AdminProxy<'_>,
    out: &Out,
) -> Result<()> {
    let mut messages = manager.receive_message().await?;
    let mut changed = manager.receive_subscription_changed().await?;
    let mut quota = manager.receive_quota_changed().await?;
    let mut expired = manager.receive_expired().await?;
    // State changes straight from PropertiesChanged, subscribed to before the state is
    // read, so that no change is missed between the two.
    let mut state = zbus::fdo::PropertiesProxy::builder(conn)
        .destination(ADMIN.0)?
        .path(ADMIN.1)?
        .build()
        .await?
        .receive_properties_changed()
        .await?;
    let emit = |kind: &str, fields: Json, text: String| {
        if out.json {
            let mut o = fields;
            o["event"] = json!(kind);
            o["time"] = json!(now_ms());
            line(&serde_json::to_string(&o).expect("json"));
        } else {
            say!("{kind:<20} {text}");
        }
    };
    // The current state first: it also tells a reader that every event from here on
    // will be printed.
    let mut last_state = admin
        .state()
        .await
        .context("asking webpushd for its state")?;
    if !out.json {
        eprintln!("Monitoring; Ctrl-C to stop.");
    }
    emit("State", json!({ "state": last_state }), last_state.clone());
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some(m) = messages.next() => {
                let a = m.args()?;
                let mut f = payload_json(a.payload());
                f["subscription"] = json!(a.subscription().as_str());
                f["scope"] = json!(a.scope());
                f["id"] = json!(a.message_id());
                f["meta"] = meta_json(a.meta());
                emit("Message", f, format!("{} {} {}", a.scope(), a.message_id(), preview(a.payload())));
            }
            Some(m) = changed.next() => {
                let a = m.args()?;
                emit("SubscriptionChanged", json!({"subscription": a.subscription().as_str(), "scope": a.scope(), "reason": a.reason()}),
                    format!("{} {}", a.scope(), a.reason()));
            }
            Some(m) = quota.next() => {
                let a = m.args()?;
                emit("QuotaChanged", json!({"subscription": a.subscription().as_str(), "scope": a.scope(), "remaining": a.remaining()}),
                    format!("{} remaining {}", a.scope(), a.remaining()));
            }
            Some(m) = expired.next() => {
                let a = m.args()?;
                emit("Expired", json!({"subscription": a.subscription().as_str(), "scope": a.scope(), "reason": a.reason()}),
                    format!("{} {}", a.scope(), a.reason()));
            }
            Some(s) = state.next() => {
                let a = s.args()?;
                if a.interface_name().as_str() != ADMIN.2 {
                    continue;
                }
                let v = match a.changed_properties().get("State") {
                    Some(Value::Str(v)) => v.to_string(),
                    _ if a.invalidated_properties().contains(&"State") => admin.state().await?,
                    _ => continue,
                };
                if v != last_state {
                    emit("State", json!({"state": v}), v.clone());
                    last_state = v;
                }
            }
            else => return Ok(()),
        }
    }
}

/// Where `send` posts, and with which keys.
struct SendTarget {
    endpoint: String,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
    /// The subscription is restricted to an application server key.
    has_key: bool,
}

/// What the push server said, short: the `message` of an autopush JSON error, or the body.
fn server_says(body: &str) -> String {
    let text = serde_json::from_str::<Json>(body)
        .ok()
        .and_then(|j| j["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.trim().to_string());
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.chars().count() > 200 {
        format!("{}…", text.chars().take(200).collect::<String>())
    } else {
        text
    }
}

fn status_text(status: u16) -> String {
    match hyper::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(reason) => format!("{status} {reason}"),
        None => status.to_string(),
    }
}

async fn post(t: SendTarget, args: &SendArgs, out: &Out) -> Result<()> {
    let payload = match args.data.as_deref() {
        _ if args.notification.title.is_some() => args
            .notification
            .payload()
            .expect("clap: --title requires --navigate"),
        None => Vec::new(),
        Some("-") => {
            let mut v = Vec::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut v)
                .context("reading the payload from standard input")?;
            v
        }
        Some(s) => s.as_bytes().to_vec(),
    };
    let key = match &args.vapid_key {
        Some(file) => {
            let pem = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
            VapidKey::from_pem(&pem).with_context(|| {
                format!(
                    "{} is not a P-256 private key in PEM (EC PRIVATE KEY or PRIVATE KEY)",
                    file.display()
                )
            })?
        }
        None => VapidKey::generate()?,
    };
    let opts = SendOptions {
        ttl: args.ttl,
        urgency: args.urgency.clone(),
        topic: args.topic.clone(),
        aesgcm: args.encoding == "aesgcm",
        subject: args.subject.clone(),
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(40),
        appserver::send(&t.endpoint, &t.p256dh, &t.auth, &payload, &key, &opts),
    )
    .await
    .map_err(|_| anyhow!("the push server did not answer"))??;
    let ok = (200..300).contains(&resp.status);
    if out.json {
        out.json(&json!({
            "status": resp.status,
            "location": resp.location,
            "body": resp.body,
        }));
    } else if ok {
        say!(
            "{}: the push server accepted the message",
            status_text(resp.status)
        );
    }
    if ok {
        return Ok(());
    }
    let said = server_says(&resp.body);
    let answer = if said.is_empty() {
        status_text(resp.status)
    } else {
        format!("{}: {said}", status_text(resp.status))
    };
    let advice = match resp.status {
        401 | 403 if args.vapid_key.is_some() => {
            "; the key in --vapid-key FILE is not the one the subscription was created with"
        }
        401 | 403 if t.has_key => {
            "; this subscription only takes pushes signed with its application server key: pass that private key with --vapid-key FILE"
        }
        404 | 410 => "; the subscription is gone: the app must subscribe again",
        413 => "; the payload is too large for the push server (4096 bytes is safe)",
        _ => "",
    };
    Err(anyhow!(
        "the push server refused the message ({answer}){advice}"
    ))
}
