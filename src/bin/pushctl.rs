//! pushctl: manage webpushd and play an application server, for people and scripts.
//!
//! Talks to the daemon only through its public D-Bus interfaces. Exit codes: 0 ok,
//! 1 failure, 2 usage.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use webpushd::appserver::{self, SendOptions};
use webpushd::client::{AdminProxy, ManagerProxy, SubscriptionProxy};
use webpushd::crypto;
use webpushd::vapid::VapidKey;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

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
        #[arg(long, value_name = "K")]
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
    Send(SendArgs),
    /// Print shell completions
    Completions { shell: clap_complete::Shell },
}

#[derive(Subcommand, Debug)]
enum QuotaCmd {
    /// Restore a subscription's quota to the maximum
    Reset { path: String },
}

#[derive(clap::Args, Debug)]
struct SendArgs {
    /// An endpoint URL, or a scope of the acting app (endpoint and keys come from the daemon)
    target: String,
    /// The subscription's public key (base64url), with an endpoint URL
    #[arg(long, value_name = "K", requires = "auth")]
    p256dh: Option<String>,
    /// The subscription's auth secret (base64url), with an endpoint URL
    #[arg(long, value_name = "A", requires = "p256dh")]
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

    fn json(&self, v: &Json) {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("json values serialise")
        );
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "pushctl",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let out = Out {
        json: cli.json,
        color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
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

/// The error chain on one line, with the daemon-not-running case said plainly.
fn one_line(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(zbus::Error::MethodError(name, _, _)) = cause.downcast_ref::<zbus::Error>() {
            let n = name.as_str();
            if n == "org.freedesktop.DBus.Error.ServiceUnknown"
                || n == "org.freedesktop.DBus.Error.NameHasNoOwner"
            {
                return "webpushd is not running: systemctl --user start webpushd".into();
            }
        }
        if let Some(zbus::Error::FDO(f)) = cause.downcast_ref::<zbus::Error>() {
            if matches!(
                **f,
                zbus::fdo::Error::ServiceUnknown(_) | zbus::fdo::Error::NameHasNoOwner(_)
            ) {
                return "webpushd is not running: systemctl --user start webpushd".into();
            }
        }
    }
    let mut s = String::new();
    for (i, cause) in e.chain().enumerate() {
        let text = match cause.downcast_ref::<zbus::Error>() {
            Some(zbus::Error::MethodError(name, Some(msg), _)) => {
                let short = name.as_str().rsplit('.').next().unwrap_or(name.as_str());
                format!("{short}: {msg}")
            }
            _ => cause.to_string(),
        };
        if i > 0 {
            s.push_str(": ");
        }
        s.push_str(&text);
    }
    s
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
    let conn = connect(cli.app_id.as_deref()).await?;
    let manager = ManagerProxy::new(&conn).await?;
    let admin = AdminProxy::new(&conn).await?;
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
                rows.push(describe(&conn, &p).await?);
            }
            print_list(&rows, out);
            Ok(())
        }
        Cmd::Show { target } => {
            let path = resolve(&manager, &target).await?;
            let d = describe(&conn, &path).await?;
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
            let d = describe(&conn, &path).await?;
            print_one(&d, out);
            Ok(())
        }
        Cmd::Unsubscribe { target } => {
            let removed = if target.starts_with('/') {
                let p = sub_proxy(&conn, &parse_path(&target)?).await?;
                p.unsubscribe().await.context("unsubscribing")?;
                true
            } else {
                manager
                    .unsubscribe(&target)
                    .await
                    .context("unsubscribing")?
            };
            if out.json {
                out.json(&json!({ "removed": removed }));
            } else if removed {
                println!("Unsubscribed {target}");
            } else {
                bail!("no subscription for {target:?}");
            }
            Ok(())
        }
        Cmd::Messages { scope } => {
            let msgs = manager
                .fetch_messages(&scope)
                .await
                .with_context(|| format!("reading messages of {scope:?}"))?;
            print_messages(&msgs, out);
            Ok(())
        }
        Cmd::Ack { scope, id } => {
            manager
                .ack_message(&scope, &id)
                .await
                .with_context(|| format!("acknowledging {id}"))?;
            if out.json {
                out.json(&json!({ "acknowledged": id }));
            } else {
                println!("Acknowledged {id}");
            }
            Ok(())
        }
        Cmd::Monitor => monitor(&manager, &admin, out).await,
        Cmd::Quota {
            action: QuotaCmd::Reset { path },
        } => {
            let p = parse_path(&path)?;
            admin
                .reset_quota(&p.as_ref())
                .await
                .context("resetting quota")?;
            if !out.json {
                println!("Quota reset for {path}");
            } else {
                out.json(&json!({ "reset": path }));
            }
            Ok(())
        }
        Cmd::Reconnect => {
            admin.reconnect().await.context("asking to reconnect")?;
            if !out.json {
                println!("Reconnecting");
            } else {
                out.json(&json!({ "reconnecting": true }));
            }
            Ok(())
        }
        Cmd::Send(args) => send(&conn, &manager, args, out).await,
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
}

fn parse_path(s: &str) -> Result<OwnedObjectPath> {
    OwnedObjectPath::try_from(s.to_string()).map_err(|_| anyhow!("{s:?} is not an object path"))
}

async fn resolve(manager: &ManagerProxy<'_>, target: &str) -> Result<OwnedObjectPath> {
    if target.starts_with('/') {
        parse_path(target)
    } else {
        manager
            .get_subscription(target)
            .await
            .with_context(|| format!("finding {target:?}"))
    }
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
    }))
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
    for (k, v) in rows {
        println!("{:<11} {v}", out.bold(&format!("{k}:")));
    }
}

fn print_list(rows: &[Json], out: &Out) {
    if out.json {
        out.json(&Json::Array(rows.to_vec()));
        return;
    }
    if rows.is_empty() {
        println!("No subscriptions.");
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
                d["scope"].as_str().unwrap_or("").to_string(),
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
    println!("{}", out.bold(&line(&header.map(String::from))));
    for r in &table {
        println!("{}", line(r));
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
        println!("No pending messages.");
        return;
    }
    for (id, payload, meta) in msgs {
        let received = match meta.get("received_at").map(|v| &**v) {
            Some(Value::I64(t)) => relative(*t),
            _ => "?".into(),
        };
        println!(
            "{} {id}  ({received}, {} bytes)",
            out.bold("Message"),
            payload.len()
        );
        println!("  {}", preview(payload));
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
        println!("{:<14} {v}", out.bold(&format!("{k}:")));
    }
    Ok(())
}

async fn monitor(manager: &ManagerProxy<'_>, admin: &AdminProxy<'_>, out: &Out) -> Result<()> {
    let mut messages = manager.receive_message().await?;
    let mut changed = manager.receive_subscription_changed().await?;
    let mut quota = manager.receive_quota_changed().await?;
    let mut expired = manager.receive_expired().await?;
    let mut state = admin.receive_state_changed().await;
    let emit = |kind: &str, fields: Json, text: String| {
        if out.json {
            let mut o = fields;
            o["event"] = json!(kind);
            o["time"] = json!(now_ms());
            println!("{}", serde_json::to_string(&o).expect("json"));
        } else {
            println!("{kind:<20} {text}");
        }
        let _ = std::io::stdout().flush();
    };
    if !out.json {
        eprintln!("Monitoring; Ctrl-C to stop.");
    }
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
                let v = s.get().await?;
                emit("State", json!({"state": v}), v.clone());
            }
            else => return Ok(()),
        }
    }
}

async fn send(
    conn: &zbus::Connection,
    manager: &ManagerProxy<'_>,
    args: SendArgs,
    out: &Out,
) -> Result<()> {
    let (endpoint, p256dh, auth, has_key) = if args.target.starts_with("https://")
        || args.target.starts_with("http://")
    {
        let (Some(k), Some(a)) = (&args.p256dh, &args.auth) else {
            bail!("sending to an endpoint URL needs --p256dh and --auth (or give a scope of the acting app)");
        };
        let k = crypto::b64(k).map_err(|_| anyhow!("--p256dh is not base64url"))?;
        let a = crypto::b64(a).map_err(|_| anyhow!("--auth is not base64url"))?;
        (args.target.clone(), k, a, false)
    } else {
        let path = resolve(manager, &args.target).await?;
        let p = sub_proxy(conn, &path).await?;
        (
            p.endpoint().await?,
            p.get_key("p256dh").await?.into_vec(),
            p.get_key("auth").await?.into_vec(),
            !p.application_server_key().await?.is_empty(),
        )
    };
    let payload = match args.data.as_deref() {
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
            VapidKey::from_pem(&pem)
                .with_context(|| format!("{} is not a VAPID private key", file.display()))?
        }
        None => VapidKey::generate()?,
    };
    let opts = SendOptions {
        ttl: args.ttl,
        urgency: args.urgency,
        topic: args.topic,
        aesgcm: args.encoding == "aesgcm",
        subject: args.subject,
    };
    let resp = tokio::time::timeout(
        Duration::from_secs(40),
        appserver::send(&endpoint, &p256dh, &auth, &payload, &key, &opts),
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
        println!("{} — the push server accepted the message", resp.status);
    }
    if !ok {
        let mut msg = format!(
            "the push server answered {}: {}",
            resp.status,
            resp.body.trim()
        );
        if resp.status == 401 && has_key && args.vapid_key.is_none() {
            msg.push_str(" (this subscription is restricted to an application server key: pass its private key with --vapid-key)");
        }
        bail!(msg);
    }
    Ok(())
}
