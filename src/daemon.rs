//! Startup and shutdown: the order of things, and nothing else.
//!
//! Start: open the store (which locks the state directory), start the local push service
//! if asked, build `push`, serve every object, take the bus names, report ready to systemd,
//! then connect. Stop (SIGTERM/SIGINT): cancel one token; the connection closes with 1000,
//! `push` finishes its transaction, and the bus names go with the connection.

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{Config, ServerUrl};
use crate::connection::{self, HelloParams, Settings};
use crate::dbus::{self, Bus, Objects};
use crate::push::{Policy, Push};
use crate::server::{PushServer, ServerOptions};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot connect to the D-Bus session bus: {0}")]
    Bus(zbus::Error),
    #[error("another webpushd already owns {0} on this session bus")]
    NameTaken(&'static str),
    #[error("cannot start the local push service: {0}")]
    LocalServer(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl DaemonError {
    /// What `Bus::take_names` failed with: NameTaken when another program owns our name.
    fn from_names(e: zbus::Error) -> DaemonError {
        match e {
            zbus::Error::NameTaken => DaemonError::NameTaken(dbus::BUS_NAME),
            e => DaemonError::Bus(e),
        }
    }
}

const LOCAL_PORTS_FILE: &str = "local-server.ports";
/// How long the connection waits at startup for the apps already on the bus to be known.
const PRESENCE_WAIT: Duration = Duration::from_secs(5);

/// Start the embedded local push service, on the ports it had last time when they are
/// free, so the endpoints apps already handed out keep working across restarts.
async fn start_local_server(state_dir: &Path) -> Result<PushServer, DaemonError> {
    let ports_file = state_dir.join(LOCAL_PORTS_FILE);
    let remembered: Option<(u16, u16)> = std::fs::read_to_string(&ports_file).ok().and_then(|s| {
        let mut it = s.split_whitespace().map(|p| p.parse::<u16>().ok());
        Some((it.next()??, it.next()??))
    });
    let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let options = |ws, http| {
        let mut o = ServerOptions::new(state_dir.join("local-server.db"));
        o.ws_addr = loopback(ws);
        o.http_addr = loopback(http);
        o
    };
    let server = match remembered {
        Some((ws, http)) => match PushServer::start(options(ws, http)).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "local push service: previous ports are taken; endpoints change");
                PushServer::start(options(0, 0))
                    .await
                    .map_err(|e| DaemonError::LocalServer(e.to_string()))?
            }
        },
        None => PushServer::start(options(0, 0))
            .await
            .map_err(|e| DaemonError::LocalServer(e.to_string()))?,
    };
    let port = |u: &str| {
        u.rsplit(':')
            .next()
            .map(|p| p.trim_end_matches('/').to_string())
    };
    if let (Some(ws), Some(http)) = (port(&server.ws_url()), port(&server.http_base())) {
        let _ = std::fs::write(&ports_file, format!("{ws} {http}\n"));
    }
    info!(ws = %server.ws_url(), http = %server.http_base(), "local push service started (for development and offline use)");
    Ok(server)
}

/// Tell systemd (`NOTIFY_SOCKET`) something; a no-op outside systemd.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), PathBuf::from(&path))
    };
    if let Err(e) = result {
        warn!(error = %e, "sd_notify failed");
    }
}

fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

/// Run the daemon until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let store = open_store(&config)?;
    let config_url = config.server_url.as_str().to_string();
    let config = with_saved_server(config, &store);
    if config.notifications.fetch_images {
        warn!("notifications.fetch_images = true is not supported by this version: remote icons and images are never fetched");
    }
    let cancel = shutdown.child_token();
    let tracker = TaskTracker::new();
    let (local, settings, tls) = push_service(&config).await?;

    let (hello_tx, hello_rx) = watch::channel(HelloParams::default());
    let (conn_events_tx, conn_events_rx) = mpsc::channel(1024);
    let (domain_tx, domain_rx) = mpsc::unbounded_channel();
    // The connection actor starts only after the bus name is ours, but `push` needs its
    // handle now: create it up front, paused on a gate.
    let gate = CancellationToken::new();
    let (conn_handle, conn_join) = connection::spawn_gated(
        settings,
        tls,
        hello_rx,
        conn_events_tx,
        cancel.clone(),
        gate.clone(),
    );
    let (push, push_handle) = Push::new(
        store,
        Policy::from_config(&config),
        conn_handle.clone(),
        conn_events_rx,
        domain_tx,
        hello_tx,
        cancel.clone(),
    )?;
    let switch = dbus::ServerSwitch {
        config_url,
        allow_insecure: config.allow_insecure,
        local_ws: local.as_ref().map(|l| l.ws_url()),
    };
    let bus = Bus::serve(objects(&config, &push, &push_handle, &conn_handle, switch))
        .await
        .map_err(DaemonError::Bus)?;

    tracker.spawn(push.run());
    let presence_known = bus.spawn(
        &tracker,
        domain_rx,
        conn_handle.status(),
        &cancel,
        &shutdown,
    );
    // Objects are served: now the names, then readiness.
    if let Err(e) = bus.take_names().await {
        cancel.cancel();
        return Err(DaemonError::from_names(e));
    }
    info!(name = dbus::BUS_NAME, server = %config.server_url.as_str(), "webpushd ready");
    sd_notify("READY=1\nSTATUS=Serving org.webpushd.Push1");
    // The local push service is on loopback: the network's state does not matter to it.
    if local.is_none() {
        wait_for_network(&tracker, &conn_handle, &cancel).await;
    }
    // What the server sends first (stored messages, renewals after a server change) is
    // signalled to the apps' connections, so those already on the bus must be known
    // first. Bounded: a slow bus delays the connection, never the rest.
    let _ = tokio::time::timeout(PRESENCE_WAIT, presence_known.cancelled()).await;
    gate.cancel();
    bus.spawn_prune(&tracker);
    if let Some(every) = watchdog_interval() {
        spawn_watchdog(&tracker, every, push_handle.clone(), cancel.clone());
    }

    shutdown.cancelled().await;
    stop(cancel, tracker, conn_join, bus, local).await;
    Ok(())
}

/// What the bus serves, from what `push` holds at startup.
fn objects(
    config: &Config,
    push: &Push,
    push_handle: &crate::push::Handle,
    conn_handle: &connection::Handle,
    switch: dbus::ServerSwitch,
) -> Objects {
    let uaid = push
        .uaid()
        .map(|u| u.as_str().to_string())
        .unwrap_or_default();
    Objects {
        push: push_handle.clone(),
        connection: conn_handle.clone(),
        subscriptions: push.snapshot(),
        server_url: config.server_url.as_str().to_string(),
        switch,
        uaid: Arc::new(Mutex::new(uaid)),
    }
}

/// The server chosen with Admin.SetServerUrl wins over the config's `server_url` it was
/// chosen over; once the config names another server, the config wins and the choice is
/// forgotten.
fn with_saved_server(mut config: Config, store: &Store) -> Config {
    match store.server_override() {
        Ok(Some((server, over))) if over == config.server_url.as_str() => {
            match ServerUrl::parse(&server, config.allow_insecure) {
                Ok(url) => {
                    info!(server = %server, "using the push server chosen over D-Bus");
                    config.server_url = url;
                }
                Err(e) => warn!(error = %e, "ignoring the push server chosen over D-Bus"),
            }
        }
        Ok(Some(_)) => {
            info!("server_url changed in the config: it wins over the server chosen over D-Bus");
            if let Err(e) = store.clear_server_override() {
                warn!(error = %e, "cannot forget the server chosen over D-Bus");
            }
        }
        Ok(None) => {}
        Err(e) => warn!(error = %e, "cannot read the push server chosen over D-Bus"),
    }
    config
}

/// Stop: cancel every task, give the connection and the tasks 5 s each to finish, then
/// let go of the name and the local push service.
async fn stop(
    cancel: CancellationToken,
    tracker: TaskTracker,
    conn_join: JoinHandle<()>,
    bus: Bus,
    local: Option<PushServer>,
) {
    info!("shutting down");
    sd_notify("STOPPING=1");
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn_join).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    bus.release_name().await;
    if let Some(server) = local {
        server.shutdown().await;
    }
}

/// Open the store (which locks the state directory), saying so when it had to start over.
fn open_store(config: &Config) -> Result<Store, DaemonError> {
    let (store, moved_aside) = Store::open(&config.state_dir)?;
    if let Some(aside) = moved_aside {
        error!(file = %aside.display(), "the database was damaged: moved aside and started empty; subscriptions must be made again");
    }
    info!(state = %config.state_dir.display(), "store opened");
    Ok(store)
}

/// The push service to connect to: the local one (started here) or the configured URL,
/// with the connection's settings and, for `wss://`, the system's TLS roots.
async fn push_service(
    config: &Config,
) -> Result<
    (
        Option<PushServer>,
        Settings,
        Option<Arc<rustls::ClientConfig>>,
    ),
    DaemonError,
> {
    let local = match config.server_url {
        ServerUrl::Local => Some(start_local_server(&config.state_dir).await?),
        ServerUrl::Remote(_) => None,
    };
    let url = match (&local, &config.server_url) {
        (Some(server), _) => server.ws_url(),
        (None, ServerUrl::Remote(u)) => u.clone(),
        (None, ServerUrl::Local) => unreachable!("local server started above"),
    };
    let tls = if url.starts_with("wss://") {
        Some(connection::system_tls().map_err(DaemonError::Tls)?)
    } else {
        None
    };
    let settings = Settings {
        url,
        request_timeout: config.connection.request_timeout,
        ping_interval: config.connection.ping_interval,
        retry_base: config.connection.retry_base,
        retry_max: config.connection.retry_max,
    };
    Ok((local, settings, tls))
}

/// Follow the network (system bus) and wait until we know whether there is one, at most
/// 2 s (a dropped sender, when there is no system bus, counts as "go ahead").
async fn wait_for_network(
    tracker: &TaskTracker,
    conn: &connection::Handle,
    cancel: &CancellationToken,
) {
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    tracker.spawn(dbus::system::watch(conn.clone(), cancel.clone(), ready_tx));
    let _ = tokio::time::timeout(Duration::from_secs(2), ready).await;
}

/// Feed systemd's watchdog every `every`, only when the owner loop answers: a stuck loop
/// gets us restarted.
fn spawn_watchdog(
    tracker: &TaskTracker,
    every: Duration,
    push: crate::push::Handle,
    cancel: CancellationToken,
) {
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let alive = tokio::time::timeout(
                every,
                push.request(|reply| crate::push::Request::Counts { reply }),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if alive {
                sd_notify("WATCHDOG=1");
            }
        }
    });
}
