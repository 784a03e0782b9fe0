//! Fault tests: the real daemon killed with SIGKILL mid-burst, storage that fails under it
//! (disk full, read-only files, a corrupt or locked database), many apps at once, and
//! hostile peers on both sides (the push server and D-Bus callers).
//!
//! Every test is bounded: bursts of a few hundred messages and a few rounds, a load window
//! of seconds. The long versions the benchmark issue asks for (2,000-message bursts, many
//! rounds; 100 clients for 30 s) are the same code with the environment set:
//! `FAULTS_ROUNDS=20 FAULTS_BURST=2000 FAULTS_LOAD_CLIENTS=100 FAULTS_LOAD_SECS=30
//! cargo test --release --test faults`.
//!
//! Storage faults need root (a tmpfs mount, `chattr +i`); without it those tests say so and
//! return.

mod support;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use support::*;
use tempfile::TempDir;
use tokio::time::Instant;
use webpushd::client::{AdminProxy, ManagerProxy};
use webpushd::server::PushServer;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, StructureBuilder, Value};

/// Short timers so reconnects happen within a second.
const FAST: &str =
    "[connection]\nrequest_timeout = \"2s\"\nretry_base = \"100ms\"\nretry_max = \"1s\"";

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// Helpers

/// A push server that never drops a user record for having too much stored.
async fn server(dir: &Path) -> PushServer {
    push_server_with(dir, |o| o.max_stored_messages = 1_000_000).await
}

struct Setup {
    bus: Bus,
    server: PushServer,
    daemon: Daemon,
    dir: TempDir,
}

/// Bus, server and daemon; `before` runs on the daemon's home before it starts.
async fn setup_with(before: impl FnOnce(&Path)) -> Setup {
    setup_full(before, "").await
}

async fn setup_full(before: impl FnOnce(&Path), extra_config: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let server = server(dir.path()).await;
    before(dir.path());
    let daemon = Daemon::start(
        &bus,
        dir.path(),
        &Daemon::config_for(&server.ws_url(), &format!("{FAST}\n{extra_config}")),
    )
    .await;
    Setup {
        bus,
        server,
        daemon,
        dir,
    }
}

async fn setup() -> Setup {
    setup_with(|_| {}).await
}

async fn admin(bus: &Bus) -> AdminProxy<'static> {
    let conn = bus.connect().await;
    AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

async fn wait_connected(bus: &Bus) {
    let a = admin(bus).await;
    eventually("the daemon to connect", || async {
        (a.state().await.ok()? == "connected").then_some(())
    })
    .await;
}

/// Subscribe `scope` as `app`. If the daemon attributed the call to the wrong app (see the
/// FIXME in tests/connection.rs), the keys are refused to us: remove it and try again.
/// Returns the subscription and how many attempts were misattributed.
async fn subscribe(app: &App, admin: &AdminProxy<'_>, scope: &str) -> (Sub, usize) {
    let mut misattributed = 0;
    loop {
        let path = app
            .manager
            .subscribe(scope, HashMap::new())
            .await
            .unwrap_or_else(|e| panic!("Subscribe({scope}): {e}"));
        match app.subscription(&path).await.get_key("p256dh").await {
            Ok(_) => return (app.sub(path).await, misattributed),
            Err(_) => {
                misattributed += 1;
                assert!(misattributed < 50, "never attributed to the app");
                let _ = admin.remove(&path).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

fn encrypt(sub: &Sub, payload: &[u8]) -> Vec<u8> {
    webpushd::crypto::encrypt(&sub.p256dh, &sub.auth, payload, false)
        .unwrap()
        .body
}

/// Inject an encrypted message; returns the server's message id (the `version`).
fn deliver(server: &PushServer, sub: &Sub, payload: &[u8]) -> String {
    server
        .deliver(
            &sub.endpoint,
            encrypt(sub, payload),
            Some("aes128gcm"),
            3600,
        )
        .unwrap()
        .message_id()
        .to_string()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s[s.rfind(')').map_or(0, |i| i + 2)..]
                .split_whitespace()
                .next()
                .unwrap_or("");
            state != "Z" && state != "X"
        })
        .unwrap_or(false)
}

fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("webpushd.db")
}

/// `PRAGMA integrity_check` through a read-only connection.
fn integrity(db: &Path) -> String {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

/// Versions the server recorded an ack with code 100 for.
fn acked_100(server: &PushServer) -> HashSet<String> {
    server
        .stats()
        .acks
        .into_iter()
        .filter(|(_, _, code)| *code == 100)
        .map(|(_, v, _)| v)
        .collect()
}

/// A payload that says which (round, seq) it is, padded to `len`.
fn tagged(round: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x42; len.max(8)];
    p[..4].copy_from_slice(&round.to_le_bytes());
    p[4..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn untag(p: &[u8]) -> Option<(u32, u32)> {
    Some((
        u32::from_le_bytes(p.get(..4)?.try_into().ok()?),
        u32::from_le_bytes(p.get(4..8)?.try_into().ok()?),
    ))
}

// ---------------------------------------------------------------------------------------
// Crash safety

/// What the app saw, shared between its signal listener and the test.
#[derive(Default)]
struct Ledger {
    got: HashSet<(u32, u32)>,
    /// Acknowledged with `AckMessage` returning success, or with `AckMessages` not naming it.
    acked: HashSet<(u32, u32)>,
    /// `acked` as it was when the daemon was last killed: none of these may come back.
    acked_at_kill: HashSet<(u32, u32)>,
    came_back: Vec<(u32, u32)>,
    deliveries: usize,
    ack_errors: usize,
    /// Message ids whose acknowledgement is under way.
    acking: HashSet<String>,
}

/// Where `handle` sends what it acknowledges together (message id, tag).
type Batcher = tokio::sync::mpsc::UnboundedSender<(String, (u32, u32))>;

/// The scope whose messages the app acknowledges with `AckMessages`, what it has at once;
/// the other's go one by one with `AckMessage`.
const BATCHED: &str = "crash-b";

/// Acknowledge `BATCHED`'s messages as they come in, in one `AckMessages` call each time:
/// an id not named in its answer is acknowledged and must never come back.
fn batch_acker(ledger: &Arc<Mutex<Ledger>>, manager: &ManagerProxy<'static>) -> Batcher {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, (u32, u32))>();
    let (ledger, manager) = (ledger.clone(), manager.clone());
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(item) => batch.push(item),
                    Err(_) => break,
                }
            }
            let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
            let result = manager.ack_messages(BATCHED, &ids).await;
            let mut l = ledger.lock().unwrap();
            for (id, _) in &batch {
                l.acking.remove(id);
            }
            match result {
                Ok(not_pending) => {
                    for (id, key) in &batch {
                        if !not_pending.contains(id) {
                            l.acked.insert(*key);
                        }
                    }
                }
                Err(e) => {
                    l.ack_errors += batch.len();
                    if l.ack_errors <= 5 {
                        eprintln!("AckMessages of {}: {e}", batch.len());
                    }
                }
            }
        }
    });
    tx
}

/// The app's side: note a message, complain if it was acked before the last crash, ack it.
fn handle(
    ledger: &Arc<Mutex<Ledger>>,
    checking: &Arc<AtomicBool>,
    manager: &ManagerProxy<'static>,
    batcher: &Batcher,
    scope: String,
    id: String,
    payload: &[u8],
) {
    let Some(key) = untag(payload) else { return };
    {
        let mut l = ledger.lock().unwrap();
        l.deliveries += 1;
        l.got.insert(key);
        if checking.load(Ordering::SeqCst) && l.acked_at_kill.contains(&key) {
            l.came_back.push(key);
        }
        // One AckMessage at a time per message id (FetchMessages repeats what is pending).
        if !l.acking.insert(id.clone()) {
            return;
        }
    }
    if scope == BATCHED {
        let _ = batcher.send((id, key));
        return;
    }
    let (ledger, manager) = (ledger.clone(), manager.clone());
    tokio::spawn(async move {
        // Within dbus-daemon's limit of pending replies per connection.
        static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(32);
        let _permit = IN_FLIGHT.acquire().await.unwrap();
        let result = manager.ack_message(&scope, &id).await;
        ledger.lock().unwrap().acking.remove(&id);
        match result {
            Ok(()) => {
                ledger.lock().unwrap().acked.insert(key);
            }
            Err(e) => {
                let mut l = ledger.lock().unwrap();
                l.ack_errors += 1;
                if l.ack_errors <= 5 {
                    eprintln!("AckMessage {key:?}: {e}");
                }
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_bursts_loses_nothing_and_acked_messages_never_return() {
    let rounds = env_num("FAULTS_ROUNDS", 5) as u32;
    let burst = env_num("FAULTS_BURST", 400) as u32;
    // No pending cap: it drops what the app has not acknowledged yet by design, and this
    // test is about crashes, not that policy.
    let mut s = setup_full(|_| {}, "[delivery]\nmax_pending_per_subscription = 1000000").await;
    let adm = admin(&s.bus).await;
    let app = s.bus.app("org.example.Crash").await;
    let subs = [
        subscribe(&app, &adm, "crash-a").await.0,
        subscribe(&app, &adm, "crash-b").await.0,
    ];
    let server = Arc::new(s.server);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let checking = Arc::new(AtomicBool::new(false));
    let batcher = batch_acker(&ledger, &app.manager);
    {
        let mut msgs = app.messages().await;
        let (ledger, checking, manager) = (ledger.clone(), checking.clone(), app.manager.clone());
        let batcher = batcher.clone();
        tokio::spawn(async move {
            while let Some((scope, id, payload)) = msgs.next().await {
                handle(&ledger, &checking, &manager, &batcher, scope, id, &payload);
            }
        });
    }
    let config = std::fs::read_to_string(&s.daemon.config_file).unwrap();
    let mut rng = rand::thread_rng();
    let mut kill_points = Vec::new();

    for round in 0..rounds {
        // Encrypt first, so the burst is a burst.
        let bodies: Vec<(String, Vec<u8>)> = (0..burst)
            .map(|seq| {
                let sub = &subs[seq as usize % 2];
                (sub.endpoint.clone(), encrypt(sub, &tagged(round, seq, 512)))
            })
            .collect();
        let producer = {
            let server = server.clone();
            std::thread::spawn(move || {
                for (endpoint, body) in bodies {
                    server
                        .deliver(&endpoint, body, Some("aes128gcm"), 3600)
                        .unwrap();
                }
            })
        };
        // Somewhere in the burst: once the app has seen a random share of it (zero
        // included), plus up to a few milliseconds, so the kill lands anywhere between
        // the WebSocket read, the commit, the ack to the server and the signal.
        let share = rng.gen_range(0..burst) as usize;
        let started = Instant::now();
        while ledger
            .lock()
            .unwrap()
            .got
            .iter()
            .filter(|k| k.0 == round)
            .count()
            < share
            && started.elapsed() < Duration::from_secs(10)
        {
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        tokio::time::sleep(Duration::from_micros(rng.gen_range(0..5000))).await;
        let had = ledger
            .lock()
            .unwrap()
            .got
            .iter()
            .filter(|k| k.0 == round)
            .count();
        s.daemon.kill();
        let at = started.elapsed();
        kill_points.push((at, had));
        producer.join().unwrap();
        // Let signals already on their way reach the listener, then freeze what was acked.
        tokio::time::sleep(Duration::from_millis(300)).await;
        {
            let mut l = ledger.lock().unwrap();
            l.acked_at_kill = l.acked.clone();
        }
        // The file a SIGKILL left behind is a consistent database.
        assert_eq!(integrity(&db_path(&s.daemon.state_dir)), "ok");

        s.daemon = Daemon::spawn(&s.bus, s.dir.path(), &config, &[]);
        s.daemon.wait_ready(&s.bus).await;
        checking.store(true, Ordering::SeqCst);

        // Everything of this round arrives: by signal, or by FetchMessages (what an app
        // does when it (re)starts; also covers what was stored before the crash).
        let want: HashSet<(u32, u32)> = (0..burst).map(|q| (round, q)).collect();
        let deadline = Instant::now() + WAIT;
        loop {
            for scope in ["crash-a", "crash-b"] {
                if let Ok(list) = app.manager.fetch_messages(scope).await {
                    for (id, payload, _) in list {
                        handle(
                            &ledger,
                            &checking,
                            &app.manager,
                            &batcher,
                            scope.to_string(),
                            id,
                            &payload,
                        );
                    }
                }
            }
            let missing = want.difference(&ledger.lock().unwrap().got).count();
            if missing == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {missing} of {burst} messages never reached the app (killed after {at:?})\n{}",
                s.daemon.log_text()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // Ack everything still pending (an ack lost to a kill leaves its message pending, and
    // the app finds it again with FetchMessages) until nothing is; then stop cleanly and
    // check the file. (An ack the daemon committed but could not answer before the kill
    // is one the app never saw succeed: such a message may come back, and may not.)
    let l_total = rounds as usize * burst as usize;
    // Acks are slow while much is pending (see BENCHMARKS.md), so the long mode gets more.
    let drain_deadline = Instant::now() + WAIT + Duration::from_millis(5 * l_total as u64);
    loop {
        let mut pending = 0;
        for scope in ["crash-a", "crash-b"] {
            for (id, payload, _) in app.manager.fetch_messages(scope).await.unwrap_or_default() {
                pending += 1;
                handle(
                    &ledger,
                    &checking,
                    &app.manager,
                    &batcher,
                    scope.to_string(),
                    id,
                    &payload,
                );
            }
        }
        if pending == 0 {
            break;
        }
        assert!(
            Instant::now() < drain_deadline,
            "{pending} messages still pending after acknowledging for {:?}",
            WAIT + Duration::from_millis(5 * l_total as u64)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(s.daemon.stop(), Some(0));
    assert_eq!(integrity(&db_path(&s.daemon.state_dir)), "ok");
    let l = ledger.lock().unwrap();
    assert!(
        l.came_back.is_empty(),
        "acknowledged messages came back after a crash: {:?}",
        &l.came_back[..l.came_back.len().min(20)]
    );
    assert_eq!(l.got.len(), l_total);
    eprintln!(
        "{rounds} rounds × {burst}: killed at {kill_points:?} (time into the burst, messages of it the app had); {} deliveries for {} messages; {} acknowledgements failed",
        l.deliveries, l_total, l.ack_errors
    );
}

// ---------------------------------------------------------------------------------------
// Storage faults

/// Runs `cmd`; `false` (and why, on stderr) if it could not.
fn run(cmd: &mut Command) -> bool {
    match cmd.output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "{cmd:?}: {}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            false
        }
        Err(e) => {
            eprintln!("{cmd:?}: {e}");
            false
        }
    }
}

/// Unmounts on drop, also when the test fails.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Deliver messages one at a time until one is not acknowledged with 100 within a
/// second: the storage under the daemon has failed. Returns the versions sent.
async fn push_until_unacked(server: &PushServer, sub: &Sub, max: usize) -> Vec<String> {
    let mut sent = Vec::new();
    for i in 0..max {
        let v = deliver(server, sub, &tagged(9, i as u32, 3000));
        sent.push(v.clone());
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if acked_100(server).contains(&v) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !acked_100(server).contains(&v) {
            return sent;
        }
    }
    panic!("{max} messages were all stored: the storage fault had no effect");
}

/// The storage-fault scenario: `fault` breaks the daemon's storage, `heal` repairs it.
/// While broken, messages are not acknowledged (the server keeps them) and the daemon
/// stays up and says why; once repaired, every one of them reaches the app.
/// How the messages held back by the server come back once storage works again.
#[derive(PartialEq)]
enum Recovery {
    /// `Admin.Reconnect` (what `pushctl reconnect` does): the server resends what was
    /// never acknowledged.
    Reconnect,
    /// Nothing: the daemon must notice by itself.
    ByItself,
}

async fn storage_fault(
    s: &Setup,
    fault: impl FnOnce(&Path) -> bool,
    heal: impl FnOnce(&Path),
    what: &str,
    recovery: Recovery,
) {
    let adm = admin(&s.bus).await;
    wait_connected(&s.bus).await;
    let app = s.bus.app("org.example.Storage").await;
    let (sub, _) = subscribe(&app, &adm, "storage").await;
    let mut msgs = app.messages().await;
    deliver(&s.server, &sub, &tagged(0, 0, 100));
    let (_, id, _) = next(&mut msgs, "a message before the fault").await;
    app.manager.ack_message("storage", &id).await.unwrap();

    if !fault(&s.daemon.state_dir) {
        eprintln!("SKIPPED: cannot {what} here (needs root)");
        return;
    }
    let unacked = push_until_unacked(&s.server, &sub, 300).await;
    let stuck = unacked.last().unwrap().clone();
    let stuck_tag = (9, unacked.len() as u32 - 1);
    // More arrive while the fault lasts; none is acknowledged, the daemon stays up.
    let mut during = vec![stuck];
    for i in 0..3 {
        during.push(deliver(&s.server, &sub, &tagged(10, i, 100)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let acked = acked_100(&s.server);
    assert!(
        during.iter().all(|v| !acked.contains(v)),
        "acknowledged while {what}"
    );
    assert!(alive(s.daemon.pid()), "the daemon died: {what}");
    assert!(adm.status().await.is_ok(), "the daemon does not answer");
    let log = s.daemon.log_text();
    assert!(
        log.contains("cannot store notifications: not acknowledged"),
        "no clear error in the log:\n{log}"
    );

    // A running app is not held up by the storage: it already has them, signalled before
    // the (failing) commit. Not stored, they come again once storage works.
    let mut early: HashMap<(u32, u32), String> = HashMap::new();
    while let Ok(Some((_, id, payload))) =
        tokio::time::timeout(Duration::from_millis(300), msgs.next()).await
    {
        if let Some(tag) = untag(&payload) {
            early.insert(tag, id.clone());
        }
    }
    assert!(
        (0..3).all(|i| early.contains_key(&(10, i))),
        "the running app did not get the messages while {what}: {early:?}"
    );
    // The app acknowledges two of them while storing still fails: taken (it has them),
    // and their copies from the server are not shown again once storage works.
    for i in 0..2 {
        app.manager
            .ack_message("storage", &early[&(10, i)])
            .await
            .unwrap_or_else(|e| panic!("an ack of a message the app was given, while {what}: {e}"));
    }

    heal(&s.daemon.state_dir);
    if recovery == Recovery::Reconnect {
        adm.reconnect().await.unwrap();
    }
    // Every message sent during the fault arrives (signal or FetchMessages) and is
    // then acknowledged to the server.
    let want: HashSet<(u32, u32)> = HashSet::from([(10, 2), stuck_tag]);
    let acked_early: HashSet<(u32, u32)> = (0..2).map(|i| (10, i)).collect();
    let mut got = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while !want.is_subset(&got) {
        assert!(
            Instant::now() < deadline,
            "after the fault ({what}) was repaired, {:?} never reached the app\n{}",
            want.difference(&got).collect::<Vec<_>>(),
            s.daemon.log_text()
        );
        // Counted only once stored: the daemon accepts its acknowledgement.
        if let Ok(Some((_, id, payload))) =
            tokio::time::timeout(Duration::from_millis(200), msgs.next()).await
        {
            if app.manager.ack_message("storage", &id).await.is_ok() {
                got.extend(untag(&payload));
            }
        }
        for (_, payload, _) in app.manager.fetch_messages("storage").await.unwrap() {
            got.extend(untag(&payload));
        }
        let again: Vec<_> = got.intersection(&acked_early).collect();
        assert!(
            again.is_empty(),
            "acknowledged while {what}, shown again after: {again:?}"
        );
    }
    eventually("the server to get its acks", || async {
        let acked = acked_100(&s.server);
        during.iter().all(|v| acked.contains(v)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn disk_full_nothing_unstored_is_acked_and_all_arrives_after_space_returns() {
    let mounted = Arc::new(Mutex::new(None::<Mount>));
    let m = mounted.clone();
    let s = setup_with(move |home| {
        let state = home.join("state");
        std::fs::create_dir_all(&state).unwrap();
        if run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
            .arg(&state))
        {
            *m.lock().unwrap() = Some(Mount(state));
        }
    })
    .await;
    if mounted.lock().unwrap().is_none() {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    let filler = |dir: &Path| dir.join("filler");
    storage_fault(
        &s,
        |dir| {
            // Fill the file system to the last byte.
            use std::io::Write;
            let mut f = std::fs::File::create(filler(dir)).unwrap();
            let chunk = vec![0u8; 4096];
            while f.write_all(&chunk).and_then(|_| f.flush()).is_ok() {}
            let _ = f.write_all(&[0]);
            true
        },
        |dir| std::fs::remove_file(filler(dir)).unwrap(),
        "store on a full disk",
        Recovery::Reconnect,
    )
    .await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_database_nothing_unstored_is_acked_and_all_arrives_after_repair() {
    read_only(Recovery::Reconnect).await;
}

/// Without any help: since 2ae9d0a the daemon reconnects by itself (after 5 s, doubling)
/// while storing fails, so the server resends what was never acknowledged. (Before, those
/// messages waited for the next reconnect for whatever reason — hours.)
#[tokio::test(flavor = "multi_thread")]
async fn read_only_database_recovers_without_a_reconnect() {
    read_only(Recovery::ByItself).await;
}

async fn read_only(recovery: Recovery) {
    // As root, mode bits do not stop writes (chmod 0500 does nothing to the daemon); the
    // immutable attribute does, also through descriptors already open.
    let s = setup().await;
    let files = |dir: &Path| {
        ["webpushd.db", "webpushd.db-wal"]
            .iter()
            .map(|f| dir.join(f))
            .collect::<Vec<_>>()
    };
    storage_fault(
        &s,
        |dir| {
            let _ =
                std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o500));
            run(Command::new("chattr").arg("+i").args(files(dir)))
        },
        |dir| {
            assert!(run(Command::new("chattr").arg("-i").args(files(dir))));
            std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
        },
        "write the database (read-only)",
        recovery,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_database_is_moved_aside_and_the_daemon_starts_empty() {
    let mut s = setup().await;
    let adm = admin(&s.bus).await;
    let app = s.bus.app("org.example.Corrupt").await;
    subscribe(&app, &adm, "before").await;
    assert_eq!(s.daemon.stop(), Some(0));
    // Keep the header (it still looks like SQLite), scramble every page after the first.
    let db = db_path(&s.daemon.state_dir);
    let mut bytes = std::fs::read(&db).unwrap();
    assert!(bytes.len() > 8192, "database unexpectedly small");
    for (i, b) in bytes.iter_mut().enumerate().skip(4096) {
        *b = (i * 131 % 251) as u8;
    }
    std::fs::write(&db, &bytes).unwrap();
    for side in ["webpushd.db-wal", "webpushd.db-shm"] {
        let _ = std::fs::remove_file(s.daemon.state_dir.join(side));
    }

    s.daemon.restart(&s.bus).await;
    wait_connected(&s.bus).await;
    let log = s.daemon.log_text();
    assert!(
        log.contains("the database was damaged: moved aside"),
        "the log does not say what happened:\n{log}"
    );
    let aside: Vec<_> = std::fs::read_dir(&s.daemon.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("webpushd.db.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read(s.daemon.state_dir.join(&aside[0])).unwrap(),
        bytes,
        "the damaged file must be kept as it was"
    );
    // Started empty, and works.
    assert!(app.manager.list_subscriptions().await.unwrap().is_empty());
    let (sub, _) = subscribe(&app, &adm, "after").await;
    let mut msgs = app.messages().await;
    deliver(&s.server, &sub, b"still works");
    assert_eq!(next(&mut msgs, "a message").await.2, b"still works");
    // No crash loop: still the same process a moment later.
    let pid = s.daemon.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(pid));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_locked_by_another_process_is_a_clear_error_and_nothing_is_lost() {
    let mut s = setup().await;
    let adm = admin(&s.bus).await;
    let app = s.bus.app("org.example.Locked").await;
    let (sub, _) = subscribe(&app, &adm, "kept").await;
    assert_eq!(s.daemon.stop(), Some(0));
    let db = db_path(&s.daemon.state_dir);
    let before = std::fs::read(&db).unwrap();

    // Another process (here: this one) holds the database in an exclusive transaction
    // with exclusive locking, so no other connection can read or write it.
    let locker = rusqlite::Connection::open(&db).unwrap();
    locker
        .execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE; \
             CREATE TABLE IF NOT EXISTS lock_probe (x); INSERT INTO lock_probe VALUES (1);",
        )
        .unwrap();
    let config = std::fs::read_to_string(&s.daemon.config_file).unwrap();
    let started = Instant::now();
    let mut d = Daemon::spawn(&s.bus, s.dir.path(), &config, &[]);
    let code = d.wait_exit();
    let log = d.log_text();
    // What a user wants: exit 1 (not a crash), soon, a message that names the problem,
    // and the file untouched (a locked database is not a damaged one).
    assert_eq!(code, Some(1), "exit code; log:\n{log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        log.contains("locked"),
        "the error does not say locked:\n{log}"
    );
    let aside = std::fs::read_dir(&s.daemon.state_dir)
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().contains("corrupt"));
    assert!(
        !aside,
        "a locked database was moved aside as if damaged:\n{log}"
    );
    drop(d);

    locker.execute_batch("ROLLBACK").unwrap();
    drop(locker);
    assert!(std::fs::read(&db).unwrap().len() >= before.len() / 2);
    s.daemon = Daemon::spawn(&s.bus, s.dir.path(), &config, &[]);
    s.daemon.wait_ready(&s.bus).await;
    // The subscription made before is still there and still receives.
    let path = app.manager.get_subscription("kept").await.unwrap();
    assert_eq!(path, sub.path);
    let mut msgs = app.messages().await;
    deliver(&s.server, &sub, b"after the lock");
    assert_eq!(next(&mut msgs, "a message").await.2, b"after the lock");
}

// ---------------------------------------------------------------------------------------
// Load

#[tokio::test(flavor = "multi_thread")]
async fn many_apps_subscribe_receive_and_unsubscribe_at_once() {
    let clients = env_num("FAULTS_LOAD_CLIENTS", 50);
    let secs = env_num("FAULTS_LOAD_SECS", 8) as u64;
    let s = setup().await;
    wait_connected(&s.bus).await;
    let server = Arc::new(s.server);
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let misattributed = Arc::new(AtomicUsize::new(0));
    let cycles = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    let adm = Arc::new(admin(&s.bus).await);
    for c in 0..clients {
        let app = s.bus.app(&format!("org.example.Load{c}")).await;
        let adm = adm.clone();
        let (server, errors, misattributed, cycles) = (
            server.clone(),
            errors.clone(),
            misattributed.clone(),
            cycles.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut msgs = app.messages().await;
            let (home, m) = subscribe(&app, &adm, "home").await;
            misattributed.fetch_add(m, Ordering::Relaxed);
            let mut gone = Vec::new();
            let mut n = 0u32;
            while Instant::now() < end {
                n += 1;
                let scope = format!("churn-{n}");
                let result: Result<(), String> = async {
                    let path = app
                        .manager
                        .subscribe(&scope, HashMap::new())
                        .await
                        .map_err(|e| format!("Subscribe: {e}"))?;
                    let sub = app.sub(path).await;
                    let target = if n % 2 == 0 { &sub } else { &home };
                    let want = tagged(c as u32, n, 200);
                    let body = encrypt(target, &want);
                    server
                        .deliver(&target.endpoint, body, Some("aes128gcm"), 60)
                        .map_err(|e| format!("deliver: {e}"))?;
                    let (sc, id, payload) =
                        tokio::time::timeout(Duration::from_secs(10), msgs.next())
                            .await
                            .map_err(|_| "no Message within 10 s".to_string())?
                            .ok_or("stream ended")?;
                    if payload != want {
                        return Err(format!("wrong payload on {sc}"));
                    }
                    app.manager
                        .ack_message(&sc, &id)
                        .await
                        .map_err(|e| format!("AckMessage: {e}"))?;
                    if !app
                        .manager
                        .unsubscribe(&scope)
                        .await
                        .map_err(|e| format!("Unsubscribe: {e}"))?
                    {
                        return Err("Unsubscribe said there was nothing".into());
                    }
                    gone.push(sub.endpoint);
                    Ok(())
                }
                .await;
                match result {
                    Ok(()) => {
                        cycles.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.lock().unwrap().push(format!("app {c}: {e}")),
                }
            }
            (app, home, gone)
        }));
    }
    let mut homes = Vec::new();
    let mut gone = Vec::new();
    let mut apps = Vec::new();
    let limit = Instant::now() + Duration::from_secs(secs + 60);
    for t in tasks {
        let (app, home, g) = tokio::time::timeout_at(limit, t)
            .await
            .unwrap_or_else(|_| panic!("the apps got no answers: is the daemon wedged?"))
            .unwrap();
        homes.push(home);
        gone.extend(g);
        apps.push(app);
    }
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    let cycles = cycles.load(Ordering::Relaxed);
    assert!(cycles >= clients, "only {cycles} cycles");

    // The daemon's state is what the server holds: exactly one subscription per app; each
    // is deliverable, and every unsubscribed endpoint is gone from the server (410).
    let adm = admin(&s.bus).await;
    let all = adm.list_all().await.unwrap();
    assert_eq!(all.len(), clients, "daemon subscriptions: {all:?}");
    for h in &homes {
        assert!(all.contains(&h.path));
        server
            .deliver(&h.endpoint, encrypt(h, b"final"), Some("aes128gcm"), 60)
            .unwrap_or_else(|e| panic!("a live subscription is unknown to the server: {e}"));
    }
    eventually(
        "the server to forget every unsubscribed channel",
        || async {
            let live = gone
                .iter()
                .filter(|e| server.deliver(e, Vec::new(), None, 0).is_ok())
                .count();
            (live == 0).then_some(())
        },
    )
    .await;
    eprintln!(
        "{clients} apps × {secs} s: {cycles} subscribe/receive/ack/unsubscribe cycles, {} misattributed calls retried",
        misattributed.load(Ordering::Relaxed)
    );
    drop(apps);
}

// ---------------------------------------------------------------------------------------
// Hostile peers

/// The daemon is alive, answers, is connected and still delivers.
async fn still_serving(s: &Setup, app: &App, sub: &Sub, scope: &str, what: &str) {
    assert!(alive(s.daemon.pid()), "the daemon died after {what}");
    wait_connected(&s.bus).await;
    let mut msgs = app.messages().await;
    let payload = format!("after {what}");
    deliver(&s.server, sub, payload.as_bytes());
    loop {
        let (sc, id, p) = next(&mut msgs, &format!("a message after {what}")).await;
        app.manager.ack_message(&sc, &id).await.unwrap();
        if sc == scope && p == payload.as_bytes() {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hostile_server_huge_frames_unknown_channel_floods_and_pings() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    // The server pings every 5 ms: "endless pings from the server side".
    let server = push_server_with(dir.path(), |o| {
        o.max_stored_messages = 1_000_000;
        o.server_ping_interval = Duration::from_millis(5);
    })
    .await;
    let daemon = Daemon::start(
        &bus,
        dir.path(),
        &Daemon::config_for(&server.ws_url(), FAST),
    )
    .await;
    let s = Setup {
        bus,
        server,
        daemon,
        dir,
    };
    let faults = s.server.faults().unwrap();
    let adm = admin(&s.bus).await;
    wait_connected(&s.bus).await;
    let app = s.bus.app("org.example.Hostile").await;
    let (sub, _) = subscribe(&app, &adm, "hostile").await;
    still_serving(&s, &app, &sub, "hostile", "the first pings").await;
    let pid = s.daemon.pid();
    let rss0 = rss_kib(pid);

    // Pings for two seconds: answered, connection kept, little CPU.
    let conns = s.server.stats().connections;
    let cpu = |pid: u32| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<u64> = st[st.rfind(')').unwrap() + 2..]
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        f[11] + f[12]
    };
    let c0 = cpu(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ticks = cpu(pid) - c0;
    assert_eq!(
        s.server.stats().connections,
        conns,
        "pings cost the connection"
    );
    assert!(
        ticks < 100,
        "answering pings for 2 s took {ticks} ticks of CPU"
    );

    // Ten frames of 10 MB: refused without buffering them, then a reconnect.
    let huge = format!(
        "{{\"messageType\":\"notification\",\"channelID\":\"9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d\",\"version\":\"v\",\"data\":\"{}\"}}",
        "A".repeat(10 << 20)
    );
    for i in 0..10 {
        wait_connected(&s.bus).await;
        let before = s.server.stats().connections;
        faults.send_raw(&huge);
        eventually(&format!("a reconnect after huge frame {i}"), || async {
            (s.server.stats().connections > before && s.server.stats().connected_clients == 1)
                .then_some(())
        })
        .await;
    }
    still_serving(&s, &app, &sub, "hostile", "10 MB frames").await;

    // A flood of notifications for channels the daemon never had.
    let before = s.server.stats();
    let flood = 3000;
    for i in 0..flood {
        let ch = uuid::Uuid::new_v4().hyphenated().to_string();
        faults.send_raw(&format!(
            "{{\"messageType\":\"notification\",\"channelID\":\"{ch}\",\"version\":\"flood-{i}\",\"data\":\"AAAA\",\"headers\":{{\"encoding\":\"aes128gcm\"}}}}"
        ));
    }
    // Unsolicited pongs, too.
    for _ in 0..3000 {
        faults.send_raw("{}");
    }
    eventually("102 acks for the whole flood", || async {
        let st = s.server.stats();
        let n = st
            .acks
            .iter()
            .filter(|(_, v, code)| v.starts_with("flood-") && *code == 102)
            .count();
        (n == flood).then_some(())
    })
    .await;
    let after = s.server.stats();
    assert!(
        after.unregisters.len() > before.unregisters.len(),
        "unknown channels were not unregistered"
    );
    still_serving(&s, &app, &sub, "hostile", "a flood for unknown channels").await;
    let rss1 = rss_kib(pid);
    assert!(
        rss1 < rss0 + 32 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    assert_eq!(
        s.daemon.log_text().matches("panicked").count(),
        0,
        "a panic in the log"
    );
}

/// A value of D-Bus type `sig` (a single complete type), made big where it can be.
fn huge_value(sig: &str) -> Option<Value<'static>> {
    let big = "x".repeat(4 << 20);
    Some(match sig {
        "s" => Value::from(big),
        "o" => Value::from(ObjectPath::try_from(format!("/{}", "a/".repeat(200_000) + "z")).ok()?),
        "ay" => Value::from(vec![7u8; 4 << 20]),
        "a{sv}" => {
            let mut d: HashMap<String, Value<'static>> = HashMap::new();
            for i in 0..20_000 {
                d.insert(format!("key{i}"), Value::from("y".repeat(64)));
            }
            d.insert(
                "application_server_key".into(),
                Value::from(vec![4u8; 1 << 20]),
            );
            Value::from(d)
        }
        "a{ss}" => {
            let mut d: HashMap<String, String> = HashMap::new();
            for i in 0..20_000 {
                d.insert(format!("key{i}"), "y".repeat(64));
            }
            Value::from(d)
        }
        "as" => Value::from(vec!["z".repeat(1 << 16); 64]),
        "b" => Value::from(true),
        "i" => Value::from(i32::MIN),
        "u" => Value::from(u32::MAX),
        "x" => Value::from(i64::MIN),
        "t" => Value::from(u64::MAX),
        "v" => Value::Value(Box::new(Value::from("z".repeat(1 << 20)))),
        _ => return None,
    })
}

/// Split a signature into its complete types (enough for the daemon's interfaces).
fn complete_types(sig: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = sig.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let start = i;
        while b[i] == b'a' {
            i += 1;
        }
        if b[i] == b'{' || b[i] == b'(' {
            let mut depth = 0;
            loop {
                match b[i] {
                    b'{' | b'(' => depth += 1,
                    b'}' | b')' => depth -= 1,
                    _ => {}
                }
                i += 1;
                if depth == 0 {
                    break;
                }
            }
        } else {
            i += 1;
        }
        out.push(sig[start..i].to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_dbus_callers_get_named_errors_and_the_daemon_stays_up() {
    let s = setup().await;
    let adm = admin(&s.bus).await;
    let app = s.bus.app("org.example.Caller").await;
    let (sub, _) = subscribe(&app, &adm, "victim").await;
    let pid = s.daemon.pid();
    let rss0 = rss_kib(pid);
    let conn = &app.conn;

    // Every method of every interface at these paths, from introspection.
    let mut calls = 0;
    let mut names: HashMap<String, usize> = HashMap::new();
    for path in [
        "/org/webpushd/Push1".to_string(),
        sub.path.to_string(),
        webpushd::dbus::unifiedpush::PATH.to_string(),
    ] {
        let xml = zbus::fdo::IntrospectableProxy::builder(conn)
            .destination("org.webpushd.Push1")
            .unwrap()
            .path(path.clone())
            .unwrap()
            .build()
            .await
            .unwrap()
            .introspect()
            .await
            .unwrap();
        let node = zbus_xml::Node::from_reader(xml.as_bytes()).unwrap();
        for iface in node.interfaces() {
            let iname = iface.name().to_string();
            if iname == "org.freedesktop.DBus.Peer"
                || iname == "org.freedesktop.DBus.Introspectable"
            {
                continue;
            }
            for m in iface.methods() {
                let ins: Vec<String> = m
                    .args()
                    .iter()
                    .filter(|a| a.direction() != Some(zbus_xml::ArgDirection::Out))
                    .map(|a| a.ty().to_string())
                    .collect();
                let mname = m.name().to_string();
                // Wrong types: a (u, u) body in place of whatever it takes.
                let mut bodies: Vec<(String, Option<Value<'static>>)> = Vec::new();
                bodies.push(("wrong types".into(), None));
                // Right types, huge values.
                if !ins.is_empty() {
                    let sig: String = ins.concat();
                    let vals: Option<Vec<Value<'static>>> =
                        complete_types(&sig).iter().map(|t| huge_value(t)).collect();
                    if let Some(vals) = vals {
                        let mut b = StructureBuilder::new();
                        for v in vals {
                            b = b.append_field(v);
                        }
                        bodies.push(("huge".into(), Some(Value::from(b.build().unwrap()))));
                    }
                }
                for (kind, body) in bodies {
                    let call = async {
                        match &body {
                            None => {
                                conn.call_method(
                                    Some("org.webpushd.Push1"),
                                    path.as_str(),
                                    Some(iname.as_str()),
                                    mname.as_str(),
                                    &(0xdead_beef_u32, 7u32),
                                )
                                .await
                            }
                            Some(Value::Structure(st)) => {
                                conn.call_method(
                                    Some("org.webpushd.Push1"),
                                    path.as_str(),
                                    Some(iname.as_str()),
                                    mname.as_str(),
                                    st,
                                )
                                .await
                            }
                            Some(_) => unreachable!(),
                        }
                    };
                    let r = tokio::time::timeout(Duration::from_secs(10), call)
                        .await
                        .unwrap_or_else(|_| panic!("{iname}.{mname} ({kind}): no answer in 10 s"));
                    calls += 1;
                    match r {
                        // Methods without arguments may ignore extra ones; UnifiedPush
                        // answers refusals in-band, as its specification says.
                        Ok(_) if ins.is_empty() || iname.starts_with("org.unifiedpush.") => {
                            *names
                                .entry(format!("{kind}: answered in-band"))
                                .or_default() += 1;
                        }
                        Ok(_) => panic!("{iname}.{mname} ({kind}) succeeded"),
                        Err(zbus::Error::MethodError(name, msg, _)) => {
                            assert!(
                                !name.as_str().ends_with("NoReply")
                                    && !name.as_str().ends_with("Timeout"),
                                "{iname}.{mname} ({kind}): {name} {msg:?}"
                            );
                            *names.entry(format!("{kind}: {name}")).or_default() += 1;
                            if std::env::var_os("FAULTS_VERBOSE").is_some() {
                                eprintln!("{iname}.{mname} ({kind}): {name} {msg:?}");
                            }
                        }
                        Err(zbus::Error::FDO(e)) => {
                            *names
                                .entry(format!("fdo {e}").chars().take(60).collect())
                                .or_default() += 1;
                        }
                        Err(e) => panic!("{iname}.{mname} ({kind}): not a named error: {e}"),
                    }
                }
            }
        }
    }
    assert!(calls > 20, "only {calls} calls made");
    eprintln!("{calls} hostile calls; errors: {names:?}");
    assert!(alive(pid), "the daemon died");
    let rss1 = rss_kib(pid);
    assert!(
        rss1 < rss0 + 64 * 1024,
        "RSS grew from {rss0} KiB to {rss1} KiB"
    );
    // Still serving. (A no-argument Unsubscribe with extra arguments may have been taken
    // as a real one: subscribe again, which returns the same one if it is still there.)
    assert!(adm.status().await.is_ok());
    let (sub, _) = subscribe(&app, &adm, "victim").await;
    let mut msgs = app.messages().await;
    deliver(&s.server, &sub, b"unharmed");
    assert_eq!(next(&mut msgs, "a message").await.2, b"unharmed");
    let _: OwnedObjectPath = app.manager.get_subscription("victim").await.unwrap();
}

/// A hundred apps appearing on the bus at once. Until 2ae9d0a, `dbus::track_presence` made
/// D-Bus calls while holding the `NameOwnerChanged` stream; zbus stops reading the socket
/// while a stream's queue (64) is full, so the reply was never read and the daemon's
/// connection wedged for good — not even `Peer.Ping` was answered.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_apps_connecting_does_not_wedge_the_daemon() {
    let s = setup().await;
    wait_connected(&s.bus).await;
    let mut apps = Vec::new();
    for c in 0..100 {
        apps.push(s.bus.app(&format!("org.example.Burst{c}")).await);
    }
    let conn = s.bus.connect().await;
    let peer = zbus::fdo::PeerProxy::builder(&conn)
        .destination("org.webpushd.Push1")
        .unwrap()
        .path("/org/webpushd/Push1")
        .unwrap()
        .build()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), peer.ping())
        .await
        .expect("the daemon does not answer Peer.Ping after 100 apps connected")
        .unwrap();
    let (sub, _) = subscribe(&apps[99], &admin(&s.bus).await, "burst").await;
    assert!(!sub.endpoint.is_empty());
}

/// Rows as earlier versions could leave them: about one key in 256 had its private scalar
/// stored as 31 bytes (a leading zero dropped), which stopped the daemon at every start
/// until 2ae9d0a; and a row that is simply damaged. The daemon must start, keep the short
/// key usable, skip the damaged row with an error, and go on serving the rest.
#[tokio::test(flavor = "multi_thread")]
async fn short_and_damaged_key_rows_do_not_stop_the_daemon() {
    use webpushd::crypto::SubscriptionKeys;
    use webpushd::ids::{AppId, ChannelId, Scope};
    use webpushd::push::{Kind, SubscriptionRecord};
    use webpushd::store::Store;
    let mut s = setup().await;
    let adm = admin(&s.bus).await;
    let app = s.bus.app("org.example.Keys").await;
    let (good, _) = subscribe(&app, &adm, "good").await;
    assert_eq!(s.daemon.stop(), Some(0));

    let keys = (0..100_000)
        .map(|_| SubscriptionKeys::generate().unwrap())
        .find(|k| k.private_key()[0] == 0)
        .expect("no key with a leading zero byte in 100,000 tries");
    let record = |scope: &str| SubscriptionRecord {
        id: 0,
        channel_id: ChannelId::generate(),
        app_id: AppId::parse("org.example.Keys").unwrap(),
        scope: Scope::parse(scope).unwrap(),
        endpoint: format!("{}/wpush/v1/x", s.server.http_base()),
        keys: keys.clone(),
        app_server_key: None,
        push_count: 0,
        last_push: 0,
        quota: 16,
        expired: false,
        expired_reason: String::new(),
        system: false,
        bus_name: None,
        created: 0,
        kind: Kind::WebPush,
        description: String::new(),
        sandbox: None,
    };
    let (mut store, _) = Store::open(&s.daemon.state_dir).unwrap();
    let short = store.insert_subscription(&record("short-key")).unwrap();
    let damaged = store.insert_subscription(&record("damaged")).unwrap();
    drop(store);
    let db = rusqlite::Connection::open(db_path(&s.daemon.state_dir)).unwrap();
    db.execute(
        "UPDATE subscriptions SET private_key = ?2 WHERE id = ?1",
        rusqlite::params![short, &keys.private_key()[1..]],
    )
    .unwrap();
    db.execute(
        "UPDATE subscriptions SET private_key = ?2 WHERE id = ?1",
        rusqlite::params![damaged, vec![0xffu8; 40]],
    )
    .unwrap();
    drop(db);

    let config = std::fs::read_to_string(&s.daemon.config_file).unwrap();
    s.daemon = Daemon::spawn(&s.bus, s.dir.path(), &config, &[]);
    s.daemon.wait_ready(&s.bus).await;
    wait_connected(&s.bus).await;
    let short_path = app.manager.get_subscription("short-key").await.unwrap();
    let p256dh = app
        .subscription(&short_path)
        .await
        .get_key("p256dh")
        .await
        .unwrap();
    assert_eq!(p256dh.as_slice(), keys.public_key());
    assert!(
        app.manager.get_subscription("damaged").await.is_err(),
        "the damaged row was served"
    );
    let log = s.daemon.log_text();
    assert!(
        log.contains("ERROR"),
        "no error about the damaged row:\n{log}"
    );
    let mut msgs = app.messages().await;
    deliver(&s.server, &good, b"the rest works");
    assert_eq!(next(&mut msgs, "a message").await.2, b"the rest works");
}
