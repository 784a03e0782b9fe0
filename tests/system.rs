//! Network and sleep awareness: a private "system" bus with small fake NetworkManager and
//! logind services. Offline stops reconnect attempts; online and resume act at once.

mod support;

use std::time::Duration;

use support::*;
use zbus::interface;
use zbus::object_server::SignalEmitter;

struct FakeNm {
    state: u32,
}

#[interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    #[zbus(property)]
    fn state(&self) -> u32 {
        self.state
    }

    #[zbus(signal, name = "StateChanged")]
    async fn nm_state_changed(emitter: &SignalEmitter<'_>, state: u32) -> zbus::Result<()>;
}

struct FakeLogind;

#[interface(name = "org.freedesktop.login1.Manager")]
impl FakeLogind {
    #[zbus(signal)]
    async fn prepare_for_sleep(emitter: &SignalEmitter<'_>, start: bool) -> zbus::Result<()>;
}

struct System {
    _bus: Bus,
    conn: zbus::Connection,
}

impl System {
    async fn start(state: u32) -> System {
        let bus = Bus::start();
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .serve_at("/org/freedesktop/NetworkManager", FakeNm { state })
            .unwrap()
            .serve_at("/org/freedesktop/login1", FakeLogind)
            .unwrap()
            .name("org.freedesktop.NetworkManager")
            .unwrap()
            .name("org.freedesktop.login1")
            .unwrap()
            .build()
            .await
            .unwrap();
        System { _bus: bus, conn }
    }

    async fn network(&self, state: u32) {
        let iface = self
            .conn
            .object_server()
            .interface::<_, FakeNm>("/org/freedesktop/NetworkManager")
            .await
            .unwrap();
        iface.get_mut().await.state = state;
        FakeNm::nm_state_changed(iface.signal_emitter(), state)
            .await
            .unwrap();
    }

    async fn resume(&self) {
        let iface = self
            .conn
            .object_server()
            .interface::<_, FakeLogind>("/org/freedesktop/login1")
            .await
            .unwrap();
        FakeLogind::prepare_for_sleep(iface.signal_emitter(), false)
            .await
            .unwrap();
    }
}

/// Bus, server, a daemon whose system bus is `system`; reconnect back-off of an hour, so
/// anything that connects quickly does so because it was told to.
async fn world(system: &System) -> World {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let server = push_server(dir.path()).await;
    let config = Daemon::config_for(
        &server.ws_url(),
        "[connection]\nretry_base = \"1h\"\nretry_max = \"1h\"\n",
    );
    let sys_addr = system._bus.address.clone();
    let mut daemon = Daemon::spawn_env(
        &bus,
        dir.path(),
        &config,
        &[],
        &[("DBUS_SYSTEM_BUS_ADDRESS", &sys_addr)],
    );
    daemon.wait_ready(&bus).await;
    World {
        bus,
        server,
        daemon,
        dir,
    }
}

async fn state_is(w: &World, want: &str) {
    let conn = w.bus.connect().await;
    let admin = webpushd::client::AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    eventually(&format!("State {want}"), || async {
        let s = admin.state().await.ok()?;
        (s == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offline_stops_attempts_and_online_reconnects_at_once() {
    let system = System::start(70).await;
    let w = world(&system).await;
    state_is(&w, "connected").await;

    system.network(20).await;
    state_is(&w, "offline").await;
    eventually("the server to see the client go", || async {
        (w.server.stats().connected_clients == 0).then_some(())
    })
    .await;
    let attempts = w.server.faults().unwrap().connection_attempts().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.server.faults().unwrap().connection_attempts().len(),
        attempts,
        "no attempts while offline"
    );

    // Back online: connected again long before the hour of back-off.
    system.network(70).await;
    state_is(&w, "connected").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daemon_started_offline_waits_for_the_network() {
    let system = System::start(20).await;
    let w = world(&system).await;
    state_is(&w, "offline").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.server.stats().hellos, 0);
    system.network(70).await;
    state_is(&w, "connected").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resume_from_sleep_checks_the_connection() {
    let system = System::start(70).await;
    let w = world(&system).await;
    state_is(&w, "connected").await;
    let pings = w.server.stats().pings;
    system.resume().await;
    eventually("a ping after resume", || async {
        (w.server.stats().pings > pings).then_some(())
    })
    .await;
    // Still connected: the server answered.
    state_is(&w, "connected").await;
}

/// A resume, a network-up and a flap arrive together: one liveness check at a time, and
/// never a second application ping within 45 s (autopush closes the connection for it).
#[tokio::test(flavor = "multi_thread")]
async fn resume_and_network_flaps_never_ping_too_often() {
    let system = System::start(70).await;
    let w = world(&system).await;
    state_is(&w, "connected").await;
    system.resume().await;
    system.network(70).await;
    eventually("the first check", || async {
        (w.server.stats().pings == 1).then_some(())
    })
    .await;
    for round in 1..=3 {
        // Let the previous check's answer arrive: a check still waiting takes the next.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        system.resume().await;
        eventually("a check by WebSocket ping", || async {
            (w.server.stats().ws_pings >= round).then_some(())
        })
        .await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let s = w.server.stats();
    assert_eq!((s.pings, s.hellos), (1, 1), "{s:?}");
    state_is(&w, "connected").await;
}
