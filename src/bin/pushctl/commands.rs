//! The commands that talk to the daemon, one function each, over its public D-Bus
//! interfaces.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value as Json};
use webpushd::client::{AdminProxy, ManagerProxy, SubscriptionProxy};
use webpushd::crypto;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::args::{is_url, Cli, Cmd, OnOff, QuotaCmd, SendArgs};
use crate::errors::{is_dbus_error, one_line, path_error, shell_word, zbus_error_is, Acting};
use crate::monitor::monitor;
use crate::output::{
    print_list, print_messages, print_one, print_selftest, print_status, say, Out, Status,
};
use crate::send::{self, SendTarget};

/// Where the daemon puts subscription objects.
const SUB_PREFIX: &str = "/org/webpushd/Push1/subscription/";

pub async fn run(cli: Cli, out: &Out) -> Result<()> {
    // An endpoint with its keys needs no daemon and no bus.
    if let Cmd::Send(args) = &cli.command {
        if let Some(target) = send::endpoint_target(args)? {
            return send::post(target, args, out).await;
        }
    }
    let d = Daemon::connect(cli.app_id.as_deref(), out).await?;
    match cli.command {
        Cmd::Status => d.status().await,
        Cmd::List { all } => d.list(all).await,
        Cmd::Show { target } => d.show(&target).await,
        Cmd::Subscribe { scope, key, system } => d.subscribe(&scope, key.as_deref(), system).await,
        Cmd::Unsubscribe { target } => d.unsubscribe(&target).await,
        Cmd::Messages { scope } => d.messages(&scope).await,
        Cmd::Ack { scope, id } => d.ack(&scope, &id).await,
        Cmd::Monitor => monitor(&d.conn, &d.manager, &d.admin, out).await,
        Cmd::Quota {
            action: QuotaCmd::Reset { target },
        } => d.reset_quota(&target).await,
        Cmd::Reconnect => d.reconnect().await,
        Cmd::Send(args) => d.send(&args).await,
        Cmd::Notifications { app, state } => d.notifications(&app, state).await,
        Cmd::Server { url } => d.server(url.as_deref()).await,
        Cmd::Selftest { timeout } => d.selftest(timeout).await,
        Cmd::Completions { .. } => unreachable!("handled before connecting"),
    }
}

/// The daemon as the commands reach it, and who pushctl acts as.
struct Daemon<'a> {
    conn: zbus::Connection,
    manager: ManagerProxy<'static>,
    admin: AdminProxy<'static>,
    acting: Acting<'a>,
    out: &'a Out,
}

impl<'a> Daemon<'a> {
    async fn connect(app_id: Option<&'a str>, out: &'a Out) -> Result<Daemon<'a>> {
        let acting = Acting(app_id);
        let conn = connect(app_id).await?;
        let manager = ManagerProxy::new(&conn).await?;
        // Uncached: a cache filled while the state changes can keep a stale value (zbus drops
        // changes that arrive before its GetAll answer).
        let admin = AdminProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        Ok(Daemon {
            conn,
            manager,
            admin,
            acting,
            out,
        })
    }

    async fn status(&self) -> Result<()> {
        let s = self
            .admin
            .status()
            .await
            .context("asking webpushd for its status")?;
        print_status(&Status(s), self.out);
        Ok(())
    }

    async fn list(&self, all: bool) -> Result<()> {
        let paths = if all {
            self.admin
                .list_all()
                .await
                .context("listing every subscription")?
        } else {
            self.manager
                .list_subscriptions()
                .await
                .context("listing subscriptions")?
        };
        let mut rows = Vec::new();
        for p in paths {
            match describe(&self.conn, &p).await {
                Ok(d) => rows.push(d),
                // Removed between the listing and now.
                Err(e) if is_dbus_error(&e, &["UnknownObject"]) => {}
                Err(e) => return Err(e),
            }
        }
        print_list(&rows, self.out);
        Ok(())
    }

    async fn show(&self, target: &str) -> Result<()> {
        let path = resolve(&self.manager, &self.acting, target).await?;
        let d = describe(&self.conn, &path)
            .await
            .map_err(|e| path_error(e, path.as_str()))?;
        print_one(&d, self.out);
        Ok(())
    }

    async fn subscribe(&self, scope: &str, key: Option<&str>, system: bool) -> Result<()> {
        let mut options: HashMap<&str, Value<'_>> = HashMap::new();
        if let Some(k) = key {
            options.insert("application_server_key", Value::from(k));
        }
        if system {
            options.insert("system", Value::from(true));
        }
        let path = self
            .manager
            .subscribe(scope, options)
            .await
            .with_context(|| format!("subscribing {scope:?}"))?;
        let d = describe_new(&self.conn, &path).await?;
        print_one(&d, self.out);
        Ok(())
    }

    async fn unsubscribe(&self, target: &str) -> Result<()> {
        if let Some(path) = sub_path(target)? {
            let p = sub_proxy(&self.conn, &path).await?;
            match p.unsubscribe().await {
                Ok(()) => {}
                // Another app's subscription (from list --all): remove it as the user.
                Err(e) if zbus_error_is(&e, &["AccessDenied"]) => self
                    .admin
                    .remove(&path.as_ref())
                    .await
                    .map_err(|e| path_error(anyhow!(e).context("removing"), target))?,
                Err(e) => return Err(path_error(anyhow!(e).context("unsubscribing"), target)),
            }
        } else {
            let removed = self
                .manager
                .unsubscribe(target)
                .await
                .map_err(|e| self.acting.scope_error(e, target, "unsubscribing".into()))?;
            if !removed {
                return Err(self.acting.no_subscription(target));
            }
        }
        self.done(json!({ "removed": true }), format!("Unsubscribed {target}"));
        Ok(())
    }

    async fn messages(&self, scope: &str) -> Result<()> {
        let msgs = self.manager.fetch_messages(scope).await.map_err(|e| {
            self.acting
                .scope_error(e, scope, format!("reading messages of {scope:?}"))
        })?;
        print_messages(&msgs, self.out);
        Ok(())
    }

    async fn ack(&self, scope: &str, id: &str) -> Result<()> {
        // Tell a missing subscription from a missing message.
        self.manager.get_subscription(scope).await.map_err(|e| {
            self.acting
                .scope_error(e, scope, format!("finding {scope:?}"))
        })?;
        self.manager.ack_message(scope, id).await.map_err(|e| {
            let e = anyhow!(e);
            if is_dbus_error(&e, &["NotFound"]) {
                anyhow!(
                    "NotFound: no pending message {id:?} for {scope:?} (acknowledged already?); pushctl messages {} lists the pending ones",
                    shell_word(scope)
                )
            } else {
                e.context(format!("acknowledging {id}"))
            }
        })?;
        self.done(json!({ "acknowledged": id }), format!("Acknowledged {id}"));
        Ok(())
    }

    async fn reset_quota(&self, target: &str) -> Result<()> {
        let p = resolve(&self.manager, &self.acting, target).await?;
        self.admin
            .reset_quota(&p.as_ref())
            .await
            .map_err(|e| path_error(anyhow!(e).context("resetting quota"), p.as_str()))?;
        self.done(
            json!({ "reset": p.as_str() }),
            format!("Quota reset for {target}"),
        );
        Ok(())
    }

    async fn server(&self, url: Option<&str>) -> Result<()> {
        if let Some(url) = url {
            self.admin.set_server_url(url).await.map_err(|e| {
                let e = anyhow!(e);
                if is_dbus_error(&e, &["UnknownMethod"]) {
                    anyhow!("this webpushd cannot switch servers; update it and restart it (systemctl --user restart webpushd)")
                } else {
                    e.context(format!("switching to {url}"))
                }
            })?;
        }
        let server = self.admin.server_url().await?;
        let text = match url {
            Some(_) => format!(
                "Moving to {server}: every subscription gets a new endpoint there, and its app is told"
            ),
            None => server.clone(),
        };
        self.done(json!({ "server": server }), text);
        Ok(())
    }

    async fn reconnect(&self) -> Result<()> {
        self.admin
            .reconnect()
            .await
            .context("asking to reconnect")?;
        self.done(json!({ "reconnecting": true }), "Reconnecting".into());
        Ok(())
    }

    /// `send` to a subscription of the daemon's: its endpoint and keys, read over the bus.
    async fn send(&self, args: &SendArgs) -> Result<()> {
        let path = match sub_path(&args.target)? {
            Some(p) => p,
            None => self
                .manager
                .get_subscription(&args.target)
                .await
                .map_err(|e| {
                    let e = self.acting.scope_error(
                        e,
                        &args.target,
                        format!("finding {:?}", args.target),
                    );
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
        let p = sub_proxy(&self.conn, &path).await?;
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
        send::post(target, args, self.out).await
    }

    async fn notifications(&self, app: &str, state: OnOff) -> Result<()> {
        let allowed = matches!(state, OnOff::On);
        self.admin
            .set_notifications_allowed(app, allowed)
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
        self.done(
            json!({ "app_id": app, "notifications": allowed }),
            format!("Notifications {word} for {app}"),
        );
        Ok(())
    }

    /// The outcome of a command that changed something: `json` with `--json`, else `text`.
    async fn selftest(&self, timeout: u64) -> Result<()> {
        let report = webpushd::selftest::run(&self.conn, Duration::from_secs(timeout)).await;
        print_selftest(&report, self.out);
        match report.failed() {
            None => Ok(()),
            Some(s) => Err(anyhow!("self-test failed at step {}: {}", s.name, s.detail)),
        }
    }

    fn done(&self, json: Json, text: String) {
        if self.out.json {
            self.out.json(&json);
        } else {
            say!("{text}");
        }
    }
}

/// The session bus, owning `app_id` when pushctl acts as an app.
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
