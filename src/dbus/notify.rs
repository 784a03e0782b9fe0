//! Showing declarative push messages as desktop notifications
//! (`org.freedesktop.Notifications`), opening their URLs when clicked, and the launcher
//! badge (`com.canonical.Unity.LauncherEntry`).
//!
//! Privacy: remote `icon`/`image` URLs are never fetched here (that would tell a server
//! when the user is online, and download on the user's behalf); the app's own icon from its
//! desktop entry is used. Only http(s) URLs are ever opened.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zbus::proxy;
use zbus::zvariant::Value;

use crate::ids::AppId;
use crate::push::declarative::{is_web_url, Declarative};
use crate::push::SubscriptionInfo;

#[proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    #[zbus(signal)]
    fn action_invoked(&self, id: u32, action_key: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    fn notification_closed(&self, id: u32, reason: u32) -> zbus::Result<()>;
}

/// What a desktop entry says about an app.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesktopEntry {
    pub name: Option<String>,
    pub icon: Option<String>,
    pub dbus_activatable: bool,
}

/// Parse the `[Desktop Entry]` group (untranslated keys only).
pub fn parse_desktop_entry(text: &str) -> DesktopEntry {
    let mut e = DesktopEntry::default();
    let mut in_group = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_group = line == "[Desktop Entry]";
            continue;
        }
        if !in_group {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim() {
            "Name" => e.name = Some(v.trim().to_string()),
            "Icon" => e.icon = Some(v.trim().to_string()),
            "DBusActivatable" => e.dbus_activatable = v.trim() == "true",
            _ => {}
        }
    }
    e
}

/// `$XDG_DATA_HOME/applications`, then each of `$XDG_DATA_DIRS`, plus Flatpak's exports.
fn desktop_entry(app: &AppId) -> DesktopEntry {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let data_home = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".local/share"));
    let dirs =
        std::env::var("XDG_DATA_DIRS").unwrap_or_else(|_| "/usr/local/share:/usr/share".into());
    let mut roots = vec![data_home.clone(), data_home.join("flatpak/exports/share")];
    roots.extend(dirs.split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
    roots.push(PathBuf::from("/var/lib/flatpak/exports/share"));
    for root in roots {
        let file = root.join("applications").join(format!("{app}.desktop"));
        if let Ok(text) = std::fs::read_to_string(&file) {
            return parse_desktop_entry(&text);
        }
    }
    DesktopEntry::default()
}

/// The object path of an `org.freedesktop.Application` for `app` (Desktop Entry spec).
pub fn application_path(app: &str) -> String {
    let mut p = String::from("/");
    for c in app.chars() {
        p.push(match c {
            '.' => '/',
            '-' => '_',
            c => c,
        });
    }
    p
}

#[derive(Debug, Clone)]
struct Shown {
    app: AppId,
    navigate: String,
    actions: HashMap<String, String>,
}

/// Shows notifications and follows what the user does with them.
#[derive(Debug, Clone)]
pub struct Notifier {
    conn: zbus::Connection,
    shown: Arc<Mutex<HashMap<u32, Shown>>>,
    /// (app, tag) → notification id, for `replaces_id`.
    tags: Arc<Mutex<HashMap<(AppId, String), u32>>>,
    /// "No notification server" is logged once, not per message.
    warned: Arc<Mutex<bool>>,
    /// Notifications are shown one at a time, in order: a burst with one tag must end as
    /// one notification (each `Notify` needs the id the previous one got).
    queue: tokio::sync::mpsc::UnboundedSender<(SubscriptionInfo, Declarative, String)>,
}

fn urgency_byte(urgency: &str) -> u8 {
    match urgency {
        "very-low" | "low" => 0,
        "high" => 2,
        _ => 1,
    }
}

impl Notifier {
    /// Must be called inside the runtime: it starts the task that shows notifications.
    pub fn new(conn: zbus::Connection) -> Notifier {
        let (queue, mut jobs) = tokio::sync::mpsc::unbounded_channel();
        let n = Notifier {
            conn,
            shown: Arc::default(),
            tags: Arc::default(),
            warned: Arc::default(),
            queue,
        };
        let worker = n.clone();
        tokio::spawn(async move {
            while let Some((sub, d, urgency)) = jobs.recv().await {
                worker.show_now(&sub, &d, &urgency).await;
            }
        });
        n
    }

    /// Queue a notification; they are shown in order.
    pub fn show(&self, sub: SubscriptionInfo, d: Declarative, urgency: String) {
        let _ = self.queue.send((sub, d, urgency));
    }

    async fn show_now(&self, sub: &SubscriptionInfo, d: &Declarative, urgency: &str) {
        let n = &d.notification;
        let entry = desktop_entry(&sub.app_id);
        let app_name = entry.name.clone().unwrap_or_else(|| sub.app_id.to_string());
        let icon = entry.icon.clone().unwrap_or_else(|| sub.app_id.to_string());
        let key = (sub.app_id.clone(), n.tag.clone());
        let replaces = if n.tag.is_empty() {
            0
        } else {
            self.tags
                .lock()
                .expect("tags lock")
                .get(&key)
                .copied()
                .unwrap_or(0)
        };
        let mut actions: Vec<&str> = vec!["default", "Open"];
        for a in &n.actions {
            actions.push(&a.action);
            actions.push(&a.title);
        }
        let mut hints: HashMap<&str, Value<'_>> = HashMap::new();
        hints.insert("desktop-entry", Value::from(sub.app_id.as_str()));
        hints.insert("urgency", Value::from(urgency_byte(urgency)));
        if n.silent == Some(true) {
            hints.insert("suppress-sound", Value::from(true));
        }
        let timeout = if n.require_interaction { 0 } else { -1 };
        let proxy = match NotificationsProxy::new(&self.conn).await {
            Ok(p) => p,
            Err(e) => return self.missing(&e),
        };
        let result = proxy
            .notify(
                &app_name, replaces, &icon, &n.title, &n.body, &actions, hints, timeout,
            )
            .await;
        let id = match result {
            Ok(id) => id,
            Err(e) => return self.missing(&e),
        };
        *self.warned.lock().expect("warned lock") = false;
        debug!(subscription = sub.id, id, "notification shown");
        if !n.tag.is_empty() {
            self.tags.lock().expect("tags lock").insert(key, id);
        }
        self.shown.lock().expect("shown lock").insert(
            id,
            Shown {
                app: sub.app_id.clone(),
                navigate: n.navigate.clone(),
                actions: n
                    .actions
                    .iter()
                    .map(|a| (a.action.clone(), a.navigate.clone()))
                    .collect(),
            },
        );
        if let Some(count) = d.app_badge {
            self.badge(&sub.app_id, count).await;
        }
    }

    fn missing(&self, e: &zbus::Error) {
        let mut warned = self.warned.lock().expect("warned lock");
        if !*warned {
            warn!(error = %e, "cannot show notifications (no notification server?): messages wait for their apps");
            *warned = true;
        }
    }

    /// The launcher badge, as docks and KDE read it.
    async fn badge(&self, app: &AppId, count: u64) {
        let uri = format!("application://{app}.desktop");
        let mut props: HashMap<&str, Value<'_>> = HashMap::new();
        props.insert("count", Value::from(count as i64));
        props.insert("count-visible", Value::from(count > 0));
        let path = format!(
            "/com/canonical/unity/launcherentry/{}",
            application_path(app.as_str())
                .trim_start_matches('/')
                .replace('/', "_")
        );
        if let Err(e) = self
            .conn
            .emit_signal(
                None::<()>,
                path.as_str(),
                "com.canonical.Unity.LauncherEntry",
                "Update",
                &(uri, props),
            )
            .await
        {
            debug!(error = %e, "cannot set the launcher badge");
        }
    }

    /// Follow clicks and closes until `cancel`.
    pub async fn follow(self, cancel: CancellationToken) {
        let Ok(proxy) = NotificationsProxy::new(&self.conn).await else {
            return;
        };
        // One stream for both signals, in the order the server sent them: servers send
        // ActionInvoked and then NotificationClosed at once, and handling the close first
        // would lose the click.
        let Ok(mut signals) = proxy.inner().receive_all_signals().await else {
            return;
        };
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = signals.next() => match m { Some(m) => m, None => return },
            };
            let header = msg.header();
            match header.member().map(|m| m.as_str()) {
                Some("ActionInvoked") => {
                    let Ok((id, key)) = msg.body().deserialize::<(u32, String)>() else {
                        continue;
                    };
                    let target = {
                        let shown = self.shown.lock().expect("shown lock");
                        shown.get(&id).map(|s| {
                            let url = if key == "default" {
                                Some(s.navigate.clone())
                            } else {
                                s.actions.get(&key).cloned()
                            };
                            (s.app.clone(), url)
                        })
                    };
                    if let Some((app, Some(url))) = target {
                        self.open(&app, &url).await;
                    }
                }
                Some("NotificationClosed") => {
                    let Ok((id, _reason)) = msg.body().deserialize::<(u32, u32)>() else {
                        continue;
                    };
                    if let Some(s) = self.shown.lock().expect("shown lock").remove(&id) {
                        self.tags
                            .lock()
                            .expect("tags lock")
                            .retain(|k, v| !(k.0 == s.app && *v == id));
                    }
                }
                _ => {}
            }
        }
    }

    /// Open `url` for `app`: through the app when it is D-Bus activatable, else the
    /// OpenURI portal, else `xdg-open`.
    async fn open(&self, app: &AppId, url: &str) {
        if !is_web_url(url) {
            return;
        }
        let entry = desktop_entry(app);
        if entry.dbus_activatable {
            let platform: HashMap<&str, Value<'_>> = HashMap::new();
            let r = self
                .conn
                .call_method(
                    Some(app.as_str()),
                    application_path(app.as_str()).as_str(),
                    Some("org.freedesktop.Application"),
                    "Open",
                    &(vec![url], platform),
                )
                .await;
            match r {
                Ok(_) => return info!(%app, "notification opened in the app"),
                Err(e) => debug!(%app, error = %e, "Application.Open failed"),
            }
        }
        let options: HashMap<&str, Value<'_>> = HashMap::new();
        let portal = self
            .conn
            .call_method(
                Some("org.freedesktop.portal.Desktop"),
                "/org/freedesktop/portal/desktop",
                Some("org.freedesktop.portal.OpenURI"),
                "OpenURI",
                &("", url, options),
            )
            .await;
        if portal.is_ok() {
            return info!(%app, "notification opened through the OpenURI portal");
        }
        // Last resort. The child is reaped on a thread of its own.
        match std::process::Command::new("xdg-open").arg(url).spawn() {
            Ok(mut child) => {
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
            }
            Err(e) => {
                warn!(error = %e, "cannot open a notification's URL: no portal and no xdg-open")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desktop_entries() {
        let e = parse_desktop_entry("[Desktop Entry]\nName=Notes\nName[de]=Notizen\nIcon=notes\nDBusActivatable=true\n[Desktop Action new]\nName=New\n");
        assert_eq!(e.name.as_deref(), Some("Notes"));
        assert_eq!(e.icon.as_deref(), Some("notes"));
        assert!(e.dbus_activatable);
    }

    #[test]
    fn application_paths() {
        assert_eq!(application_path("org.example.Notes"), "/org/example/Notes");
        assert_eq!(application_path("org.my-app.Foo"), "/org/my_app/Foo");
    }
}
