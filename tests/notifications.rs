//! Declarative Web Push end to end: a declarative push message POSTed to an endpoint is
//! shown through `org.freedesktop.Notifications`, a click opens its URL in the app, and
//! anything else stays an ordinary message.
//!
//! The desktop is played by this test: a notification server that records every `Notify`
//! and emits `ActionInvoked`/`NotificationClosed` when told, a D-Bus activatable app
//! (`org.freedesktop.Application`) that records `Open`, an OpenURI portal, and an `xdg-open`
//! on the daemon's PATH. The daemon, the bus and the push server are the real ones.
//!
//! "Nothing was shown" cannot be waited for, so each such check is followed by a barrier:
//! something that must be shown (or opened) afterwards, after which the earlier thing
//! would have been recorded too.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value as Json};
use support::*;
use webpushd::client::ManagerProxy;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{OwnedObjectPath, OwnedValue, Value};

const NOTES: &str = "org.example.Notes";
const NOTES_PATH: &str = "/org/example/Notes";
/// An app whose desktop entry is not D-Bus activatable.
const PLAIN: &str = "org.example.Plain";
/// An app without a desktop entry.
const BARE: &str = "org.example.Bare";
const NOTIFICATIONS: &str = "org.freedesktop.Notifications";
const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";

// ---------------------------------------------------------------------------------------
// The notification server

/// One `Notify` call, all its arguments, the id it was given and when it came.
#[derive(Debug, Clone)]
struct Shown {
    app_name: String,
    replaces_id: u32,
    app_icon: String,
    summary: String,
    body: String,
    actions: Vec<String>,
    hints: HashMap<String, OwnedValue>,
    expire_timeout: i32,
    id: u32,
    at: Instant,
}

impl Shown {
    fn hint_str(&self, k: &str) -> Option<String> {
        match self.hints.get(k).map(|v| &**v) {
            Some(Value::Str(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    fn hint_bool(&self, k: &str) -> Option<bool> {
        match self.hints.get(k).map(|v| &**v) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    fn hint_u8(&self, k: &str) -> Option<u8> {
        match self.hints.get(k).map(|v| &**v) {
            Some(Value::U8(b)) => Some(*b),
            _ => None,
        }
    }
}

#[derive(Default)]
struct ServerLog {
    shown: Vec<Shown>,
    closed_by_call: Vec<u32>,
    last_id: u32,
    /// How long `Notify` takes to answer, as a busy desktop shell might.
    delay: Duration,
}

struct NotificationServer {
    log: Arc<Mutex<ServerLog>>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl NotificationServer {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedValue>,
        expire_timeout: i32,
    ) -> u32 {
        let delay = self.log.lock().unwrap().delay;
        tokio::time::sleep(delay).await;
        let mut log = self.log.lock().unwrap();
        // As servers do: a known replaces_id keeps its id, anything else gets a new one.
        let id = if replaces_id != 0 && replaces_id <= log.last_id {
            replaces_id
        } else {
            log.last_id += 1;
            log.last_id
        };
        log.shown.push(Shown {
            app_name,
            replaces_id,
            app_icon,
            summary,
            body,
            actions,
            hints,
            expire_timeout,
            id,
            at: Instant::now(),
        });
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["actions".into(), "body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "webpushd-test".into(),
            "webpushd".into(),
            "0".into(),
            "1.2".into(),
        )
    }

    async fn close_notification(
        &self,
        id: u32,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        self.log.lock().unwrap().closed_by_call.push(id);
        // Reason 3: closed by a call to CloseNotification.
        let _ = Self::notification_closed(&emitter, id, 3).await;
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn notification_closed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

/// The test's notification server on the bus, owning `org.freedesktop.Notifications`.
struct Notifications {
    conn: zbus::Connection,
    log: Arc<Mutex<ServerLog>>,
}

impl Notifications {
    async fn start(bus: &Bus) -> Notifications {
        let log = Arc::new(Mutex::new(ServerLog::default()));
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name(NOTIFICATIONS)
            .unwrap()
            .serve_at(NOTIFICATIONS_PATH, NotificationServer { log: log.clone() })
            .unwrap()
            .build()
            .await
            .unwrap();
        Notifications { conn, log }
    }

    fn shown(&self) -> Vec<Shown> {
        self.log.lock().unwrap().shown.clone()
    }

    /// The `Notify` calls from `app_name`.
    fn shown_for(&self, app_name: &str) -> Vec<Shown> {
        self.shown()
            .into_iter()
            .filter(|s| s.app_name == app_name)
            .collect()
    }

    /// Wait for the `Notify` call with this summary.
    async fn wait_for(&self, summary: &str) -> Shown {
        eventually(&format!("Notify({summary:?})"), || async {
            self.shown().into_iter().find(|s| s.summary == summary)
        })
        .await
    }

    async fn emitter(&self) -> SignalEmitter<'static> {
        SignalEmitter::new(&self.conn, NOTIFICATIONS_PATH)
            .unwrap()
            .into_owned()
    }

    /// The user clicks the notification (`"default"`) or one of its actions.
    async fn click(&self, id: u32, key: &str) {
        NotificationServer::action_invoked(&self.emitter().await, id, key)
            .await
            .unwrap();
    }

    /// The notification goes away (reason 2: dismissed by the user).
    async fn dismiss(&self, id: u32) {
        NotificationServer::notification_closed(&self.emitter().await, id, 2)
            .await
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// The desktop's other parts: an activatable app, the OpenURI portal, xdg-open

type Calls<T> = Arc<Mutex<Vec<T>>>;

/// `org.freedesktop.Application` of the test app; records what it is asked.
struct Application {
    opened: Calls<Vec<String>>,
    activated: Calls<String>,
}

#[zbus::interface(name = "org.freedesktop.Application")]
impl Application {
    fn activate(&self, _platform_data: HashMap<String, OwnedValue>) {
        self.activated.lock().unwrap().push(String::new());
    }

    fn open(&self, uris: Vec<String>, _platform_data: HashMap<String, OwnedValue>) {
        self.opened.lock().unwrap().push(uris);
    }

    fn activate_action(
        &self,
        action_name: String,
        _parameter: Vec<OwnedValue>,
        _platform_data: HashMap<String, OwnedValue>,
    ) {
        self.activated.lock().unwrap().push(action_name);
    }
}

/// The Notes app on the bus: its Manager proxy and what its `Application` was asked.
struct Notes {
    app: App,
    opened: Calls<Vec<String>>,
    activated: Calls<String>,
}

impl Notes {
    async fn start(bus: &Bus) -> Notes {
        let opened: Calls<Vec<String>> = Default::default();
        let activated: Calls<String> = Default::default();
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .name(NOTES)
            .unwrap()
            .serve_at(
                NOTES_PATH,
                Application {
                    opened: opened.clone(),
                    activated: activated.clone(),
                },
            )
            .unwrap()
            .build()
            .await
            .unwrap();
        Notes {
            app: App::new(conn).await,
            opened,
            activated,
        }
    }

    fn opened(&self) -> Vec<Vec<String>> {
        self.opened.lock().unwrap().clone()
    }

    /// Wait for the `n`-th `Open` call and return its URIs.
    async fn wait_open(&self, n: usize) -> Vec<String> {
        eventually(&format!("Open call {n} on {NOTES_PATH}"), || async {
            self.opened().get(n - 1).cloned()
        })
        .await
    }
}

/// `org.freedesktop.portal.OpenURI` at the portal's name and path; records the URIs.
struct Portal {
    uris: Calls<String>,
}

#[zbus::interface(name = "org.freedesktop.portal.OpenURI")]
impl Portal {
    #[zbus(name = "OpenURI")]
    fn open_uri(
        &self,
        _parent_window: String,
        uri: String,
        _options: HashMap<String, OwnedValue>,
    ) -> OwnedObjectPath {
        self.uris.lock().unwrap().push(uri);
        OwnedObjectPath::try_from("/org/freedesktop/portal/desktop/request/1_1/t").unwrap()
    }
}

/// A fake `xdg-open` that appends its arguments to a file, and a PATH that finds it first.
fn fake_xdg_open(dir: &Path) -> (String, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("xdg-open.log");
    let script = bin.join("xdg-open");
    std::fs::write(
        &script,
        format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n", log.display()),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    (path, log)
}

// ---------------------------------------------------------------------------------------
// The world: bus, desktop entries, notification server, push server, daemon

struct W {
    bus: Bus,
    _server: webpushd::server::PushServer,
    daemon: Daemon,
    /// `None` when the test runs without a notification server.
    notifications: Option<Notifications>,
    _dir: tempfile::TempDir,
}

#[derive(Default)]
struct Setup<'a> {
    /// Extra config text, e.g. a `[notifications]` table.
    config: &'a str,
    /// Start without a notification server on the bus.
    no_server: bool,
    /// Extra daemon environment.
    env: Vec<(&'a str, String)>,
}

/// The desktop entries go to the daemon's `$HOME/.local/share/applications` before it starts.
fn write_desktop_entries(home: &Path) {
    let apps = home.join(".local/share/applications");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        apps.join(format!("{NOTES}.desktop")),
        "[Desktop Entry]\nType=Application\nName=Notes\nIcon=notes\nExec=notes %U\nDBusActivatable=true\n",
    )
    .unwrap();
    std::fs::write(
        apps.join(format!("{PLAIN}.desktop")),
        "[Desktop Entry]\nType=Application\nName=Plain\nIcon=plain\nExec=plain %U\n",
    )
    .unwrap();
}

impl W {
    async fn new(setup: Setup<'_>) -> W {
        let dir = tempfile::tempdir().unwrap();
        write_desktop_entries(dir.path());
        let bus = Bus::start();
        let notifications = if setup.no_server {
            None
        } else {
            Some(Notifications::start(&bus).await)
        };
        let server = push_server(dir.path()).await;
        let env: Vec<(&str, &str)> = setup.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut daemon = Daemon::spawn_env(
            &bus,
            dir.path(),
            &Daemon::config_for(&server.ws_url(), setup.config),
            &[],
            &env,
        );
        daemon.wait_ready(&bus).await;
        W {
            bus,
            _server: server,
            daemon,
            notifications,
            _dir: dir,
        }
    }

    fn n(&self) -> &Notifications {
        self.notifications
            .as_ref()
            .expect("this test has a notification server")
    }

    /// An unrelated, unsandboxed connection: the user.
    async fn observer(&self) -> App {
        App::new(self.bus.connect().await).await
    }

    /// Run pushctl against this daemon, off the runtime's threads.
    async fn pushctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.daemon.pushctl_command();
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    async fn pushctl_ok(&self, args: &[&str]) -> String {
        let out = self.pushctl(args).await;
        assert!(
            out.status.success(),
            "pushctl {args:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

/// A subscription for an app that is not `Notes` (no Application object), left on the bus.
async fn other_app(w: &W, app_id: &str) -> (App, Sub) {
    let app = w.bus.app(app_id).await;
    let sub = app.subscribe("s").await;
    (app, sub)
}

// ---------------------------------------------------------------------------------------
// Payloads and messages

/// A declarative push message with this title and URL.
fn declarative(title: &str, navigate: &str) -> Json {
    json!({
        "web_push": 8030,
        "notification": { "title": title, "navigate": navigate }
    })
}

async fn send(sub: &Sub, payload: &Json) {
    send_bytes(sub, payload.to_string().as_bytes()).await;
}

async fn send_bytes(sub: &Sub, payload: &[u8]) {
    let resp = post(sub, payload).await;
    assert_eq!(resp.status, 201, "{}", resp.body);
}

/// A `Message` signal as the app sees it.
#[derive(Debug)]
struct Received {
    id: String,
    payload: Vec<u8>,
    meta: HashMap<String, OwnedValue>,
}

impl Received {
    fn flag(&self, k: &str) -> Option<bool> {
        match self.meta.get(k).map(|v| &**v) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }
}

async fn received(
    manager: &ManagerProxy<'static>,
) -> impl futures_util::Stream<Item = Received> + Unpin {
    let stream = manager.receive_message().await.unwrap();
    Box::pin(stream.filter_map(|sig| async move {
        let a = sig.args().ok()?;
        Some(Received {
            id: a.message_id().to_string(),
            payload: a.payload().to_vec(),
            meta: a.meta().clone(),
        })
    }))
}

async fn pending(app: &App, scope: &str) -> Vec<Vec<u8>> {
    app.manager
        .fetch_messages(scope)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, payload, _)| payload.into_vec())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread")]
async fn a_declarative_message_is_shown_once_with_the_desktop_entrys_name_and_icon() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut msgs = received(&notes.app.manager).await;

    let mut m = declarative("Lunch?", "https://notes.example/n/1");
    m["notification"]["body"] = json!("Ada: at noon");
    m["notification"]["tag"] = json!("n1");
    m["notification"]["actions"] = json!([
        { "action": "reply", "title": "Reply", "navigate": "https://notes.example/n/1#reply" },
        { "action": "archive", "title": "Archive", "navigate": "https://notes.example/n/1?archive=1" }
    ]);
    send(&sub, &m).await;

    let s = w.n().wait_for("Lunch?").await;
    assert_eq!(s.app_name, "Notes");
    assert_eq!(s.app_icon, "notes");
    assert_eq!(s.replaces_id, 0);
    assert_eq!(s.body, "Ada: at noon");
    assert_eq!(
        s.actions,
        ["default", "Open", "reply", "Reply", "archive", "Archive"]
    );
    assert_eq!(s.hint_str("desktop-entry").as_deref(), Some(NOTES), "{s:?}");
    assert_eq!(s.hint_u8("urgency"), Some(1), "{s:?}");
    assert_eq!(s.expire_timeout, -1);
    assert_ne!(s.hint_bool("suppress-sound"), Some(true), "{s:?}");

    // The running app hears of it too, marked as shown, and it is pending like any message.
    let r = next(&mut msgs, "the Message").await;
    assert_eq!(r.payload, m.to_string().as_bytes());
    assert_eq!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
    assert_eq!(
        pending(&notes.app, "inbox").await,
        [m.to_string().into_bytes()]
    );

    // Barrier: a second message shown after it; the first was shown exactly once.
    let mut quiet = declarative("Quiet", "https://notes.example/n/2");
    quiet["notification"]["requireInteraction"] = json!(true);
    quiet["notification"]["silent"] = json!(true);
    send(&sub, &quiet).await;
    let q = w.n().wait_for("Quiet").await;
    assert_eq!(q.expire_timeout, 0, "requireInteraction: no expiry");
    assert_eq!(q.hint_bool("suppress-sound"), Some(true), "{q:?}");
    assert_eq!(q.body, "");
    assert_eq!(q.actions, ["default", "Open"]);
    assert_eq!(q.replaces_id, 0, "no tag, nothing to replace");
    let titles: Vec<String> = w.n().shown().into_iter().map(|s| s.summary).collect();
    assert_eq!(titles, ["Lunch?", "Quiet"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_tag_replaces_the_earlier_notification() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let (_other, other_sub) = other_app(&w, BARE).await;

    let tagged = |title: &str, tag: &str| {
        let mut m = declarative(title, "https://notes.example/");
        m["notification"]["tag"] = json!(tag);
        m
    };
    send(&sub, &tagged("one", "t")).await;
    let first = w.n().wait_for("one").await;
    assert_eq!(first.replaces_id, 0);
    send(&sub, &tagged("two", "t")).await;
    let second = w.n().wait_for("two").await;
    assert_eq!(second.replaces_id, first.id, "same tag, same app");
    // Another tag is another notification.
    send(&sub, &tagged("three", "u")).await;
    assert_eq!(w.n().wait_for("three").await.replaces_id, 0);
    // The same tag from another app replaces nothing of Notes'.
    send(&other_sub, &tagged("theirs", "t")).await;
    let theirs = w.n().wait_for("theirs").await;
    assert_eq!(theirs.replaces_id, 0, "tags are per app");
    // Without a desktop entry, the app id names the app and its icon.
    assert_eq!(theirs.app_name, BARE);
    assert_eq!(theirs.app_icon, BARE);
    assert_eq!(theirs.hint_str("desktop-entry").as_deref(), Some(BARE));
    // And Notes' tag t still points at its notification.
    send(&sub, &tagged("four", "t")).await;
    assert_eq!(w.n().wait_for("four").await.replaces_id, first.id);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_with_one_tag_leaves_one_notification() {
    // Messages that arrive together (a chat's quick replies) with one tag: each replaces
    // the one before, however fast they come.
    let w = W::new(Setup::default()).await;
    w.n().log.lock().unwrap().delay = Duration::from_millis(100);
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let msgs: Vec<Json> = (0..5)
        .map(|n| {
            let mut m = declarative(&format!("burst {n}"), "https://notes.example/");
            m["notification"]["tag"] = json!("burst");
            m
        })
        .collect();
    futures_util::future::join_all(msgs.iter().map(|m| send(&sub, m))).await;
    eventually("five Notify calls", || async {
        (w.n().shown().len() >= 5).then_some(())
    })
    .await;
    let shown = w.n().shown();
    let first = shown[0].id;
    assert_eq!(shown[0].replaces_id, 0, "{shown:?}");
    for s in &shown[1..] {
        assert_eq!(
            s.replaces_id, first,
            "{} did not replace: {shown:?}",
            s.summary
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_click_opens_the_url_in_the_activatable_app() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut m = declarative("Click me", "https://notes.example/n/7");
    m["notification"]["actions"] = json!([
        { "action": "reply", "title": "Reply", "navigate": "https://notes.example/n/7/reply?x=1:2" },
        { "action": "later", "title": "Later", "navigate": "http://notes.example:8080/later" }
    ]);
    send(&sub, &m).await;
    let s = w.n().wait_for("Click me").await;

    w.n().click(s.id, "reply").await;
    assert_eq!(
        notes.wait_open(1).await,
        ["https://notes.example/n/7/reply?x=1:2"]
    );
    w.n().click(s.id, "default").await;
    assert_eq!(notes.wait_open(2).await, ["https://notes.example/n/7"]);

    // Clicks that are not this daemon's: an unknown id, an undeclared key. Then a real
    // one as the barrier: only it opens anything.
    w.n().click(s.id + 100, "default").await;
    w.n().click(s.id, "no-such-action").await;
    w.n().click(s.id, "later").await;
    assert_eq!(
        notes.wait_open(3).await,
        ["http://notes.example:8080/later"]
    );
    assert_eq!(notes.opened().len(), 3, "{:?}", notes.opened());
    // Open, not Activate or ActivateAction.
    assert!(notes.activated.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_notification_is_forgotten() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut m = declarative("Gone soon", "https://notes.example/gone");
    m["notification"]["tag"] = json!("g");
    send(&sub, &m).await;
    let gone = w.n().wait_for("Gone soon").await;
    send(&sub, &declarative("Stays", "https://notes.example/stays")).await;
    let stays = w.n().wait_for("Stays").await;

    w.n().dismiss(gone.id).await;
    // A click on a closed notification opens nothing (barrier: a click on the other).
    w.n().click(gone.id, "default").await;
    w.n().click(stays.id, "default").await;
    assert_eq!(notes.wait_open(1).await, ["https://notes.example/stays"]);
    assert_eq!(notes.opened().len(), 1, "{:?}", notes.opened());
    // Its tag no longer names a notification to replace.
    let mut again = declarative("Gone again", "https://notes.example/gone");
    again["notification"]["tag"] = json!("g");
    send(&sub, &again).await;
    assert_eq!(w.n().wait_for("Gone again").await.replaces_id, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_click_followed_at_once_by_the_close_still_opens() {
    // Servers close a clicked notification right after ActionInvoked (reason 2); the
    // close must not overtake the click.
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut want = vec![];
    for n in 0..8 {
        let url = format!("https://notes.example/c/{n}");
        send(&sub, &declarative(&format!("c{n}"), &url)).await;
        let s = w.n().wait_for(&format!("c{n}")).await;
        w.n().click(s.id, "default").await;
        w.n().dismiss(s.id).await;
        want.push(vec![url]);
    }
    // Barrier: a last click, not closed; every earlier Open came before its.
    send(&sub, &declarative("last", "https://notes.example/last")).await;
    let s = w.n().wait_for("last").await;
    w.n().click(s.id, "default").await;
    want.push(vec!["https://notes.example/last".to_string()]);
    eventually("the last click's Open", || async {
        notes.opened().contains(want.last().unwrap()).then_some(())
    })
    .await;
    assert_eq!(notes.opened(), want, "a click was lost to its close");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_action_invoked_from_another_connection_opens_nothing() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    send(&sub, &declarative("Real", "https://notes.example/real")).await;
    let s = w.n().wait_for("Real").await;

    // Any client can emit a signal with the notification server's path and interface;
    // only the owner of org.freedesktop.Notifications speaks for the user.
    let forger = w.bus.connect().await;
    forger
        .emit_signal(
            None::<&str>,
            NOTIFICATIONS_PATH,
            NOTIFICATIONS,
            "ActionInvoked",
            &(s.id, "default"),
        )
        .await
        .unwrap();
    // Barrier: a real click after the forged one.
    w.n().click(s.id, "default").await;
    notes.wait_open(1).await;
    assert_eq!(notes.opened().len(), 1, "{:?}", notes.opened());
}

#[tokio::test(flavor = "multi_thread")]
async fn without_dbus_activation_a_click_goes_to_the_portal_then_xdg_open() {
    let dir = tempfile::tempdir().unwrap();
    let (path, xdg_log) = fake_xdg_open(dir.path());
    let w = W::new(Setup {
        env: vec![("PATH", path)],
        ..Default::default()
    })
    .await;
    let (_plain, sub) = other_app(&w, PLAIN).await;

    // With the OpenURI portal on the bus, it opens the URL.
    let uris: Calls<String> = Default::default();
    let portal = zbus::connection::Builder::address(w.bus.address.as_str())
        .unwrap()
        .name("org.freedesktop.portal.Desktop")
        .unwrap()
        .serve_at(
            "/org/freedesktop/portal/desktop",
            Portal { uris: uris.clone() },
        )
        .unwrap()
        .build()
        .await
        .unwrap();
    send(&sub, &declarative("Via portal", "https://plain.example/p")).await;
    let s = w.n().wait_for("Via portal").await;
    assert_eq!(s.app_name, "Plain");
    assert_eq!(s.app_icon, "plain");
    w.n().click(s.id, "default").await;
    let got = eventually("OpenURI", || async {
        let u = uris.lock().unwrap().clone();
        (!u.is_empty()).then_some(u)
    })
    .await;
    assert_eq!(got, ["https://plain.example/p"]);

    // Without it, xdg-open.
    portal.close().await.unwrap();
    let dbus = zbus::fdo::DBusProxy::new(&w.bus.connect().await)
        .await
        .unwrap();
    eventually("the portal to leave the bus", || async {
        let name = zbus::names::BusName::try_from("org.freedesktop.portal.Desktop").unwrap();
        (!dbus.name_has_owner(name).await.ok()?).then_some(())
    })
    .await;
    send(
        &sub,
        &declarative("Via xdg-open", "https://plain.example/x"),
    )
    .await;
    let s = w.n().wait_for("Via xdg-open").await;
    w.n().click(s.id, "default").await;
    let log = eventually("xdg-open to run", || async {
        std::fs::read_to_string(&xdg_log).ok()
    })
    .await;
    assert_eq!(log, "https://plain.example/x\n");
    assert_eq!(uris.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_malformed_declarative_message_is_an_ordinary_message() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut msgs = received(&notes.app.manager).await;

    let payloads: Vec<Vec<u8>> = [
        // No navigate.
        r#"{"web_push":8030,"notification":{"title":"no navigate"}}"#,
        // No title.
        r#"{"web_push":8030,"notification":{"navigate":"https://notes.example/"}}"#,
        // Not a URL, relative, or not http(s).
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"not a url"}}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"/relative"}}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"file:///etc/passwd"}}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"javascript:alert(1)"}}"#,
        // Another magic number, or none.
        r#"{"web_push":8031,"notification":{"title":"t","navigate":"https://notes.example/"}}"#,
        r#"{"web_push":"8030","notification":{"title":"t","navigate":"https://notes.example/"}}"#,
        r#"{"notification":{"title":"t","navigate":"https://notes.example/"}}"#,
        // Wrong types.
        r#"{"web_push":8030,"notification":{"title":7,"navigate":"https://notes.example/"}}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"https://notes.example/","actions":[{"action":"a","title":"A"}]}}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"https://notes.example/","actions":[{"action":"a","title":"A","navigate":"not a url"}]}}"#,
        // A badge must be a count: a number or, as Safari takes it, a string of digits.
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"https://notes.example/"},"app_badge":"three"}"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"https://notes.example/"},"mutable":"yes"}"#,
        // Not an object, not JSON.
        r#"[8030]"#,
        r#"{"web_push":8030,"notification":{"title":"t","navigate":"https://notes.example/""#,
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    // Not UTF-8.
    .chain([b"{\"web_push\":8030,\"notification\":{\"title\":\"\xff\",\"navigate\":\"https://notes.example/\"}}".to_vec()])
    .collect();

    for p in &payloads {
        send_bytes(&sub, p).await;
        let r = next(&mut msgs, "the ordinary Message").await;
        assert_eq!(
            r.payload,
            *p,
            "delivered with its exact bytes: {}",
            String::from_utf8_lossy(p)
        );
        assert_ne!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
        assert_ne!(r.flag("declarative"), Some(true), "{:?}", r.meta);
    }
    assert_eq!(pending(&notes.app, "inbox").await, payloads);

    // Barrier: a valid one is shown, and it is the only Notify.
    send(&sub, &declarative("Valid", "https://notes.example/ok")).await;
    w.n().wait_for("Valid").await;
    let titles: Vec<String> = w.n().shown().into_iter().map(|s| s.summary).collect();
    assert_eq!(titles, ["Valid"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutable_message_is_the_apps_to_handle_within_the_grace() {
    let w = W::new(Setup {
        config: "[notifications]\nmutable_grace = \"500ms\"\n",
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut msgs = received(&notes.app.manager).await;

    // The app acknowledges at once: it handled it, nothing is shown.
    let mut handled = declarative("Handled", "https://notes.example/h");
    handled["mutable"] = json!(true);
    send(&sub, &handled).await;
    let r = next(&mut msgs, "the mutable Message").await;
    assert_eq!(r.payload, handled.to_string().as_bytes());
    assert_eq!(r.flag("declarative"), Some(true), "{:?}", r.meta);
    assert_ne!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
    notes.app.manager.ack_message("inbox", &r.id).await.unwrap();

    // The app does not acknowledge: shown after the grace.
    let mut ignored = declarative("Ignored", "https://notes.example/i");
    ignored["mutable"] = json!(true);
    send(&sub, &ignored).await;
    let r = next(&mut msgs, "the second mutable Message").await;
    let got = Instant::now();
    assert_eq!(r.payload, ignored.to_string().as_bytes());
    assert_eq!(r.flag("declarative"), Some(true), "{:?}", r.meta);
    let s = w.n().wait_for("Ignored").await;
    let waited = s.at.duration_since(got);
    assert!(
        waited >= Duration::from_millis(400),
        "shown {waited:?} after the Message; the grace is 500ms"
    );
    // Still the app's: pending until it acknowledges.
    assert_eq!(
        pending(&notes.app, "inbox").await,
        [ignored.to_string().into_bytes()]
    );
    // The acknowledged one was never shown, long after its grace.
    assert!(w.n().shown().iter().all(|s| s.summary != "Handled"));
    assert_eq!(w.n().shown().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mutable_message_for_an_app_that_is_not_running_is_shown_at_once() {
    // A grace longer than the test waits: only an immediate Notify passes.
    let w = W::new(Setup {
        config: "[notifications]\nmutable_grace = \"1h\"\n",
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    notes.app.conn.close().await.unwrap();
    away(&w, &sub).await;
    let mut m = declarative("Nobody home", "https://notes.example/away");
    m["mutable"] = json!(true);
    send(&sub, &m).await;
    w.n().wait_for("Nobody home").await;
}

/// Wait until the daemon treats the subscription's app as away: an ordinary message costs
/// quota. Returns the quota left.
async fn away(w: &W, sub: &Sub) -> i32 {
    let observer = w.observer().await;
    let props = observer.subscription(&sub.path).await;
    let before = props.push_count().await.unwrap();
    send_bytes(sub, b"are you there?").await;
    eventually("a background message to cost quota", || async {
        let count = props.push_count().await.ok()?;
        let quota = props.quota().await.ok()?;
        (count > before && quota < 16).then_some(quota)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn with_notifications_off_nothing_is_shown_and_the_message_waits() {
    let mut w = W::new(Setup::default()).await;
    // Off before the app has a subscription, as the user, through pushctl.
    let out = w.pushctl_ok(&["notifications", NOTES, "off"]).await;
    assert_eq!(out.trim(), format!("Notifications off for {NOTES}"));
    let j: Json = serde_json::from_str(
        &w.pushctl_ok(&["--json", "notifications", NOTES, "off"])
            .await,
    )
    .unwrap();
    assert_eq!(j, json!({ "app_id": NOTES, "notifications": false }));
    // Not an app id: the daemon's refusal, on one line.
    let out = w.pushctl(&["notifications", "org/example", "off"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("InvalidArgument"), "{err}");

    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let (_other, other_sub) = other_app(&w, BARE).await;
    let mut msgs = received(&notes.app.manager).await;
    let off = declarative("Not shown", "https://notes.example/off");
    send(&sub, &off).await;
    let r = next(&mut msgs, "the Message").await;
    assert_eq!(r.payload, off.to_string().as_bytes());
    assert_ne!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
    // Barrier: another app's is shown, Notes' is not.
    send(
        &other_sub,
        &declarative("Other app", "https://bare.example/"),
    )
    .await;
    w.n().wait_for("Other app").await;
    assert!(w.n().shown_for("Notes").is_empty(), "{:?}", w.n().shown());
    assert_eq!(
        pending(&notes.app, "inbox").await,
        [off.to_string().into_bytes()]
    );

    // The choice outlives the daemon.
    w.daemon.restart(&w.bus).await;
    let still = declarative("Still not shown", "https://notes.example/off2");
    send(&sub, &still).await;
    next(&mut msgs, "the Message after the restart").await;
    send(
        &other_sub,
        &declarative("Other again", "https://bare.example/"),
    )
    .await;
    w.n().wait_for("Other again").await;
    assert!(w.n().shown_for("Notes").is_empty(), "{:?}", w.n().shown());

    // On again: shown.
    let out = w.pushctl_ok(&["notifications", NOTES, "on"]).await;
    assert_eq!(out.trim(), format!("Notifications on for {NOTES}"));
    send(&sub, &declarative("Shown", "https://notes.example/on")).await;
    w.n().wait_for("Shown").await;
    assert_eq!(w.n().shown_for("Notes").len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_config_shows_nothing() {
    let w = W::new(Setup {
        config: "[notifications]\nenabled = false\n",
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut msgs = received(&notes.app.manager).await;
    let m = declarative("Disabled", "https://notes.example/");
    send(&sub, &m).await;
    let r = next(&mut msgs, "the Message").await;
    assert_eq!(r.payload, m.to_string().as_bytes());
    assert_ne!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
    // Nothing can be shown to wait for: an ordinary message after it, then a moment for
    // a late Notify.
    send_bytes(&sub, b"after").await;
    next(&mut msgs, "the ordinary Message").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(w.n().shown().is_empty(), "{:?}", w.n().shown());
}

#[tokio::test(flavor = "multi_thread")]
async fn shown_notifications_cost_no_quota() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    notes.app.conn.close().await.unwrap();
    let observer = w.observer().await;
    let props = observer.subscription(&sub.path).await;
    let state = || async {
        (
            props.push_count().await.unwrap(),
            props.quota().await.unwrap(),
        )
    };

    // An ordinary message in the background costs one: the daemon knows the app is away.
    send_bytes(&sub, b"ordinary").await;
    assert_eq!(
        eventually("the ordinary message", || async {
            let s = state().await;
            (s.0 == 1).then_some(s)
        })
        .await,
        (1, 15)
    );
    // Three shown notifications cost nothing.
    for n in 0..3 {
        send(
            &sub,
            &declarative(&format!("bg {n}"), "https://notes.example/"),
        )
        .await;
        w.n().wait_for(&format!("bg {n}")).await;
    }
    assert_eq!(
        eventually("three more messages", || async {
            let s = state().await;
            (s.0 == 4).then_some(s)
        })
        .await,
        (4, 15)
    );
    // And the next ordinary one costs again.
    send_bytes(&sub, b"ordinary again").await;
    assert_eq!(
        eventually("the last message", || async {
            let s = state().await;
            (s.0 == 5).then_some(s)
        })
        .await,
        (5, 14)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_notification_server_the_message_waits_and_the_daemon_is_fine() {
    let w = W::new(Setup {
        no_server: true,
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let mut msgs = received(&notes.app.manager).await;
    let m = declarative("Nobody shows this", "https://notes.example/");
    send(&sub, &m).await;
    let r = next(&mut msgs, "the Message").await;
    assert_eq!(r.payload, m.to_string().as_bytes());
    assert_ne!(r.flag("notification_shown"), Some(true), "{:?}", r.meta);
    assert_eq!(
        pending(&notes.app, "inbox").await,
        [m.to_string().into_bytes()]
    );

    // The daemon answers and goes on delivering.
    let status = w.observer().await.admin.status().await.unwrap();
    assert!(status.contains_key("state"), "{status:?}");
    send_bytes(&sub, b"ordinary").await;
    assert_eq!(
        next(&mut msgs, "the next Message").await.payload,
        b"ordinary"
    );

    // A notification server that starts later is used for the next one.
    let n = Notifications::start(&w.bus).await;
    let observer = w.observer().await;
    eventually("the daemon to see the notification server", || async {
        let s = observer.admin.status().await.ok()?;
        let on: bool = s.get("notification_server")?.try_into().ok()?;
        on.then_some(())
    })
    .await;
    send(&sub, &declarative("Now shown", "https://notes.example/")).await;
    n.wait_for("Now shown").await;
    assert!(n.shown().iter().all(|s| s.summary != "Nobody shows this"));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_notification_server_a_background_message_costs_quota() {
    // Nothing was shown, so nothing made it user-visible: it costs like any other.
    let w = W::new(Setup {
        no_server: true,
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    notes.app.conn.close().await.unwrap();
    assert_eq!(away(&w, &sub).await, 15);
    let observer = w.observer().await;
    let props = observer.subscription(&sub.path).await;
    send(&sub, &declarative("Unseen", "https://notes.example/")).await;
    let quota = eventually("the declarative message", || async {
        (props.push_count().await.ok()? == 2).then_some(props.quota().await.ok()?)
    })
    .await;
    assert_eq!(quota, 14);
}

#[tokio::test(flavor = "multi_thread")]
async fn beyond_the_rate_limit_messages_are_not_shown_but_wait() {
    let w = W::new(Setup {
        config: "[notifications]\nrate_per_minute = 2\n",
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let (_other, other_sub) = other_app(&w, BARE).await;
    let mut msgs = received(&notes.app.manager).await;

    let mut flags = vec![];
    for n in 1..=3 {
        send(
            &sub,
            &declarative(&format!("r{n}"), "https://notes.example/"),
        )
        .await;
        flags.push(
            next(&mut msgs, "a Message")
                .await
                .flag("notification_shown"),
        );
    }
    assert_eq!(flags[..2], [Some(true), Some(true)], "{flags:?}");
    assert_ne!(flags[2], Some(true), "the third is over the limit");
    // Barrier: the limit is per app, another app's is shown.
    send(
        &other_sub,
        &declarative("Other app", "https://bare.example/"),
    )
    .await;
    w.n().wait_for("Other app").await;
    let titles: Vec<String> = w
        .n()
        .shown_for("Notes")
        .into_iter()
        .map(|s| s.summary)
        .collect();
    assert_eq!(titles, ["r1", "r2"]);
    assert_eq!(pending(&notes.app, "inbox").await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn app_badge_updates_the_launcher_entry() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let listener = w.bus.connect().await;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("com.canonical.Unity.LauncherEntry")
        .unwrap()
        .member("Update")
        .unwrap()
        .build();
    let mut updates = Box::pin(
        zbus::MessageStream::for_match_rule(rule, &listener, None)
            .await
            .unwrap()
            .filter_map(|m| async move {
                m.ok()?
                    .body()
                    .deserialize::<(String, HashMap<String, OwnedValue>)>()
                    .ok()
            }),
    );

    // The draft's top-level number, then Safari's string of digits inside `notification`.
    for (badge, visible, safari) in [(3, true, false), (0, false, false), (5, true, true)] {
        let mut m = declarative(&format!("badge {badge}"), "https://notes.example/");
        if safari {
            m["notification"]["app_badge"] = json!(badge.to_string());
        } else {
            m["app_badge"] = json!(badge);
        }
        send(&sub, &m).await;
        let (uri, props) = next(&mut updates, "LauncherEntry.Update").await;
        assert_eq!(uri, format!("application://{NOTES}.desktop"));
        assert_eq!(
            props.get("count").map(|v| &**v),
            Some(&Value::I64(badge)),
            "{props:?}"
        );
        assert_eq!(
            props.get("count-visible").map(|v| &**v),
            Some(&Value::Bool(visible)),
            "{props:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_icons_and_images_are_never_fetched() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut m = declarative("Pictures", "https://notes.example/");
    m["notification"]["icon"] = json!(format!("{base}/icon.png"));
    m["notification"]["image"] = json!(format!("{base}/image.png"));
    m["notification"]["badge"] = json!(format!("{base}/badge.png"));
    send(&sub, &m).await;
    let s = w.n().wait_for("Pictures").await;
    // The icon is the desktop entry's, and no URL goes to the server either (it would
    // fetch it).
    assert_eq!(s.app_icon, "notes");
    for (k, v) in &s.hints {
        assert!(
            !format!("{v:?}").contains(&base),
            "hint {k} passes a remote URL on: {v:?}"
        );
    }
    // Anything that would fetch did so before Notify; give a late one a moment.
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the daemon connected to {base}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pushctl_send_with_a_title_is_shown_and_its_action_opens() {
    let w = W::new(Setup::default()).await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    let keys = [
        webpushd::crypto::b64_encode(&sub.p256dh),
        webpushd::crypto::b64_encode(&sub.auth),
    ];
    let send_args = |title: &'static str| {
        let mut v = vec![
            "send".to_string(),
            sub.endpoint.clone(),
            "--p256dh".into(),
            keys[0].clone(),
            "--auth".into(),
            keys[1].clone(),
            "--title".into(),
            title.into(),
        ];
        v.extend(
            [
                "--body",
                "From a terminal",
                "--navigate",
                "https://notes.example/t",
                "--tag",
                "term",
                "--action",
                "open:Open it:https://notes.example/t?via=action",
                "--require-interaction",
            ]
            .map(String::from),
        );
        v
    };
    let args = send_args("From pushctl");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    w.pushctl_ok(&args).await;
    let s = w.n().wait_for("From pushctl").await;
    assert_eq!(s.body, "From a terminal");
    assert_eq!(s.actions, ["default", "Open", "open", "Open it"]);
    assert_eq!(s.expire_timeout, 0);
    assert_eq!(s.hint_str("desktop-entry").as_deref(), Some(NOTES));

    let args = send_args("Again");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    w.pushctl_ok(&args).await;
    assert_eq!(w.n().wait_for("Again").await.replaces_id, s.id);

    w.n().click(s.id, "open").await;
    assert_eq!(
        notes.wait_open(1).await,
        ["https://notes.example/t?via=action"]
    );
}

/// Whether each pending message says it was shown, as `FetchMessages` tells the app.
async fn fetched_shown(app: &App, scope: &str) -> Vec<(Vec<u8>, bool)> {
    app.manager
        .fetch_messages(scope)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, payload, meta)| {
            let shown = matches!(
                meta.get("notification_shown").map(|v| &**v),
                Some(Value::Bool(true))
            );
            (payload.into_vec(), shown)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_shown_while_the_app_was_away_says_so_when_fetched() {
    let w = W::new(Setup {
        config: "[notifications]\nmutable_grace = \"300ms\"\n",
        ..Default::default()
    })
    .await;
    let notes = Notes::start(&w.bus).await;
    let sub = notes.app.subscribe("inbox").await;
    // Mutable, the app running but not taking it: the daemon shows it after the grace.
    let mut late = declarative("Late", "https://notes.example/late");
    late["mutable"] = json!(true);
    send(&sub, &late).await;
    w.n().wait_for("Late").await;
    notes.app.conn.close().await.unwrap();
    away(&w, &sub).await;
    // Shown at once while the app is away; away's ordinary message is not shown.
    let shown = declarative("While away", "https://notes.example/away");
    send(&sub, &shown).await;
    w.n().wait_for("While away").await;
    // The app comes back and fetches: it need not show the two again.
    let back = w.bus.app(NOTES).await;
    let got = eventually("three pending", || async {
        let v = fetched_shown(&back, "inbox").await;
        (v.len() == 3).then_some(v)
    })
    .await;
    assert_eq!(
        got,
        [
            (late.to_string().into_bytes(), true),
            (b"are you there?".to_vec(), false),
            (shown.to_string().into_bytes(), true),
        ]
    );
}
