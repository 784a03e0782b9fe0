//! The window's side of the bus: reads the daemon's state through its public D-Bus API,
//! follows its signals, and carries out what the user asks. Runs on a Tokio runtime of its
//! own; the window hears of it through `Update`s.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use webpushd::client::AdminProxy;
use webpushd::selftest::{self, Step};
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::zvariant::{OwnedObjectPath, OwnedValue};
use zbus::{MatchRule, MessageStream};

use crate::view::{Daemon, DaemonState, Subscription};

pub const BUS_NAME: &str = "org.webpushd.Push1";
const PATH: &str = "/org/webpushd/Push1";
const SUBSCRIPTION: &str = "org.webpushd.Push1.Subscription";

/// Signals closer together than this are read as one change (a burst of pushes).
const SETTLE: Duration = Duration::from_millis(150);
/// How long the self-test waits for the server at each step.
const SELFTEST_WAIT: Duration = Duration::from_secs(20);

/// What the user asked for.
#[derive(Debug, Clone)]
pub enum Command {
    /// Read everything again, if the daemon is on the bus (its signals said something
    /// changed).
    Refresh,
    /// Read everything, starting the daemon by D-Bus activation if it is not running (the
    /// window opened, or Try Again).
    Start,
    /// The daemon left the bus: show it, without starting it again.
    Stopped,
    Remove(String),
    ResetQuota(String),
    SetNotifications {
        app_id: String,
        allowed: bool,
    },
    SetServer(String),
    Reconnect,
    SelfTest,
}

/// Where updates go: a channel any executor can wait on (here the GTK main loop's).
pub type Updates = futures_channel::mpsc::UnboundedSender<Update>;

/// What the window is told.
#[derive(Debug, Clone)]
pub enum Update {
    State(Daemon),
    /// A step of the running self-test ended.
    Step(Step),
    /// The self-test ended; `true` when it passed.
    SelfTestDone(bool),
    /// An action failed: what to tell the user.
    Failed(String),
}

/// Start the bus side on a thread of its own; returns where to send commands. Updates go to
/// `updates` until the window closes it.
pub fn start(updates: Updates) -> mpsc::UnboundedSender<Command> {
    let (tx, rx) = mpsc::unbounded_channel();
    let commands = tx.clone();
    std::thread::Builder::new()
        .name("bus".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a Tokio runtime");
            rt.block_on(run(rx, commands, updates));
        })
        .expect("a thread for the bus");
    tx
}

async fn run(
    mut commands: mpsc::UnboundedReceiver<Command>,
    again: mpsc::UnboundedSender<Command>,
    updates: Updates,
) {
    let conn = match zbus::Connection::session().await {
        Ok(c) => c,
        Err(e) => {
            let _ = updates.unbounded_send(Update::State(Daemon::Unavailable(format!(
                "There is no session bus to reach the push daemon on ({e})."
            ))));
            return;
        }
    };
    tokio::spawn(follow(conn.clone(), again));
    let _ = updates.unbounded_send(Update::State(load(&conn).await));
    // A command read while gathering refreshes, handled next.
    let mut held: Option<Command> = None;
    loop {
        let c = match held.take() {
            Some(c) => c,
            None => match commands.recv().await {
                Some(c) => c,
                None => return,
            },
        };
        let state = match c {
            Command::Stopped => stopped(),
            Command::Refresh => {
                // Every refresh already asked for is this one.
                loop {
                    match commands.try_recv() {
                        Ok(Command::Refresh) => continue,
                        Ok(other) => held = Some(other),
                        Err(_) => {}
                    }
                    break;
                }
                if running(&conn).await {
                    load(&conn).await
                } else {
                    stopped()
                }
            }
            Command::Start => load(&conn).await,
            other => {
                let conn = conn.clone();
                let updates = updates.clone();
                tokio::spawn(async move { act(&conn, other, &updates).await });
                continue;
            }
        };
        if updates.unbounded_send(Update::State(state)).is_err() {
            return;
        }
    }
}

/// Follow the daemon's broadcast signals (its Admin properties and signals, its
/// subscriptions' PropertiesChanged) and its name coming and going; ask for a refresh once
/// they settle.
async fn follow(conn: zbus::Connection, refresh: mpsc::UnboundedSender<Command>) {
    let rules = [
        MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .path_namespace(PATH)
            .expect("a valid path")
            .build(),
        MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .expect("a valid name")
            .member("NameOwnerChanged")
            .expect("a valid member")
            .arg(0, BUS_NAME)
            .expect("a valid arg")
            .build(),
    ];
    let mut streams = Vec::new();
    for rule in rules {
        match MessageStream::for_match_rule(rule, &conn, Some(256)).await {
            Ok(s) => streams.push(s),
            Err(e) => {
                eprintln!("webpushd-settings: cannot follow the daemon's signals: {e}");
                return;
            }
        }
    }
    let mut all = futures_util::stream::select_all(streams);
    while let Some(first) = all.next().await {
        // Let a burst settle: every signal within SETTLE is one refresh.
        let mut stopped = first.ok().and_then(|m| name_lost(&m));
        let deadline = tokio::time::sleep(SETTLE);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                m = all.next() => match m {
                    None => return,
                    Some(m) => if let Some(lost) = m.ok().and_then(|m| name_lost(&m)) {
                        stopped = Some(lost);
                    },
                },
            }
        }
        // When the daemon went away, reading its state would start it again by
        // activation: someone stopped it, so say so and wait for Try Again.
        let c = if stopped == Some(true) {
            Command::Stopped
        } else {
            Command::Refresh
        };
        if refresh.send(c).is_err() {
            return;
        }
    }
}

fn stopped() -> Daemon {
    Daemon::Unavailable("The push daemon stopped. Try Again starts it.".to_string())
}

/// Whether the daemon owns its name now (a read when it does not would start it).
async fn running(conn: &zbus::Connection) -> bool {
    let Ok(dbus) = zbus::fdo::DBusProxy::new(conn).await else {
        return false;
    };
    let Ok(name) = zbus::names::BusName::from_static_str(BUS_NAME) else {
        return false;
    };
    dbus.name_has_owner(name).await.unwrap_or(false)
}

/// For NameOwnerChanged of the daemon's name: whether it lost its owner.
fn name_lost(m: &zbus::Message) -> Option<bool> {
    if m.header().member()?.as_str() != "NameOwnerChanged" {
        return None;
    }
    let (_, _, new): (String, String, String) = m.body().deserialize().ok()?;
    Some(new.is_empty())
}

/// Everything the window shows, read afresh. A method call starts the daemon by D-Bus
/// activation when it is not running.
pub async fn load(conn: &zbus::Connection) -> Daemon {
    match read(conn).await {
        Ok(s) => Daemon::Running(s),
        Err(e) => Daemon::Unavailable(crate::view::plain_error(&e)),
    }
}

async fn read(conn: &zbus::Connection) -> Result<DaemonState, String> {
    let e = |e: zbus::Error| e.to_string();
    let admin = AdminProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .map_err(e)?;
    let status = admin.status().await.map_err(e)?;

    let mut s = DaemonState {
        state: text(&status, "state"),
        server_url: text(&status, "server"),
        version: text(&status, "version"),
        connected_since: int(&status, "connected_since"),
        next_retry: int(&status, "next_retry"),
        last_error: text(&status, "last_error"),
        ..Default::default()
    };
    s.notifications_denied = admin.notifications_denied().await.map_err(e)?;

    for path in admin.list_all().await.map_err(e)? {
        // Removed between the list and the read: left out.
        if let Ok(sub) = subscription(conn, path).await {
            s.subscriptions.push(sub);
        }
    }
    Ok(s)
}

async fn subscription(
    conn: &zbus::Connection,
    path: OwnedObjectPath,
) -> zbus::Result<Subscription> {
    let props = PropertiesProxy::builder(conn)
        .destination(BUS_NAME)?
        .path(path.clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let p = props
        .get_all(InterfaceName::from_static_str_unchecked(SUBSCRIPTION))
        .await?;
    Ok(Subscription {
        path: path.to_string(),
        app_id: text(&p, "AppId"),
        scope: text(&p, "Scope"),
        kind: text(&p, "Kind"),
        description: text(&p, "Description"),
        push_count: p
            .get("PushCount")
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or(0),
        last_push: int(&p, "LastPush"),
        quota: p
            .get("Quota")
            .and_then(|v| i32::try_from(v).ok())
            .unwrap_or(0),
        quota_applies: flag(&p, "QuotaApplies"),
        expired: flag(&p, "Expired"),
        expired_reason: text(&p, "ExpiredReason"),
        pending: p
            .get("PendingMessages")
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(0),
    })
}

fn text<K: std::borrow::Borrow<str> + std::hash::Hash + Eq>(
    m: &HashMap<K, OwnedValue>,
    k: &str,
) -> String {
    m.get(k)
        .and_then(|v| String::try_from(v.clone()).ok())
        .unwrap_or_default()
}

fn int<K: std::borrow::Borrow<str> + std::hash::Hash + Eq>(
    m: &HashMap<K, OwnedValue>,
    k: &str,
) -> i64 {
    m.get(k).and_then(|v| i64::try_from(v).ok()).unwrap_or(0)
}

fn flag<K: std::borrow::Borrow<str> + std::hash::Hash + Eq>(
    m: &HashMap<K, OwnedValue>,
    k: &str,
) -> bool {
    m.get(k)
        .and_then(|v| bool::try_from(v).ok())
        .unwrap_or(false)
}

async fn act(conn: &zbus::Connection, c: Command, updates: &Updates) {
    let res = match c {
        Command::SelfTest => {
            let report = selftest::run_with(conn, SELFTEST_WAIT, |step| {
                let _ = updates.unbounded_send(Update::Step(step.clone()));
            })
            .await;
            let _ = updates.unbounded_send(Update::SelfTestDone(report.ok()));
            return;
        }
        other => admin_call(conn, other).await,
    };
    if let Err(e) = res {
        let _ = updates.unbounded_send(Update::Failed(crate::view::plain_error(&e.to_string())));
    }
}

async fn admin_call(conn: &zbus::Connection, c: Command) -> zbus::Result<()> {
    let admin = AdminProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let path = |p: &str| zbus::zvariant::ObjectPath::try_from(p.to_string());
    match c {
        Command::Remove(p) => admin.remove(&path(&p)?).await,
        Command::ResetQuota(p) => admin.reset_quota(&path(&p)?).await,
        Command::SetNotifications { app_id, allowed } => {
            admin.set_notifications_allowed(&app_id, allowed).await
        }
        Command::SetServer(url) => admin.set_server_url(&url).await,
        Command::Reconnect => admin.reconnect().await,
        Command::Refresh | Command::Start | Command::Stopped | Command::SelfTest => Ok(()),
    }
}
