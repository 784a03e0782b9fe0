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
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};
use zbus::fdo::{RequestNameFlags, RequestNameReply};

use crate::config::{Config, ServerUrl};
use crate::connection::{self, HelloParams, Settings};
use crate::dbus::{self, identity::Resolver, Presence};
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

const LOCAL_PORTS_FILE: &str = "local-server.ports";

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
    let (store, moved_aside) = Store::open(&config.state_dir)?;
    if let Some(aside) = moved_aside {
        error!(file = %aside.display(), "the database was damaged: moved aside and started empty; subscriptions must be made again");
    }
    info!(state = %config.state_dir.display(), "store opened");

    if config.notifications.fetch_images {
        warn!("notifications.fetch_images = true is not supported by this version: remote icons and images are never fetched");
    }
    let cancel = shutdown.child_token();
    let tracker = TaskTracker::new();

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

    let (hello_tx, hello_rx) = watch::channel(HelloParams::default());
    let (conn_events_tx, conn_events_rx) = mpsc::channel(1024);
    let (domain_tx, domain_rx) = mpsc::unbounded_channel();
    let settings = Settings {
        url: url.clone(),
        request_timeout: config.connection.request_timeout,
        ping_interval: config.connection.ping_interval,
        retry_base: config.connection.retry_base,
        retry_max: config.connection.retry_max,
    };

    // The connection actor starts only after the bus name is ours, but `push` needs its
    // handle now: create it up front, paused on a gate.
    let gate = CancellationToken::new();
    let (conn_handle, conn_join) = {
        let gate = gate.clone();
        let cancel = cancel.clone();
        let (h, j) = connection::spawn_gated(settings, tls, hello_rx, conn_events_tx, cancel, gate);
        (h, j)
    };

    let (push, push_handle) = Push::new(
        store,
        Policy::from_config(&config),
        conn_handle.clone(),
        conn_events_rx,
        domain_tx,
        hello_tx,
        cancel.clone(),
    )?;
    let uaid = Arc::new(Mutex::new(
        push.uaid()
            .map(|u| u.as_str().to_string())
            .unwrap_or_default(),
    ));
    let snapshot = push.snapshot();

    let bus = zbus::connection::Builder::session()
        .map_err(DaemonError::Bus)?
        .build()
        .await
        .map_err(DaemonError::Bus)?;
    let resolver = Resolver::new(&bus).await.map_err(DaemonError::Bus)?;
    let presence = Arc::new(Presence::default());
    dbus::serve(
        &bus,
        push_handle.clone(),
        conn_handle.clone(),
        resolver.clone(),
        snapshot,
        config.server_url.as_str().to_string(),
        uaid.clone(),
    )
    .await
    .map_err(DaemonError::Bus)?;

    tracker.spawn(push.run());
    let notifier = dbus::notify::Notifier::new(bus.clone());
    tracker.spawn(notifier.clone().follow(cancel.clone()));
    tracker.spawn(dbus::pump(
        bus.clone(),
        domain_rx,
        push_handle.clone(),
        resolver.clone(),
        presence.clone(),
        uaid,
        notifier,
    ));
    tracker.spawn(dbus::follow_state(bus.clone(), conn_handle.status()));
    {
        let (bus, resolver, presence, push, cancel, shutdown) = (
            bus.clone(),
            resolver.clone(),
            presence.clone(),
            push_handle.clone(),
            cancel.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            if let Err(e) =
                dbus::track_presence(bus, resolver, presence, push, cancel.clone()).await
            {
                warn!(error = %e, "cannot follow the bus: apps' presence unknown");
                return;
            }
            // The signal stream only ends with the connection: the session is over.
            if !cancel.is_cancelled() {
                warn!("the session bus went away: stopping");
                shutdown.cancel();
            }
        });
    }

    // Objects are served: now the names, then readiness.
    let flags = RequestNameFlags::DoNotQueue.into();
    // The distributor name first: whoever waits for org.webpushd.Push1 (systemd's
    // BusName=, activation) then finds both.
    match bus
        .request_name_with_flags(dbus::unifiedpush::BUS_NAME, flags)
        .await
    {
        Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
        other => warn!(
            ?other,
            name = dbus::unifiedpush::BUS_NAME,
            "cannot own the UnifiedPush distributor name"
        ),
    }
    match bus.request_name_with_flags(dbus::BUS_NAME, flags).await {
        Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => {
            cancel.cancel();
            return Err(DaemonError::NameTaken(dbus::BUS_NAME));
        }
        Err(e) => {
            cancel.cancel();
            return Err(DaemonError::Bus(e));
        }
    }
    info!(name = dbus::BUS_NAME, server = %config.server_url.as_str(), "webpushd ready");
    sd_notify("READY=1\nSTATUS=Serving org.webpushd.Push1");
    // The local push service is on loopback: the network's state does not matter to it.
    if local.is_none() {
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tracker.spawn(dbus::system::watch(
            conn_handle.clone(),
            cancel.clone(),
            ready_tx,
        ));
        // Connect only once we know whether there is a network (a dropped sender, when
        // there is no system bus, counts as "go ahead").
        let _ = tokio::time::timeout(Duration::from_secs(2), ready).await;
    }
    gate.cancel();
    {
        let (bus, push) = (bus.clone(), push_handle.clone());
        tracker.spawn(async move {
            if let Err(e) = dbus::unifiedpush::prune_removed_apps(&bus, &push).await {
                warn!(error = %e, "cannot check UnifiedPush apps");
            }
        });
    }

    if let Some(every) = watchdog_interval() {
        let push = push_handle.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(every) => {}
                }
                // Fed only when the owner loop answers: a stuck loop gets us restarted.
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

    shutdown.cancelled().await;
    info!("shutting down");
    sd_notify("STOPPING=1");
    cancel.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn_join).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    let _ = bus.release_name(dbus::BUS_NAME).await;
    if let Some(server) = local {
        server.shutdown().await;
    }
    Ok(())
}
