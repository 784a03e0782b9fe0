//! Network and sleep awareness from the system bus: NetworkManager's `StateChanged` and
//! logind's `PrepareForSleep`.
//!
//! Offline stops reconnect attempts (no timers, no futile connects on battery); online or
//! resume reconnects at once, or checks a live connection with a ping. Without a system
//! bus, NetworkManager or logind, the daemon works as before: this only ever helps.

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use zbus::proxy;

use crate::connection;

#[proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager"
)]
trait NetworkManager {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<u32>;
    #[zbus(signal, name = "StateChanged")]
    fn nm_state_changed(&self, state: u32) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Login1 {
    #[zbus(signal)]
    fn prepare_for_sleep(&self, start: bool) -> zbus::Result<()>;
}

/// NetworkManager's `NMState`: only "connected (site)" and "connected (global)" can reach a
/// push server; "unknown" (0) must not stop us, since NetworkManager may not know.
pub fn nm_state_online(state: u32) -> bool {
    matches!(state, 0 | 60 | 70)
}

/// Follow the system bus until `cancel`. Returns quietly when there is no system bus.
/// `ready` fires once the initial network state is known (and, if offline, passed on), so
/// the daemon does not try to connect before it knows.
pub async fn watch(
    conn: connection::Handle,
    cancel: CancellationToken,
    ready: tokio::sync::oneshot::Sender<()>,
) {
    let bus = match zbus::Connection::system().await {
        Ok(b) => b,
        Err(e) => {
            debug!(error = %e, "no system bus: network and sleep changes are not followed");
            return;
        }
    };
    let nm = NetworkManagerProxy::new(&bus).await.ok();
    let mut nm_changes = match &nm {
        Some(nm) => nm.receive_nm_state_changed().await.ok(),
        None => None,
    };
    let login = Login1Proxy::new(&bus).await.ok();
    let mut sleeps = match &login {
        Some(l) => l.receive_prepare_for_sleep().await.ok(),
        None => None,
    };
    // The state now, if NetworkManager is running.
    let mut online = true;
    if let Some(nm) = &nm {
        if let Ok(state) = nm.state().await {
            online = nm_state_online(state);
            if !online {
                info!(
                    state,
                    "NetworkManager reports no connectivity: not connecting"
                );
                conn.network(false).await;
            }
        }
    }
    let _ = ready.send(());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(sig) = next(&mut nm_changes) => {
                let Ok(args) = sig.args() else { continue };
                let now = nm_state_online(args.state);
                if now != online {
                    online = now;
                    info!(state = args.state, online, "network changed");
                    conn.network(online).await;
                }
            }
            Some(sig) = next(&mut sleeps) => {
                let Ok(args) = sig.args() else { continue };
                if !args.start && online {
                    info!("resumed from sleep: checking the connection");
                    conn.network(true).await;
                }
            }
            else => return,
        }
    }
}

async fn next<S: futures_util::Stream + Unpin>(s: &mut Option<S>) -> Option<S::Item> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_states() {
        for (state, online) in [
            (0, true),
            (10, false),
            (20, false),
            (30, false),
            (40, false),
            (50, false),
            (60, true),
            (70, true),
        ] {
            assert_eq!(nm_state_online(state), online, "{state}");
        }
    }
}
