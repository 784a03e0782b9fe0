//! The real window, under Xvfb (software rendering), against a real daemon on a private
//! session bus, used as a person would: it opens while the daemon is not running (D-Bus
//! activation starts it), shows apps as they subscribe and push, turns one app's
//! notifications off, and runs the self-test. Screenshots go to
//! `target/screenshots/settings-*.png`.
//!
//! Its own `main()`: GTK wants the main thread. Needs `Xvfb` when there is no `DISPLAY`
//! (`scripts/deps.sh` installs it) and the daemon's binaries, built by `cargo test`.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use adw::prelude::*;
use gtk::{gio, glib};
use webpushd::client::AdminProxy;
use webpushd_settings::view::{self, Daemon};
use webpushd_settings::window::{self, Ui};

#[path = "../../tests/support/private_bus.rs"]
mod private_bus;

const WAIT: Duration = Duration::from_secs(30);

fn main() {
    let t = Instant::now();
    let env = TestEnv::start();
    let app = adw::Application::builder()
        .application_id("org.webpushd.SettingsTest")
        .flags(gio::ApplicationFlags::NON_UNIQUE)
        .build();
    app.register(gio::Cancellable::NONE).expect("register");
    let ui = window::present(&app);

    says_clearly_when_the_daemon_cannot_start(&env, &ui);
    opens_while_the_daemon_is_not_running(&env, &ui);
    shows_apps_as_they_subscribe_and_push(&env, &ui);
    turning_notifications_off_reaches_the_daemon(&env, &ui);
    the_self_test_runs_from_the_window(&ui);
    screenshot(&ui, &ui.apps_page, "settings-apps.png");
    choosing_another_server_moves_the_daemon_and_back(&env, &ui);
    a_stopped_daemon_is_shown_not_restarted(&env, &ui);
    the_program_opens_and_shows_the_daemon(&env);

    ui.window.close();
    drop(env);
    println!("window: 8 passed in {:.1} s", t.elapsed().as_secs_f64());
}

fn says_clearly_when_the_daemon_cannot_start(_env: &TestEnv, ui: &Rc<Ui>) {
    wait_until("the window gives up on the daemon", || {
        matches!(ui.daemon(), Daemon::Unavailable(_))
    });
    let shown = window::texts(&ui.window);
    assert!(
        shown
            .iter()
            .any(|t| t == "The push daemon is not available"),
        "{shown:?}"
    );
    assert!(
        shown
            .iter()
            .any(|t| t.starts_with("The push daemon is not installed, or D-Bus cannot start it")),
        "why, in plain words: {shown:?}"
    );
    assert!(
        !shown.iter().any(|t| t == "Push Server"),
        "nothing that needs the daemon is offered: {shown:?}"
    );
    println!("ok: says_clearly_when_the_daemon_cannot_start");
}

fn opens_while_the_daemon_is_not_running(env: &TestEnv, ui: &Rc<Ui>) {
    // The daemon gets installed (its activation file appears); "Try Again" starts it.
    env.install_daemon();
    let retry = window::find(&ui.window, "retry")
        .and_then(|w| w.downcast::<gtk::Button>().ok())
        .expect("a Try Again button");
    retry.emit_clicked();
    wait_until("the daemon, started by activation, answers", || {
        matches!(ui.daemon(), Daemon::Running(_))
    });
    let shown = window::texts(&ui.apps_page);
    assert!(
        shown.iter().any(|t| t == "No app uses push yet"),
        "{shown:?}"
    );
    let service = window::texts(&ui.window);
    assert!(
        service
            .iter()
            .any(|t| t.starts_with("The local push service")),
        "the server in use is shown: {service:?}"
    );
    println!("ok: opens_while_the_daemon_is_not_running");
}

fn shows_apps_as_they_subscribe_and_push(env: &TestEnv, ui: &Rc<Ui>) {
    env.pushctl(&["--app-id", "org.example.Chat", "subscribe", "inbox"]);
    env.pushctl(&["--app-id", "org.example.Chat", "subscribe", "alerts"]);
    env.pushctl(&["--app-id", "org.example.Mail", "subscribe", "new-mail"]);
    wait_until("the three subscriptions are listed", || {
        let t = window::texts(&ui.apps_page);
        [
            "org.example.Chat",
            "org.example.Mail",
            "inbox",
            "alerts",
            "new-mail",
        ]
        .iter()
        .all(|want| t.iter().any(|s| s == want))
    });
    // A push to one of them: its counters change on screen, without a reload.
    env.pushctl(&["--app-id", "org.example.Chat", "send", "inbox", "hello"]);
    wait_until("the push and the waiting message are shown", || {
        window::texts(&ui.apps_page)
            .iter()
            .any(|s| s.starts_with("Web Push · 1 push · last just now") && s.ends_with("1 waiting"))
    });
    // What is shown is what the daemon has.
    let Daemon::Running(s) = ui.daemon() else {
        panic!("daemon")
    };
    let listed = env.pushctl(&["list", "--all", "--json"]);
    for sub in &s.subscriptions {
        assert!(
            listed.contains(&sub.scope),
            "{} shown but not in the daemon's list: {listed}",
            sub.scope
        );
    }
    assert_eq!(s.subscriptions.len(), 3);
    println!("ok: shows_apps_as_they_subscribe_and_push");
}

fn turning_notifications_off_reaches_the_daemon(env: &TestEnv, ui: &Rc<Ui>) {
    // A person goes to the Apps page first (the switch moves only where it is drawn).
    ui.window.set_visible_page(&ui.apps_page);
    let switch = window::find(&ui.apps_page, "notifications:org.example.Mail")
        .expect("a notifications switch for org.example.Mail")
        .downcast::<gtk::Switch>()
        .unwrap();
    assert!(switch.is_active(), "notifications are allowed by default");
    // As a click does.
    wait_until("the switch is on screen", || switch.is_mapped());
    assert!(switch.activate(), "the switch takes a click");
    wait_until(
        "the daemon forbids org.example.Mail's notifications",
        || env.denied() == ["org.example.Mail"],
    );
    wait_until("the window shows the switch off", || {
        window::find(&ui.apps_page, "notifications:org.example.Mail")
            .and_then(|w| w.downcast::<gtk::Switch>().ok())
            .is_some_and(|s| !s.is_active())
    });
    let chat = window::find(&ui.apps_page, "notifications:org.example.Chat")
        .and_then(|w| w.downcast::<gtk::Switch>().ok())
        .unwrap();
    assert!(chat.is_active(), "the other app keeps its notifications");
    println!("ok: turning_notifications_off_reaches_the_daemon");
}

fn the_self_test_runs_from_the_window(ui: &Rc<Ui>) {
    ui.window.set_visible_page(&ui.service_page);
    let button = window::find(&ui.window, "selftest-run")
        .and_then(|w| w.downcast::<gtk::Button>().ok())
        .expect("the Run Test button");
    button.emit_clicked();
    wait_until("the self-test's last step is shown", || {
        window::find(&ui.window, "selftest:gone").is_some()
            || window::texts(&ui.window).iter().any(|t| t == "Run Again")
    });
    let shown = window::texts(&ui.window);
    for step in webpushd::selftest::STEPS {
        let row = window::find(&ui.window, &format!("selftest:{step}"))
            .unwrap_or_else(|| panic!("step {step} shown: {shown:?}"));
        assert!(!row.has_css_class("error"), "step {step} failed: {shown:?}");
    }
    assert!(
        shown
            .iter()
            .any(|t| t == "Received it, decrypted and intact"),
        "{shown:?}"
    );
    screenshot(ui, &ui.window, "settings-service.png");
    println!("ok: the_self_test_runs_from_the_window");
}

fn choosing_another_server_moves_the_daemon_and_back(env: &TestEnv, ui: &Rc<Ui>) {
    ui.window.set_visible_page(&ui.service_page);
    let radio = |name: &str| {
        window::find(&ui.window, name)
            .and_then(|w| w.downcast::<gtk::CheckButton>().ok())
            .unwrap_or_else(|| panic!("the {name} choice"))
    };
    let state = |ui: &Ui| match ui.daemon() {
        Daemon::Running(s) => s,
        other => panic!("{other:?}"),
    };
    assert!(radio("server:local").is_active());
    // A custom address is checked before it is sent.
    let entry = window::find(&ui.window, "server:custom-url")
        .and_then(|w| w.downcast::<adw::EntryRow>().ok())
        .unwrap();
    entry.set_text("https://push.example.org/");
    entry.emit_by_name::<()>("apply", &[]);
    let shown = window::texts(&ui.window);
    assert!(
        shown.iter().any(|t| t.contains("starts with wss://")),
        "{shown:?}"
    );
    assert_eq!(state(ui).server_url, "local", "nothing was sent");

    // Mozilla's service, unreachable from here: the daemon moves, the window says why
    // it cannot connect.
    radio("server:mozilla").activate();
    wait_until("the daemon moves to Mozilla's service", || {
        state(ui).server_url == view::MOZILLA
    });
    wait_until("the window shows the connection's error", || {
        let s = state(ui);
        s.state != "connected" && !s.last_error.is_empty()
    });
    let shown = window::texts(&ui.window);
    assert!(shown.iter().any(|t| t == "Last error"), "{shown:?}");
    screenshot(ui, &ui.window, "settings-unreachable.png");
    assert!(
        shown
            .iter()
            .any(|t| t.starts_with("Mozilla's push service")),
        "{shown:?}"
    );

    // Back to the local service: every subscription is there, connected again.
    radio("server:local").activate();
    wait_until("the daemon is back on the local service, connected", || {
        let s = state(ui);
        s.server_url == "local" && s.state == "connected"
    });
    assert_eq!(state(ui).subscriptions.len(), 3);
    let listed = env.pushctl(&["list", "--all", "--json"]);
    assert!(listed.contains("new-mail"), "{listed}");
    println!("ok: choosing_another_server_moves_the_daemon_and_back");
}

/// Someone stops the daemon while the window is open: the window says so and leaves it
/// stopped (reading its state would start it again by activation) until Try Again.
fn a_stopped_daemon_is_shown_not_restarted(env: &TestEnv, ui: &Rc<Ui>) {
    let pid = env.daemon_pid().expect("the daemon runs");
    let _ = Command::new("kill").arg(pid.to_string()).status();
    wait_until(
        "the window shows the daemon stopped",
        || matches!(ui.daemon(), Daemon::Unavailable(why) if why.contains("stopped")),
    );
    // Time for a refresh that should not happen.
    let settle = Instant::now() + Duration::from_secs(1);
    while Instant::now() < settle {
        glib::MainContext::default().iteration(false);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        env.daemon_pid(),
        None,
        "the window started the daemon again"
    );
    let retry = window::find(&ui.window, "retry")
        .and_then(|w| w.downcast::<gtk::Button>().ok())
        .unwrap();
    retry.emit_clicked();
    wait_until(
        "Try Again starts it",
        || matches!(ui.daemon(), Daemon::Running(s) if s.subscriptions.len() == 3),
    );
    println!("ok: a_stopped_daemon_is_shown_not_restarted");
}

/// The installed program, started as the desktop starts it: its window shows the daemon's
/// state, then quits (`WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN`, which also reports the time).
fn the_program_opens_and_shows_the_daemon(env: &TestEnv) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webpushd-settings"))
        .env("DBUS_SESSION_BUS_ADDRESS", &env.bus)
        .env("WEBPUSHD_SETTINGS_QUIT_WHEN_SHOWN", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            panic!("webpushd-settings never showed the daemon's state");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("the daemon's state was on screen"), "{err}");
    println!(
        "ok: the_program_opens_and_shows_the_daemon ({})",
        err.trim()
    );
}

/// Iterate the main loop until `f` holds.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let ctx = glib::MainContext::default();
    let end = Instant::now() + WAIT;
    while !f() {
        if Instant::now() > end {
            panic!("timed out waiting until {what}");
        }
        if !ctx.iteration(false) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The window as drawn, to a PNG under target/screenshots.
fn screenshot(ui: &Ui, page: &impl IsA<gtk::Widget>, name: &str) {
    if page.upcast_ref::<gtk::Widget>() != ui.window.upcast_ref::<gtk::Widget>() {
        ui.window
            .set_visible_page(page.dynamic_cast_ref::<adw::PreferencesPage>().unwrap());
    }
    // Let the page change settle and draw.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        glib::MainContext::default().iteration(false);
        std::thread::sleep(Duration::from_millis(10));
    }
    let w = &ui.window;
    let paintable = gtk::WidgetPaintable::new(Some(w));
    let snapshot = gtk::Snapshot::new();
    paintable.snapshot(&snapshot, w.width() as f64, w.height() as f64);
    let node = snapshot.to_node().expect("the window draws something");
    let renderer = w.native().and_then(|n| n.renderer()).expect("a renderer");
    let texture = renderer.render_texture(&node, None);
    let dir = target_dir().join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    texture
        .save_to_png(dir.join(name))
        .expect("save the screenshot");
}

fn target_dir() -> PathBuf {
    // target/debug/deps/window-… → target
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

fn bin(name: &str) -> PathBuf {
    let p = std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(2)
        .unwrap()
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: build the daemon first (cargo build -p webpushd)",
        p.display()
    );
    p
}

/// A display, a private session bus whose activation starts webpushd (local push
/// service, its own home), and a runtime for the test's own D-Bus calls.
struct TestEnv {
    home: tempfile::TempDir,
    children: Vec<Child>,
    bus: String,
    rt: tokio::runtime::Runtime,
}

impl TestEnv {
    fn start() -> TestEnv {
        let home = tempfile::tempdir().unwrap();
        let mut children = Vec::new();
        if std::env::var_os("DISPLAY").is_none() || std::env::var_os("WEBPUSHD_TEST_XVFB").is_some()
        {
            let (xvfb, display) = xvfb();
            children.push(xvfb);
            std::env::set_var("DISPLAY", display);
        }
        let (bus_child, bus) = bus(home.path());
        children.push(bus_child);
        let runtime = home.path().join("runtime");
        std::fs::create_dir_all(&runtime).unwrap();
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        for (k, v) in [
            ("DBUS_SESSION_BUS_ADDRESS", bus.as_str()),
            ("XDG_RUNTIME_DIR", runtime.to_str().unwrap()),
            ("GDK_BACKEND", "x11"),
            ("GSK_RENDERER", "cairo"),
            ("NO_AT_BRIDGE", "1"),
            ("GTK_A11Y", "none"),
            ("GSETTINGS_BACKEND", "memory"),
        ] {
            std::env::set_var(k, v);
        }
        gtk::init().expect("GTK starts on the display");
        adw::init().expect("libadwaita starts");
        TestEnv {
            home,
            children,
            bus,
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    /// Put webpushd's activation file where the bus looks, as installing the package does.
    fn install_daemon(&self) {
        let home = self.home.path();
        std::fs::write(
            home.join("services/org.webpushd.Push1.service"),
            format!(
                "[D-BUS Service]\nName=org.webpushd.Push1\nExec=/usr/bin/env HOME={h} XDG_CONFIG_HOME={h}/config XDG_STATE_HOME={h}/state {bin}\n",
                h = home.display(),
                bin = bin("webpushd").display()
            ),
        )
        .unwrap();
    }

    /// `pushctl` on the test bus; its stdout. Panics when it fails.
    fn pushctl(&self, args: &[&str]) -> String {
        let out = Command::new(bin("pushctl"))
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pushctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The process that owns org.webpushd.Push1 now, if any.
    fn daemon_pid(&self) -> Option<u32> {
        self.rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.as_str())
                .ok()?
                .build()
                .await
                .ok()?;
            let dbus = zbus::fdo::DBusProxy::new(&conn).await.ok()?;
            dbus.get_connection_unix_process_id(
                zbus::names::BusName::try_from("org.webpushd.Push1").ok()?,
            )
            .await
            .ok()
        })
    }

    /// The daemon's NotificationsDenied, read on a connection of the test's own.
    fn denied(&self) -> Vec<String> {
        self.rt.block_on(async {
            let conn = zbus::connection::Builder::address(self.bus.as_str())
                .unwrap()
                .build()
                .await
                .unwrap();
            let admin = AdminProxy::builder(&conn)
                .cache_properties(zbus::proxy::CacheProperties::No)
                .build()
                .await
                .unwrap();
            admin.notifications_denied().await.unwrap()
        })
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // The daemon was started by the bus: stop it before the bus goes.
        let pid = self.daemon_pid();
        if let Some(pid) = pid {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Xvfb on a free display; it prints the display's number on the descriptor we give it.
fn xvfb() -> (Child, String) {
    let mut child = Command::new("Xvfb")
        .args([
            "-displayfd",
            "1",
            "-screen",
            "0",
            "1280x900x24",
            "-nolisten",
            "tcp",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("Xvfb is needed when there is no DISPLAY: sh scripts/deps.sh installs it");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let n = line.trim();
    assert!(!n.is_empty(), "Xvfb gave no display");
    (child, format!(":{n}"))
}

/// A session bus that can start webpushd by activation once its file is in `services`.
fn bus(home: &Path) -> (Child, String) {
    let services = home.join("services");
    std::fs::create_dir_all(&services).unwrap();
    std::fs::create_dir_all(home.join("config/webpushd")).unwrap();
    std::fs::write(
        home.join("config/webpushd/config.toml"),
        "server_url = \"local\"\n",
    )
    .unwrap();
    private_bus::start(home, &services)
}
