//! Test harness: a private `dbus-daemon` per test, the project's push server (the same one
//! shipped as the local push service) with fault injection on, and the real `webpushd`
//! binary with temporary XDG directories. Everything is torn down on drop, also when a
//! test fails. No fixed ports, no shared process environment.

#![allow(dead_code)]

mod private_bus;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use tempfile::TempDir;
use webpushd::client::{AdminProxy, ManagerProxy, SubscriptionProxy};
use webpushd::server::{PushServer, ServerOptions};
use zbus::zvariant::{OwnedObjectPath, Value};

pub const WAIT: Duration = Duration::from_secs(20);

/// Wait for `f` to give `Some`, polling; panics with `what` after `WAIT`.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A private session bus.
pub struct Bus {
    child: Child,
    pub address: String,
    pub services: PathBuf,
    _dir: TempDir,
}

impl Bus {
    pub fn start() -> Bus {
        let dir = tempfile::tempdir().unwrap();
        let services = dir.path().join("services");
        std::fs::create_dir_all(&services).unwrap();
        let (child, address) = private_bus::start(dir.path(), &services);
        Bus {
            child,
            address,
            services,
            _dir: dir,
        }
    }

    pub async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .build()
            .await
            .unwrap()
    }

    /// A connection that owns `app_id`, so the daemon attributes its calls to that app.
    pub async fn app(&self, app_id: &str) -> App {
        let conn = zbus::connection::Builder::address(self.address.as_str())
            .unwrap()
            .name(app_id.to_string())
            .unwrap()
            .build()
            .await
            .unwrap();
        App::new(conn).await
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self._dir.path().join("bus.log")).unwrap_or_default();
            if !log.is_empty() {
                eprintln!("--- bus log (activated services) ---\n{log}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The push server, in this test process, with faults available.
pub async fn push_server(dir: &Path) -> PushServer {
    let mut opts = ServerOptions::new(dir.join("server.db"));
    opts.fault_injection = true;
    PushServer::start(opts).await.unwrap()
}

pub async fn push_server_with(dir: &Path, f: impl FnOnce(&mut ServerOptions)) -> PushServer {
    let mut opts = ServerOptions::new(dir.join("server.db"));
    opts.fault_injection = true;
    f(&mut opts);
    PushServer::start(opts).await.unwrap()
}

/// The real daemon binary with its own XDG directories.
pub struct Daemon {
    child: Option<Child>,
    pub home: PathBuf,
    pub state_dir: PathBuf,
    pub config_file: PathBuf,
    pub log: PathBuf,
    bus_address: String,
}

impl Daemon {
    /// Config text gets `server_url` and `allow_insecure` prepended for a `ws://` server.
    pub fn config_for(server_url: &str, extra: &str) -> String {
        format!("server_url = \"{server_url}\"\nallow_insecure = true\n{extra}\n")
    }

    pub async fn start(bus: &Bus, home: &Path, config: &str) -> Daemon {
        let mut d = Daemon::spawn(bus, home, config, &[]);
        d.wait_ready(bus).await;
        d
    }

    /// Start without waiting (for startup-failure tests).
    pub fn spawn(bus: &Bus, home: &Path, config: &str, args: &[&str]) -> Daemon {
        Daemon::spawn_env(bus, home, config, args, &[])
    }

    /// Start without waiting, with extra environment (e.g. `DBUS_SYSTEM_BUS_ADDRESS`).
    pub fn spawn_env(
        bus: &Bus,
        home: &Path,
        config: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Daemon {
        let config_dir = home.join("config/webpushd");
        std::fs::create_dir_all(&config_dir).unwrap();
        let config_file = config_dir.join("config.toml");
        std::fs::write(&config_file, config).unwrap();
        let log = home.join(format!("webpushd-{}.log", std::process::id()));
        let logfile = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_webpushd"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", home)
            .env("XDG_CONFIG_HOME", home.join("config"))
            .env("XDG_STATE_HOME", home.join("state"))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env("RUST_LOG", "webpushd=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            home: home.to_path_buf(),
            state_dir: home.join("state/webpushd"),
            config_file,
            log,
            bus_address: bus.address.clone(),
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn wait_ready(&mut self, bus: &Bus) {
        let conn = bus.connect().await;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let name = zbus::names::BusName::try_from("org.webpushd.Push1").unwrap();
            if dbus.name_has_owner(name).await.unwrap_or(false) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("webpushd exited early ({status}):\n{}", self.log_text());
            }
            if tokio::time::Instant::now() > deadline {
                panic!("webpushd did not take its bus name:\n{}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait for the daemon to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if std::time::Instant::now() > deadline {
                panic!("webpushd did not exit:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM and wait: a clean stop. Returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let code = self.wait_exit();
        self.child = None;
        code
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub async fn restart(&mut self, bus: &Bus) {
        self.stop();
        let config = std::fs::read_to_string(&self.config_file).unwrap();
        let home = self.home.clone();
        *self = Daemon::spawn(bus, &home, &config, &[]);
        self.wait_ready(bus).await;
    }

    /// Run `pushctl` against this daemon's bus.
    pub fn pushctl(&self, args: &[&str]) -> std::process::Output {
        self.pushctl_command().args(args).output().unwrap()
    }

    /// A `pushctl` command for this daemon's bus, without arguments yet.
    pub fn pushctl_command(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pushctl"));
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .env("NO_COLOR", "1");
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- webpushd log ---\n{}", self.log_text());
            }
        }
    }
}

/// An app on the bus: a connection with a well-known name and a Manager proxy.
pub struct App {
    pub conn: zbus::Connection,
    pub manager: ManagerProxy<'static>,
    pub admin: AdminProxy<'static>,
}

/// What an app knows of its subscription.
#[derive(Debug, Clone)]
pub struct Sub {
    pub path: OwnedObjectPath,
    pub endpoint: String,
    pub p256dh: Vec<u8>,
    pub auth: Vec<u8>,
}

impl App {
    pub async fn new(conn: zbus::Connection) -> App {
        let manager = ManagerProxy::new(&conn).await.unwrap();
        let admin = AdminProxy::new(&conn).await.unwrap();
        App {
            conn,
            manager,
            admin,
        }
    }

    pub async fn subscribe(&self, scope: &str) -> Sub {
        self.subscribe_with(scope, HashMap::new()).await.unwrap()
    }

    pub async fn subscribe_with(
        &self,
        scope: &str,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<Sub> {
        let path = self.manager.subscribe(scope, options).await?;
        Ok(self.sub(path).await)
    }

    pub async fn sub(&self, path: OwnedObjectPath) -> Sub {
        let p = self.subscription(&path).await;
        Sub {
            endpoint: p.endpoint().await.unwrap(),
            p256dh: p.get_key("p256dh").await.unwrap().into_vec(),
            auth: p.get_key("auth").await.unwrap().into_vec(),
            path,
        }
    }

    pub async fn subscription(&self, path: &OwnedObjectPath) -> SubscriptionProxy<'static> {
        SubscriptionProxy::builder(&self.conn)
            .path(path.clone())
            .unwrap()
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .unwrap()
    }

    /// A stream of (scope, message id, payload) from `Message` signals.
    pub async fn messages(
        &self,
    ) -> impl futures_util::Stream<Item = (String, String, Vec<u8>)> + Unpin {
        let stream = self.manager.receive_message().await.unwrap();
        Box::pin(stream.filter_map(|sig| async move {
            let a = sig.args().ok()?;
            Some((
                a.scope().to_string(),
                a.message_id().to_string(),
                a.payload().to_vec(),
            ))
        }))
    }
}

/// POST an encrypted payload to a subscription, as an application server would.
pub async fn post(sub: &Sub, payload: &[u8]) -> webpushd::appserver::SendResponse {
    post_with(sub, payload, &Default::default()).await
}

pub async fn post_with(
    sub: &Sub,
    payload: &[u8],
    opts: &webpushd::appserver::SendOptions,
) -> webpushd::appserver::SendResponse {
    let key = webpushd::vapid::VapidKey::generate().unwrap();
    webpushd::appserver::send(&sub.endpoint, &sub.p256dh, &sub.auth, payload, &key, opts)
        .await
        .unwrap()
}

/// org.freedesktop.DBus.Properties of a daemon object, as `conn` sees it.
pub async fn properties_of(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> zbus::fdo::PropertiesProxy<'static> {
    zbus::fdo::PropertiesProxy::builder(conn)
        .destination("org.webpushd.Push1")
        .unwrap()
        .path(path.clone())
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// Next item of a stream, or panic after `WAIT`.
pub async fn next<S: futures_util::Stream + Unpin>(s: &mut S, what: &str) -> S::Item {
    tokio::time::timeout(WAIT, s.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|| panic!("stream ended waiting for {what}"))
}

/// Wait until the daemon on `bus` reports `connected`.
pub async fn wait_connected(bus: &Bus) {
    // Uncached: zbus's property cache can keep a value that changed while it filled.
    let conn = bus.connect().await;
    let admin = AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    eventually("the daemon to connect", || async {
        (admin.state().await.ok()? == "connected").then_some(())
    })
    .await;
}

/// Set up bus, server and daemon in one go.
pub struct World {
    pub bus: Bus,
    pub server: PushServer,
    pub daemon: Daemon,
    pub dir: TempDir,
}

impl World {
    pub async fn new() -> World {
        World::with_config("").await
    }

    pub async fn with_config(extra: &str) -> World {
        let dir = tempfile::tempdir().unwrap();
        let bus = Bus::start();
        let server = push_server(dir.path()).await;
        let daemon = Daemon::start(
            &bus,
            dir.path(),
            &Daemon::config_for(&server.ws_url(), extra),
        )
        .await;
        World {
            bus,
            server,
            daemon,
            dir,
        }
    }

    /// Wait until the daemon reports `connected`.
    pub async fn connected(&self) {
        wait_connected(&self.bus).await;
    }
}
