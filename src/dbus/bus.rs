//! The daemon's session bus: the connection, every object served on it, the tasks that
//! keep it in step with `push`, and the names, taken last.
//!
//! Order matters and is the caller's: `Bus::serve` (objects, before any name: activation
//! relies on the objects being there when the name appears), `Bus::spawn`, then
//! `Bus::take_names`.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;
use zbus::fdo::{RequestNameFlags, RequestNameReply};

use super::checked::Checked;
use super::identity::Resolver;
use super::manager::{Admin, Manager, ServerSwitch, PATH};
use super::{notify, unifiedpush, Presence, BUS_NAME};
use crate::connection::{self, ConnStatus};
use crate::push::{self, DomainEvent, SubscriptionInfo};

/// What the objects on the bus serve.
pub struct Objects {
    pub push: push::Handle,
    pub connection: connection::Handle,
    /// The subscriptions there are at startup, one object each.
    pub subscriptions: Vec<SubscriptionInfo>,
    pub server_url: String,
    pub switch: ServerSwitch,
    pub uaid: Arc<Mutex<String>>,
}

/// The daemon's connection to the session bus, with who is on it.
pub struct Bus {
    conn: zbus::Connection,
    push: push::Handle,
    resolver: Arc<Resolver>,
    presence: Arc<Presence>,
    uaid: Arc<Mutex<String>>,
}

impl Bus {
    /// Connect to the session bus and serve every object, under no name yet.
    pub async fn serve(objects: Objects) -> zbus::Result<Bus> {
        let conn = zbus::connection::Builder::session()?.build().await?;
        let resolver = Resolver::new(&conn).await?;
        let presence = Arc::new(Presence::default());
        let Objects {
            push,
            connection,
            subscriptions,
            server_url,
            switch,
            uaid,
        } = objects;
        serve(
            &conn,
            push.clone(),
            connection,
            resolver.clone(),
            subscriptions,
            (server_url, switch),
            uaid.clone(),
        )
        .await?;
        Ok(Bus {
            conn,
            push,
            resolver,
            presence,
            uaid,
        })
    }

    pub fn connection(&self) -> &zbus::Connection {
        &self.conn
    }

    /// Start the tasks that keep the bus in step: notifications, the event pump, the
    /// connection's state, and the apps' presence. When the bus goes away, `shutdown`.
    /// Returns a token cancelled once the apps already on the bus are known to `push` (or
    /// the bus cannot be followed).
    pub fn spawn(
        &self,
        tracker: &TaskTracker,
        events: mpsc::UnboundedReceiver<DomainEvent>,
        status: watch::Receiver<ConnStatus>,
        cancel: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> CancellationToken {
        let notifier = notify::Notifier::new(self.conn.clone());
        tracker.spawn(notifier.clone().follow(cancel.clone()));
        tracker.spawn(super::pump(
            self.conn.clone(),
            events,
            self.push.clone(),
            self.resolver.clone(),
            self.presence.clone(),
            self.uaid.clone(),
            notifier,
        ));
        tracker.spawn(super::follow_state(self.conn.clone(), status));
        let (bus, resolver, presence, push, cancel, shutdown) = (
            self.conn.clone(),
            self.resolver.clone(),
            self.presence.clone(),
            self.push.clone(),
            cancel.clone(),
            shutdown.clone(),
        );
        let known = CancellationToken::new();
        let known_here = known.clone();
        tracker.spawn(async move {
            // Fired after the first scan, or as this ends, however it ends.
            let _known = known_here.clone().drop_guard();
            if let Err(e) =
                super::track_presence(bus, resolver, presence, push, known_here, cancel.clone())
                    .await
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
        known
    }

    /// Take the names, the UnifiedPush distributor's first: whoever waits for
    /// org.webpushd.Push1 (systemd's BusName=, activation) then finds both. Not getting the
    /// distributor name is only a warning; `Err(zbus::Error::NameTaken)` when another
    /// program owns org.webpushd.Push1.
    pub async fn take_names(&self) -> zbus::Result<()> {
        let flags = RequestNameFlags::DoNotQueue.into();
        match self
            .conn
            .request_name_with_flags(unifiedpush::BUS_NAME, flags)
            .await
        {
            Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
            other => warn!(
                ?other,
                name = unifiedpush::BUS_NAME,
                "cannot own the UnifiedPush distributor name"
            ),
        }
        match self.conn.request_name_with_flags(BUS_NAME, flags).await {
            Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => Ok(()),
            Ok(_) => Err(zbus::Error::NameTaken),
            Err(e) => Err(e),
        }
    }

    /// Forget the UnifiedPush apps that are no longer installed, in the background.
    pub fn spawn_prune(&self, tracker: &TaskTracker) {
        let (bus, push) = (self.conn.clone(), self.push.clone());
        tracker.spawn(async move {
            if let Err(e) = unifiedpush::prune_removed_apps(&bus, &push).await {
                warn!(error = %e, "cannot check UnifiedPush apps");
            }
        });
    }

    /// Give up org.webpushd.Push1 (the rest goes with the connection).
    pub async fn release_name(&self) {
        let _ = self.conn.release_name(BUS_NAME).await;
    }
}

/// Serve every object on `conn` (before the bus name is taken: activation relies on the
/// objects being there when the name appears).
async fn serve(
    conn: &zbus::Connection,
    push: push::Handle,
    connection: connection::Handle,
    resolver: Arc<Resolver>,
    subscriptions: Vec<SubscriptionInfo>,
    (server_url, switch): (String, ServerSwitch),
    uaid: Arc<Mutex<String>>,
) -> zbus::Result<()> {
    let server = conn.object_server();
    server
        .at(
            PATH,
            Checked::new(Manager {
                push: push.clone(),
                resolver: resolver.clone(),
            }),
        )
        .await?;
    server
        .at(
            PATH,
            Checked::new(Admin {
                push: push.clone(),
                conn: connection.clone(),
                resolver: resolver.clone(),
                status: connection.status(),
                server_url: Mutex::new(server_url),
                switch,
                uaid,
            }),
        )
        .await?;
    for info in subscriptions {
        super::add_subscription(conn, &push, &resolver, info).await?;
    }
    server
        .at(
            unifiedpush::PATH,
            Checked::new(unifiedpush::Distributor2::new(
                push.clone(),
                resolver.clone(),
            )),
        )
        .await?;
    server
        .at(
            unifiedpush::PATH,
            Checked::new(unifiedpush::Distributor1::new(
                push.clone(),
                resolver.clone(),
            )),
        )
        .await?;
    Ok(())
}
