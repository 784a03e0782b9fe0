//! The pipeline benchmark: `cargo bench --bench pipeline`.
//!
//! Everything runs on this machine: a private `dbus-daemon`, the project's push server in
//! this process, and the real `webpushd` binary (release build) with its own state
//! directory. It prints a table and writes `target/bench/pipeline.json`.
//!
//! Sections:
//! 1. Stages alone, in this process: parse a notification frame, base64 decode, decrypt
//!    (`crypto::decrypt`), load a subscription's keys (`SubscriptionKeys::from_parts`),
//!    SQLite commits (`Store::record_batch` one by one and batched, `Store::ack`), a zbus
//!    unicast `Message` signal through dbus-daemon. Measured again right after the flat-out
//!    streams; the flat-out target uses the mean of the two.
//! 2. Streams: N aes128gcm messages of 3 KiB injected with `PushServer::deliver` as fast as
//!    possible to subscriptions of the daemon; an app on the bus receives each `Message`
//!    signal and acknowledges what it has with `AckMessages` (`AckMessage` for one). The
//!    same stream to a bare WebSocket
//!    client of the same server (hello, register, ack each). Then both again paced at
//!    100 messages/s. Latency is from just before `deliver` to the app's (or the bare
//!    client's) receipt.
//! 3. Idle: RSS after start with 1,000 subscriptions, and the context switches of every
//!    daemon thread over an idle window while connected.
//! 4. Scale: startup to bus-ready and to connected with 10,000 subscriptions (made through
//!    D-Bus once, then measured over restarts); database size per subscription.
//!
//! Knobs (environment): `BENCH_MESSAGES` (20000), `BENCH_PACED_SECS` (10),
//! `BENCH_IDLE_SUBS` (1000), `BENCH_IDLE_SECS` (60), `BENCH_SCALE_SUBS` (10000),
//! `BENCH_RESTARTS` (5). `BENCH_QUICK=1` makes every default small (about a minute in all).
//! `BENCH_PERF=FILE` (`BENCH_PERF_PACED=FILE`) samples the daemon with `perf record -g`
//! during the flat-out (paced) stream. `BENCH_SERVER_SHM=1` keeps the push server's
//! database in /dev/shm, off the disk the daemon uses.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value as Json};
use support::{push_server_with, App, Bus};
use tempfile::TempDir;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use webpushd::client::{AdminProxy, ManagerProxy, SubscriptionProxy};
use webpushd::crypto::{self, Encoding, SubscriptionKeys};
use webpushd::ids::{AppId, ChannelId, Scope};
use webpushd::push::{Kind, PendingCap, StoredMessage, SubscriptionRecord};
use webpushd::server::PushServer;
use webpushd::store::{BatchItem, Counters, Store};
use zbus::zvariant::{ObjectPath, OwnedValue};

const PAYLOAD: usize = 3 * 1024;
const APP_ID: &str = "org.example.Bench";
/// Subscriptions the streams are spread over.
const STREAM_SUBS: usize = 8;
/// `AckMessages` calls the app keeps in flight.
const ACKS_IN_FLIGHT: usize = 16;
/// Message ids in one `AckMessages` call at most.
const ACK_BATCH: usize = 256;

// ---------------------------------------------------------------------------------------
// Settings

struct Knobs {
    messages: usize,
    paced_secs: u64,
    idle_subs: usize,
    idle_secs: u64,
    scale_subs: usize,
    restarts: usize,
    quick: bool,
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Knobs {
    fn from_env() -> Knobs {
        let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
        let d = |full: u64, q: u64| if quick { q } else { full };
        Knobs {
            messages: env_num("BENCH_MESSAGES", d(20_000, 2_000)) as usize,
            paced_secs: env_num("BENCH_PACED_SECS", d(10, 2)),
            idle_subs: env_num("BENCH_IDLE_SUBS", d(1_000, 200)) as usize,
            idle_secs: env_num("BENCH_IDLE_SECS", d(60, 5)),
            scale_subs: env_num("BENCH_SCALE_SUBS", d(10_000, 1_000)) as usize,
            restarts: env_num("BENCH_RESTARTS", d(5, 2)).max(1) as usize,
            quick,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Small statistics

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Clone, Copy, Debug, Default)]
struct Dist {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Dist {
    fn of(mut v: Vec<f64>) -> Dist {
        v.sort_by(f64::total_cmp);
        Dist {
            p50: percentile(&v, 0.5),
            p99: percentile(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn json(&self) -> Json {
        json!({"p50_ms": self.p50, "p99_ms": self.p99, "max_ms": self.max})
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

/// Time `f` over `n` calls; microseconds per call.
fn per_call_us(n: usize, mut f: impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

// ---------------------------------------------------------------------------------------
// /proc

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name may contain spaces: fields start after the last ')'.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    (ticks(11) + ticks(12)) / clk_tck()
}

fn status_field(pid: u32, tid: Option<u32>, key: &str) -> Option<u64> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| {
            v.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

fn rss_kib(pid: u32) -> u64 {
    status_field(pid, None, "VmRSS").unwrap_or(0)
}

/// (anonymous, file-backed) resident KiB: the daemon's own allocations, and the pages of
/// its binary and libraries (clean, shared, reclaimable).
fn rss_split_kib(pid: u32) -> (u64, u64) {
    (
        status_field(pid, None, "RssAnon").unwrap_or(0),
        status_field(pid, None, "RssFile").unwrap_or(0),
    )
}

/// (busy, all) jiffies of the whole machine, from the first line of `/proc/stat`.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = get(0) + get(1) + get(2) + get(5) + get(6);
    (busy, busy + get(3) + get(4))
}

/// Wait (30 s at most) until the machine has been quiet for half a second. A paced stream
/// measured right after a flat-out one otherwise pays for that one's leftovers (the
/// server's and the daemon's WAL checkpoints, the kernel's writeback): the first paced
/// stream of a run cost the bench process twice what the same stream cost later.
async fn settle() {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let (busy0, all0) = machine_jiffies();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (busy1, all1) = machine_jiffies();
        if (busy1 - busy0) as f64 <= 0.05 * (all1 - all0).max(1) as f64 {
            return;
        }
    }
    println!("  (the machine did not settle within 30 s; measuring anyway)");
}

/// Thread id → (name, voluntary + involuntary context switches).
fn context_switches(pid: u32) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let v = status_field(pid, Some(tid), "voluntary_ctxt_switches").unwrap_or(0);
        let n = status_field(pid, Some(tid), "nonvoluntary_ctxt_switches").unwrap_or(0);
        out.insert(tid, (name, v + n));
    }
    out
}

/// The `dbus-daemon` this process started (for its CPU time).
fn child_dbus_daemon() -> Option<u32> {
    let me = std::process::id();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let comm_ok = stat.contains("(dbus-daemon)");
        let ppid = stat[stat.rfind(')').map_or(0, |i| i + 2)..]
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm_ok && ppid == Some(me) {
            return Some(pid);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// The daemon, launched here without debug logging (the tests' launcher turns it on).

/// The daemon to measure: this build's, or `BENCH_DAEMON` (another build, e.g. of the
/// previous commit, to compare two in one sitting).
fn daemon_binary() -> PathBuf {
    std::env::var_os("BENCH_DAEMON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_webpushd")))
}

struct Daemon {
    child: Option<Child>,
    home: PathBuf,
    bus_address: String,
    binary: PathBuf,
}

impl Daemon {
    fn spawn(bus: &Bus, home: &Path, server_url: &str) -> Daemon {
        let config_dir = home.join("config/webpushd");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::write(
            config_dir.join("config.toml"),
            format!("server_url = \"{server_url}\"\nallow_insecure = true\n"),
        )
        .unwrap();
        let mut d = Daemon {
            child: None,
            home: home.to_path_buf(),
            bus_address: bus.address.clone(),
            binary: daemon_binary(),
        };
        d.launch();
        d
    }

    /// Stop, and start `binary` on the same state instead.
    fn swap(&mut self, binary: PathBuf) {
        self.stop();
        self.binary = binary;
        self.launch();
    }

    fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.home.join("webpushd.log"))
            .unwrap();
        let child = Command::new(&self.binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("XDG_CONFIG_HOME", self.home.join("config"))
            .env("XDG_STATE_HOME", self.home.join("state"))
            .env("XDG_DATA_HOME", self.home.join("data"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("webpushd.log")).unwrap_or_default()
    }

    fn db(&self) -> PathBuf {
        self.home.join("state/webpushd/webpushd.db")
    }

    /// SIGTERM and wait.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Poll until the daemon owns its name; the time it took since `t0`.
async fn wait_bus_ready(conn: &zbus::Connection, d: &mut Daemon, t0: Instant) -> Duration {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    loop {
        let name = zbus::names::BusName::try_from("org.webpushd.Push1").unwrap();
        if dbus.name_has_owner(name).await.unwrap_or(false) {
            return t0.elapsed();
        }
        assert!(!d.exited(), "webpushd exited:\n{}", d.log());
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "webpushd did not start:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn admin(conn: &zbus::Connection) -> AdminProxy<'static> {
    AdminProxy::builder(conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap()
}

async fn wait_connected(admin: &AdminProxy<'_>, t0: Instant) -> Duration {
    loop {
        if admin.state().await.ok().as_deref() == Some("connected") {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(120), "never connected");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// What the app knows of one subscription.
#[derive(Clone)]
struct Sub {
    endpoint: String,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

/// Subscribe `scope`; if the daemon misattributed the call (see the FIXME in
/// tests/connection.rs) the keys are refused: remove it and try again.
async fn subscribe(app: &App, admin: &AdminProxy<'_>, scope: &str, keys: bool) -> Sub {
    for _ in 0..50 {
        let path = app
            .manager
            .subscribe(scope, HashMap::new())
            .await
            .unwrap_or_else(|e| panic!("Subscribe({scope}): {e}"));
        if !keys {
            return Sub {
                endpoint: String::new(),
                p256dh: vec![],
                auth: vec![],
            };
        }
        let p: SubscriptionProxy<'_> = app.subscription(&path).await;
        match p.get_key("p256dh").await {
            Ok(k) => {
                return Sub {
                    endpoint: p.endpoint().await.unwrap(),
                    p256dh: k.into_vec(),
                    auth: p.get_key("auth").await.unwrap().into_vec(),
                }
            }
            Err(_) => {
                let _ = admin.remove(&path).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("the daemon never attributed calls to {APP_ID}");
}

// ---------------------------------------------------------------------------------------
// 1. Stages alone

struct Stages {
    rows: Vec<(String, f64, String)>,
}

impl Stages {
    fn add(&mut self, name: &str, us: f64, note: &str) {
        println!("  {name:<58} {us:>9.1} µs  {note}");
        self.rows.push((name.to_string(), us, note.to_string()));
    }

    /// The figure of the first stage whose name starts with `prefix`.
    fn get(&self, prefix: &str) -> f64 {
        self.rows
            .iter()
            .find(|r| r.0.starts_with(prefix))
            .map_or(f64::NAN, |r| r.1)
    }

    /// What one message costs in the daemon if nothing but its stages ran: parse, base64,
    /// decrypt, its share of a 128-message commit, one signal.
    fn per_message(&self) -> f64 {
        self.get("parse a notification frame")
            + self.get("base64url decode")
            + self.get("crypto::decrypt")
            + self.get("Store::record_batch, 128 per commit")
            + self.get("zbus unicast Message signal")
    }
}

/// The daemon's CPU per message at 100 msg/s in an earlier run's `pipeline.json`
/// (`BENCH_BASELINE=FILE`), to compare a change with the commit before it on one machine.
fn baseline_paced_cpu() -> Option<(String, f64)> {
    let path = std::env::var_os("BENCH_BASELINE")?;
    let text = std::fs::read_to_string(&path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let us = v["streams"]["daemon_paced_100"]["daemon_cpu_us_per_msg"].as_f64()?;
    Some((PathBuf::from(path).display().to_string(), us))
}

fn plaintext(seq: u64) -> Vec<u8> {
    let mut p = vec![0x5a; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_le_bytes());
    p
}

fn encrypt_for(p256dh: &[u8], auth: &[u8], seq: u64) -> Vec<u8> {
    crypto::encrypt(p256dh, auth, &plaintext(seq), false)
        .unwrap()
        .body
}

/// Encrypt `n` bodies, body `i` to `subs[i % len]`, on two threads.
fn encrypt_all(subs: &[(Vec<u8>, Vec<u8>)], n: usize) -> Vec<Vec<u8>> {
    let out: Vec<Mutex<Vec<u8>>> = (0..n).map(|_| Mutex::new(Vec::new())).collect();
    std::thread::scope(|s| {
        for t in 0..2 {
            let out = &out;
            s.spawn(move || {
                for i in (t..n).step_by(2) {
                    let (p, a) = &subs[i % subs.len()];
                    *out[i].lock().unwrap() = encrypt_for(p, a, i as u64);
                }
            });
        }
    });
    out.into_iter().map(|m| m.into_inner().unwrap()).collect()
}

fn record(keys: &SubscriptionKeys, n: i64) -> SubscriptionRecord {
    SubscriptionRecord {
        id: 0,
        channel_id: ChannelId::generate(),
        app_id: AppId::parse(APP_ID).unwrap(),
        scope: Scope::parse(&format!("stage-{n}")).unwrap(),
        endpoint: "http://127.0.0.1:1/wpush/v1/x".into(),
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
    }
}

fn batch_item(rec: &SubscriptionRecord, id: i64, seq: u64, payload: &[u8]) -> BatchItem {
    BatchItem {
        seen_until: i64::MAX,
        channel_id: rec.channel_id.clone(),
        version: format!("v{seq}"),
        counters: Some(Counters {
            subscription_id: id,
            push_count: seq,
            last_push: 1,
            quota: 16,
            expired: false,
        }),
        message: Some(StoredMessage {
            id: format!("m{seq}").into(),
            subscription_id: id,
            channel_id: rec.channel_id.clone(),
            version: format!("v{seq}"),
            payload: payload.to_vec(),
            received: 1,
            ttl: 3600,
            topic: String::new(),
            urgency: "normal".into(),
            shown: false,
        }),
    }
}

async fn stages(bus: &Bus, quick: bool) -> Stages {
    let mut st = Stages { rows: Vec::new() };
    let m = if quick { 300 } else { 2000 };
    let keys = SubscriptionKeys::generate().unwrap();
    let bodies: Vec<Vec<u8>> = (0..m as u64)
        .map(|i| encrypt_for(keys.public_key(), keys.auth(), i))
        .collect();
    let frames: Vec<String> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| {
            json!({"messageType": "notification",
                   "channelID": "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d",
                   "version": format!("version-{i}"),
                   "data": crypto::b64_encode(b),
                   "headers": {"encoding": "aes128gcm"}})
            .to_string()
        })
        .collect();

    let us = per_call_us(m, |i| {
        std::hint::black_box(
            webpushd::connection::protocol::parse_server_message(&frames[i]).unwrap(),
        );
    });
    st.add("parse a notification frame (serde_json)", us, "");
    let data: Vec<String> = bodies.iter().map(|b| crypto::b64_encode(b)).collect();
    let us = per_call_us(m, |i| {
        std::hint::black_box(crypto::b64(&data[i]).unwrap());
    });
    st.add("base64url decode of the body", us, "");
    let us = per_call_us(m, |i| {
        std::hint::black_box(crypto::decrypt(&keys, &Encoding::Aes128gcm, &bodies[i]).unwrap());
    });
    st.add("crypto::decrypt aes128gcm 3 KiB", us, "one core");
    let (private, public, auth) = (
        keys.private_key().to_vec(),
        keys.public_key().to_vec(),
        keys.auth().to_vec(),
    );
    let us = per_call_us(m, |_| {
        std::hint::black_box(
            SubscriptionKeys::from_parts(private.clone(), public.clone(), auth.clone()).unwrap(),
        );
    });
    st.add(
        "SubscriptionKeys::from_parts (per subscription at load)",
        us,
        "",
    );
    let us = per_call_us(m, |_| {
        crypto::validate_public_key(std::hint::black_box(&public)).unwrap();
    });
    st.add("…of which the on-curve check of the point", us, "");
    let us = per_call_us(m.min(500), |_| {
        std::hint::black_box(SubscriptionKeys::generate().unwrap());
    });
    st.add("SubscriptionKeys::generate (per Subscribe)", us, "");

    // SQLite, as the daemon opens it (WAL, synchronous = FULL), in a temporary directory
    // on the same file system as the daemon's state.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (mut store, _) = Store::open(dir.path()).unwrap();
    let rec = record(&keys, 0);
    let id = store.insert_subscription(&rec).unwrap();
    let payload = plaintext(0);
    let n1 = if quick { 100 } else { 500 };
    let us = per_call_us(n1, |i| {
        let item = batch_item(&rec, id, i as u64, &payload);
        store
            .record_batch(
                &[item],
                1,
                &PendingCap::new(1_000_000, 1, &Default::default()),
            )
            .unwrap();
    });
    st.add(
        "Store::record_batch, 1 message per commit",
        us,
        "fsync each",
    );
    // What the owner loop asks after every input (`Push::next_timer`) and for every
    // `SubscriptionInfo` (`Push::info`), with this many 3 KiB messages pending.
    let per_loop = |store: &Store, st: &mut Stages, pending: usize| {
        let us = per_call_us(200, |_| {
            std::hint::black_box(store.next_expiry().unwrap());
        });
        st.add(
            &format!("Store::next_expiry, {pending} pending (every loop turn)"),
            us,
            "",
        );
        let us = per_call_us(200, |_| {
            std::hint::black_box(store.pending_count(id).unwrap());
        });
        st.add(
            &format!("Store::pending_count, {pending} pending (per Status call)"),
            us,
            "",
        );
    };
    per_loop(&store, &mut st, n1);
    let mut seq = n1 as u64;
    for batch in [16usize, 128] {
        let rounds = (m / batch).max(2);
        let us = per_call_us(rounds, |_| {
            let items: Vec<BatchItem> = (0..batch)
                .map(|_| {
                    seq += 1;
                    batch_item(&rec, id, seq, &payload)
                })
                .collect();
            store
                .record_batch(
                    &items,
                    1,
                    &PendingCap::new(1_000_000, 1, &Default::default()),
                )
                .unwrap();
        }) / batch as f64;
        st.add(
            &format!("Store::record_batch, {batch} per commit (per message)"),
            us,
            "",
        );
    }
    per_loop(&store, &mut st, seq as usize);
    let us = per_call_us(n1, |i| {
        assert!(store.ack(id, &format!("m{i}")).unwrap());
    });
    st.add(
        "Store::ack (delete + commit), per AckMessage",
        us,
        "fsync each",
    );
    drop(store);

    // One unicast Message signal with a 3 KiB payload, sender → dbus-daemon → receiver.
    let sender = bus.connect().await;
    let receiver = bus.connect().await;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.webpushd.Push1.Manager")
        .unwrap()
        .member("Message")
        .unwrap()
        .build();
    let mut stream = zbus::MessageStream::for_match_rule(rule, &receiver, Some(4096))
        .await
        .unwrap();
    let dest = receiver.unique_name().unwrap().to_owned();
    let n = if quick { 1000 } else { 5000 };
    let got = tokio::spawn(async move {
        let mut k = 0;
        while k < n {
            let msg = stream.next().await.unwrap().unwrap();
            let body = msg.body();
            let (_p, _s, _id, payload, _meta): (
                ObjectPath<'_>,
                &str,
                &str,
                &serde_bytes::Bytes,
                HashMap<String, OwnedValue>,
            ) = body.deserialize().unwrap();
            std::hint::black_box(payload.len());
            k += 1;
        }
    });
    let bus_pid = child_dbus_daemon();
    let (cpu0, bus0) = (cpu_secs(std::process::id()), bus_pid.map(cpu_secs));
    let t = Instant::now();
    let path = ObjectPath::try_from("/org/webpushd/Push1/subscription/1").unwrap();
    for i in 0..n {
        let mut meta: HashMap<String, OwnedValue> = HashMap::new();
        meta.insert("received_at".into(), OwnedValue::from(i as i64));
        sender
            .emit_signal(
                Some(dest.as_str()),
                &path,
                "org.webpushd.Push1.Manager",
                "Message",
                &(
                    &path,
                    "scope",
                    "0123456789abcdef0123456789abcdef",
                    serde_bytes::Bytes::new(&payload),
                    meta,
                ),
            )
            .await
            .unwrap();
    }
    got.await.unwrap();
    let wall = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    let here = (cpu_secs(std::process::id()) - cpu0) * 1e6 / n as f64;
    let busc = match (bus_pid, bus0) {
        (Some(p), Some(b0)) => (cpu_secs(p) - b0) * 1e6 / n as f64,
        _ => f64::NAN,
    };
    st.add(
        "zbus unicast Message signal, 3 KiB (wall per signal)",
        wall,
        &format!("CPU: sender+receiver {here:.1} µs, dbus-daemon {busc:.1} µs"),
    );
    st
}

// ---------------------------------------------------------------------------------------
// 2. Streams

#[derive(Debug, Default, Clone)]
struct StreamResult {
    sent: usize,
    received: usize,
    duplicates: usize,
    secs: f64,
    rate: f64,
    latency: Dist,
    daemon_cpu_us: f64,
    bus_cpu_us: f64,
    bench_cpu_us: f64,
    /// The daemon's context switches (every thread, voluntary or not) per message: its
    /// wake-ups, which at low rates cost more than the work they wake for.
    daemon_switches: f64,
    ack_errors: usize,
    evicted: usize,
}

impl StreamResult {
    fn json(&self) -> Json {
        json!({
            "sent": self.sent, "received": self.received, "duplicates": self.duplicates,
            "lost": self.sent.saturating_sub(self.received),
            "seconds": self.secs, "messages_per_s": self.rate, "latency": self.latency.json(),
            "daemon_cpu_us_per_msg": self.daemon_cpu_us,
            "dbus_daemon_cpu_us_per_msg": self.bus_cpu_us,
            "bench_process_cpu_us_per_msg": self.bench_cpu_us,
            "daemon_context_switches_per_msg": self.daemon_switches,
            "ack_errors": self.ack_errors, "evicted_by_pending_cap": self.evicted,
        })
    }
}

/// Send `bodies` through `server` to `targets[i % len]`, paced or flat out, on a thread.
/// Returns (send time in ns since `t0`, message id) per body.
fn produce(
    server: Arc<PushServer>,
    targets: Vec<String>,
    bodies: Arc<Vec<Vec<u8>>>,
    pace: Option<f64>,
    t0: Instant,
) -> std::thread::JoinHandle<Vec<(u64, String)>> {
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut out = Vec::with_capacity(bodies.len());
        for (i, body) in bodies.iter().enumerate() {
            if let Some(rate) = pace {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
            }
            let sent = t0.elapsed().as_nanos() as u64;
            let outcome = server
                .deliver(
                    &targets[i % targets.len()],
                    body.clone(),
                    Some("aes128gcm"),
                    3600,
                )
                .unwrap_or_else(|e| panic!("deliver {i}: {e}"));
            out.push((sent, outcome.message_id().to_string()));
        }
        out
    })
}

fn deadline_for(n: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(n as u64 * 2)
}

/// Acknowledge `ids` as an app would: `AckMessage` for one, `AckMessages` for several (one
/// `AckMessage` each from a build without it, such as a baseline). Returns how many failed
/// or were not pending.
async fn ack(manager: &ManagerProxy<'static>, scope: &str, ids: &[String]) -> usize {
    if let [id] = ids {
        return usize::from(manager.ack_message(scope, id).await.is_err());
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    match manager.ack_messages(scope, &refs).await {
        Ok(not_pending) => not_pending.len(),
        Err(zbus::Error::MethodError(name, _, _))
            if name == "org.freedesktop.DBus.Error.UnknownMethod" =>
        {
            let mut failed = 0;
            for id in ids {
                failed += usize::from(manager.ack_message(scope, id).await.is_err());
            }
            failed
        }
        Err(_) => ids.len(),
    }
}

/// The daemon path: deliver → WebSocket → daemon (decrypt, commit, ack) → signal → app,
/// which acks over D-Bus.
async fn daemon_stream(
    server: &Arc<PushServer>,
    app: &App,
    daemon: &Daemon,
    subs: &[Sub],
    bodies: Arc<Vec<Vec<u8>>>,
    pace: Option<f64>,
) -> StreamResult {
    if pace.is_some() {
        settle().await;
    }
    let n = bodies.len();
    let t0 = Instant::now();
    let recv_ns: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let dups = Arc::new(AtomicUsize::new(0));
    let received = Arc::new(AtomicUsize::new(0));
    let ack_errors = Arc::new(AtomicUsize::new(0));
    let acks_done = Arc::new(AtomicUsize::new(0));
    let mut stream = app.manager.receive_message().await.unwrap();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let reader = {
        let (recv_ns, dups, received) = (recv_ns.clone(), dups.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(sig) = stream.next().await {
                let at = t0.elapsed().as_nanos() as u64;
                let Ok(a) = sig.args() else { continue };
                let p = a.payload();
                let seq = u64::from_le_bytes(p[..8].try_into().unwrap()) as usize;
                if seq < n && recv_ns[seq].load(Ordering::Relaxed) == 0 {
                    recv_ns[seq].store(at, Ordering::Relaxed);
                    if received.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        let _ = ack_tx.send((a.scope().to_string(), a.message_id().to_string()));
                        break;
                    }
                } else {
                    dups.fetch_add(1, Ordering::Relaxed);
                }
                let _ = ack_tx.send((a.scope().to_string(), a.message_id().to_string()));
            }
        })
    };
    // The app acknowledges what it has received so far with one `AckMessages` per scope,
    // as an app that gets messages faster than it handles acks one by one would.
    let acker = {
        let manager = app.manager.clone();
        let (ack_errors, acks_done) = (ack_errors.clone(), acks_done.clone());
        tokio::spawn(async move {
            let permits = Arc::new(tokio::sync::Semaphore::new(ACKS_IN_FLIGHT));
            while let Some(first) = ack_rx.recv().await {
                let mut by_scope: HashMap<String, Vec<String>> = HashMap::new();
                by_scope.entry(first.0).or_default().push(first.1);
                while let Ok((scope, id)) = ack_rx.try_recv() {
                    by_scope.entry(scope).or_default().push(id);
                }
                for (scope, ids) in by_scope {
                    for chunk in ids.chunks(ACK_BATCH) {
                        let permit = permits.clone().acquire_owned().await.unwrap();
                        let manager = manager.clone();
                        let (ack_errors, acks_done) = (ack_errors.clone(), acks_done.clone());
                        let (scope, chunk) = (scope.clone(), chunk.to_vec());
                        tokio::spawn(async move {
                            let failed = ack(&manager, &scope, &chunk).await;
                            ack_errors.fetch_add(failed, Ordering::Relaxed);
                            acks_done.fetch_add(chunk.len(), Ordering::Relaxed);
                            drop(permit);
                        });
                    }
                }
            }
        })
    };

    let bus_pid = child_dbus_daemon();
    let switches = |pid: u32| context_switches(pid).values().map(|(_, n)| n).sum::<u64>();
    let switches0 = switches(daemon.pid());
    let cpu0 = (
        cpu_secs(daemon.pid()),
        bus_pid.map_or(f64::NAN, cpu_secs),
        cpu_secs(std::process::id()),
    );
    // BENCH_PERF=FILE / BENCH_PERF_PACED=FILE: sample the daemon with `perf record`
    // during the flat-out / paced run.
    let perf_var = if pace.is_none() {
        "BENCH_PERF"
    } else {
        "BENCH_PERF_PACED"
    };
    let perf = match std::env::var_os(perf_var) {
        Some(out) if n > 500 => Command::new("perf")
            .args(
                std::env::var("BENCH_PERF_ARGS")
                    .unwrap_or("record -F 2000 -g".into())
                    .split(' ')
                    .chain(["-p"]),
            )
            .arg(daemon.pid().to_string())
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok(),
        _ => None,
    };
    let log_before = evicted_in(&daemon.log());
    let targets: Vec<String> = subs.iter().map(|s| s.endpoint.clone()).collect();
    let sent = produce(server.clone(), targets, bodies, pace, t0)
        .join()
        .unwrap();
    let deadline = Instant::now() + deadline_for(n);
    while received.load(Ordering::Relaxed) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last_rx = recv_ns
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    reader.abort();
    let got = received.load(Ordering::Relaxed);
    // Let the acks finish before reading CPU: they are part of each message's cost.
    let ack_deadline = Instant::now() + Duration::from_secs(60);
    while acks_done.load(Ordering::Relaxed) < got && Instant::now() < ack_deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    acker.abort();
    if let Some(mut p) = perf {
        // SAFETY: kill(2) on our own child; perf writes its file on SIGINT.
        unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
        let _ = p.wait();
    }
    let switches1 = switches(daemon.pid());
    let cpu1 = (
        cpu_secs(daemon.pid()),
        bus_pid.map_or(f64::NAN, cpu_secs),
        cpu_secs(std::process::id()),
    );
    let lat: Vec<f64> = sent
        .iter()
        .enumerate()
        .filter_map(|(i, (s, _))| {
            let r = recv_ns[i].load(Ordering::Relaxed);
            (r != 0).then(|| (r.saturating_sub(*s)) as f64 / 1e6)
        })
        .collect();
    let first = sent.first().map_or(0, |s| s.0);
    let secs = (last_rx.saturating_sub(first)) as f64 / 1e9;
    let evicted = evicted_in(&daemon.log()) - log_before;
    StreamResult {
        sent: n,
        received: got,
        duplicates: dups.load(Ordering::Relaxed),
        secs,
        rate: got as f64 / secs,
        latency: Dist::of(lat),
        daemon_cpu_us: (cpu1.0 - cpu0.0) * 1e6 / got.max(1) as f64,
        bus_cpu_us: (cpu1.1 - cpu0.1) * 1e6 / got.max(1) as f64,
        bench_cpu_us: (cpu1.2 - cpu0.2) * 1e6 / got.max(1) as f64,
        daemon_switches: switches1.saturating_sub(switches0) as f64 / got.max(1) as f64,
        ack_errors: ack_errors.load(Ordering::Relaxed),
        evicted,
    }
}

/// A bare WebSocket client of the same server: hello, register, ack each notification.
struct Bare {
    endpoints: Vec<String>,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

async fn read_json(ws: &mut Bare) -> Json {
    loop {
        match ws.ws.next().await.unwrap().unwrap() {
            WsMessage::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            _ => continue,
        }
    }
}

async fn bare_client(server: &PushServer, channels: usize) -> Bare {
    // No subprotocol: the server, like autopush-rs, names none, and tungstenite's client
    // refuses an answer without the one it asked for.
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let mut bare = Bare {
        endpoints: Vec::new(),
        ws,
    };
    bare.ws
        .send(WsMessage::text(
            json!({"messageType": "hello", "use_webpush": true}).to_string(),
        ))
        .await
        .unwrap();
    let hello = read_json(&mut bare).await;
    assert_eq!(hello["status"], 200);
    for _ in 0..channels {
        let ch = uuid::Uuid::new_v4().hyphenated().to_string();
        bare.ws
            .send(WsMessage::text(
                json!({"messageType": "register", "channelID": ch}).to_string(),
            ))
            .await
            .unwrap();
        let r = read_json(&mut bare).await;
        assert_eq!(r["status"], 200, "{r}");
        // Pushes go to the endpoint, as for the daemon's subscriptions.
        bare.endpoints
            .push(r["pushEndpoint"].as_str().unwrap().to_string());
    }
    bare
}

async fn bare_stream(
    server: &Arc<PushServer>,
    bare: &mut Bare,
    bodies: Arc<Vec<Vec<u8>>>,
    pace: Option<f64>,
) -> StreamResult {
    if pace.is_some() {
        settle().await;
    }
    let n = bodies.len();
    let t0 = Instant::now();
    let cpu0 = cpu_secs(std::process::id());
    let producer = produce(server.clone(), bare.endpoints.clone(), bodies, pace, t0);
    let mut receipts: HashMap<String, u64> = HashMap::with_capacity(n);
    let mut dups = 0;
    let deadline = tokio::time::Instant::now() + deadline_for(n);
    while receipts.len() < n {
        let t = match tokio::time::timeout_at(deadline, bare.ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => t,
            Ok(Some(Ok(_))) => continue,
            Err(_) | Ok(None) | Ok(Some(Err(_))) => break,
        };
        let at = t0.elapsed().as_nanos() as u64;
        let v: Json = serde_json::from_str(t.as_str()).unwrap();
        if v["messageType"] != "notification" {
            continue;
        }
        let version = v["version"].as_str().unwrap().to_string();
        let ack = json!({"messageType": "ack", "updates": [
            {"channelID": v["channelID"], "version": version, "code": 100}]});
        bare.ws
            .send(WsMessage::text(ack.to_string()))
            .await
            .unwrap();
        if receipts.insert(version, at).is_some() {
            dups += 1;
        }
    }
    let sent = producer.join().unwrap();
    let cpu1 = cpu_secs(std::process::id());
    let lat: Vec<f64> = sent
        .iter()
        .filter_map(|(s, id)| receipts.get(id).map(|r| r.saturating_sub(*s) as f64 / 1e6))
        .collect();
    let last = receipts.values().copied().max().unwrap_or(0);
    let first = sent.first().map_or(0, |s| s.0);
    let secs = last.saturating_sub(first) as f64 / 1e9;
    StreamResult {
        sent: n,
        received: receipts.len(),
        duplicates: dups,
        secs,
        rate: receipts.len() as f64 / secs,
        latency: Dist::of(lat),
        bench_cpu_us: (cpu1 - cpu0) * 1e6 / n as f64,
        daemon_cpu_us: f64::NAN,
        bus_cpu_us: f64::NAN,
        daemon_switches: f64::NAN,
        ..Default::default()
    }
}

fn print_stream(name: &str, r: &StreamResult) {
    println!(
        "  {name:<26} {:>6}/{:<6} {:>8.0} msg/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  daemon CPU {:>6.1} µs/msg  dbus-daemon {:>5.1}  bench {:>5.1}  daemon switches {:>4.1}/msg",
        r.received, r.sent, r.rate, r.latency.p50, r.latency.p99, r.latency.max,
        r.daemon_cpu_us, r.bus_cpu_us, r.bench_cpu_us, r.daemon_switches
    );
    if r.duplicates + r.ack_errors + r.evicted > 0 {
        println!(
            "  {:<26} duplicates {}, acks failed or not pending {}, evicted by the pending cap {}",
            "", r.duplicates, r.ack_errors, r.evicted
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3 and 4. Idle and scale

/// Create subscriptions `from..to` (scopes `s<i>`), `concurrency` calls at a time.
async fn create_subs(app: &App, from: usize, to: usize, concurrency: usize) -> f64 {
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(from));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let manager = app.manager.clone();
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= to {
                    break;
                }
                manager
                    .subscribe(&format!("s{i}"), HashMap::new())
                    .await
                    .unwrap_or_else(|e| panic!("Subscribe s{i}: {e}"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t.elapsed().as_secs_f64()
}

/// FINDING (src/crypto.rs `SubscriptionKeys::generate`): about one key in 256 has a
/// private scalar with a leading zero byte, which `ece` hands out as 31 bytes; the daemon
/// stores it, and at the next start `from_parts` ("private key is not 32 bytes") refuses the
/// row and the whole daemon exits. Until that is fixed, the bench left-pads such rows in the
/// stopped daemon's database (the fix the owner is asked for) and counts them.
fn pad_short_private_keys(db: &Path) -> usize {
    let c = rusqlite::Connection::open(db).unwrap();
    let short: Vec<(i64, Vec<u8>)> = c
        .prepare("SELECT id, private_key FROM subscriptions WHERE length(private_key) < 32")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (id, key) in &short {
        let mut padded = vec![0u8; 32 - key.len()];
        padded.extend_from_slice(key);
        c.execute(
            "UPDATE subscriptions SET private_key = ?2 WHERE id = ?1",
            rusqlite::params![id, padded],
        )
        .unwrap();
    }
    short.len()
}

static PADDED: AtomicUsize = AtomicUsize::new(0);

/// Start the daemon again; (bus-ready, connected) times.
async fn timed_restart(d: &mut Daemon, bus: &Bus) -> (Duration, Duration) {
    d.stop();
    PADDED.fetch_add(pad_short_private_keys(&d.db()), Ordering::Relaxed);
    let conn = bus.connect().await;
    let adm = admin(&conn).await;
    let t0 = Instant::now();
    d.launch();
    let ready = wait_bus_ready(&conn, d, t0).await;
    let connected = wait_connected(&adm, t0).await;
    (ready, connected)
}

/// Database bytes after a clean stop and a WAL checkpoint.
fn db_bytes(path: &Path) -> u64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    drop(c);
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------

fn machine() -> Json {
    let out = |cmd: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    json!({
        "nproc": out("nproc"),
        "cpu": out("lscpu | sed -n 's/^Model name: *//p' | head -1"),
        "kernel": out("uname -r"),
        "dbus_daemon": out("dbus-daemon --version | head -1"),
        "rustc": out("rustc --version"),
    })
}

struct Target {
    what: &'static str,
    measured: String,
    met: bool,
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let k = Knobs::from_env();
    println!(
        "webpushd pipeline benchmark{} — messages {}, paced {} s, idle {} subs / {} s, scale {} subs, restarts {}",
        if k.quick { " (BENCH_QUICK)" } else { "" },
        k.messages, k.paced_secs, k.idle_subs, k.idle_secs, k.scale_subs, k.restarts
    );
    let mach = machine();
    println!("machine: {mach}");
    let tmp = TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // The push server stores every message it accepts (SQLite, WAL): 60-80 KB written per
    // message, on the disk the daemon fsyncs on. `BENCH_SERVER_SHM=1` puts its database in
    // /dev/shm instead, as if it ran on another machine.
    let server_dir = if std::env::var_os("BENCH_SERVER_SHM").is_some() {
        TempDir::new_in("/dev/shm").unwrap()
    } else {
        TempDir::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
    };
    println!("push server's database in {}", server_dir.path().display());
    let bus = Bus::start();
    let server = Arc::new(
        push_server_with(server_dir.path(), |o| {
            // The bench, not the server's offline-client limit, decides how much is queued.
            o.max_stored_messages = 1_000_000;
        })
        .await,
    );
    let mut targets: Vec<Target> = Vec::new();

    // 1. Stages.
    println!("\n[1] stages alone (this process, one thread)");
    let st = stages(&bus, k.quick).await;

    // 2. Streams.
    println!("\n[2] streams of {PAYLOAD}-byte aes128gcm messages over {STREAM_SUBS} subscriptions");
    let home = tmp.path().join("stream");
    let mut daemon = Daemon::spawn(&bus, &home, &server.ws_url());
    let conn = bus.connect().await;
    let adm = admin(&conn).await;
    wait_bus_ready(&conn, &mut daemon, Instant::now()).await;
    wait_connected(&adm, Instant::now()).await;
    let app = bus.app(APP_ID).await;
    let mut subs = Vec::new();
    for i in 0..STREAM_SUBS {
        subs.push(subscribe(&app, &adm, &format!("https://bench.example/{i}"), true).await);
    }
    let keys: Vec<(Vec<u8>, Vec<u8>)> = subs
        .iter()
        .map(|s| (s.p256dh.clone(), s.auth.clone()))
        .collect();
    let paced_n = (k.paced_secs * 100) as usize;
    let t = Instant::now();
    let bodies = Arc::new(encrypt_all(&keys, k.messages));
    let paced_bodies = Arc::new(encrypt_all(&keys, paced_n));
    println!(
        "  (encrypted {} bodies in {:.1} s)",
        k.messages + paced_n,
        t.elapsed().as_secs_f64()
    );
    // Warm-up: a few messages through each path.
    let warm = Arc::new(encrypt_all(&keys, 200.min(k.messages)));
    daemon_stream(&server, &app, &daemon, &subs, warm.clone(), None).await;
    let mut bare = bare_client(&server, STREAM_SUBS).await;
    bare_stream(&server, &mut bare, warm, None).await;

    let d_flat = daemon_stream(&server, &app, &daemon, &subs, bodies.clone(), None).await;
    print_stream("daemon, flat out", &d_flat);
    let b_flat = bare_stream(&server, &mut bare, bodies.clone(), None).await;
    print_stream("bare client, flat out", &b_flat);
    // The machine's speed drifts over a run: the flat-out target compares with the mean
    // of the stages measured before the streams and right after these two.
    println!("  stages again, right after the flat-out streams:");
    let st_after = stages(&bus, k.quick).await;
    let d_paced = daemon_stream(
        &server,
        &app,
        &daemon,
        &subs,
        paced_bodies.clone(),
        Some(100.0),
    )
    .await;
    print_stream("daemon, 100 msg/s", &d_paced);
    let b_paced = bare_stream(&server, &mut bare, paced_bodies.clone(), Some(100.0)).await;
    print_stream("bare client, 100 msg/s", &b_paced);
    // BENCH_BASELINE_DAEMON: the paced stream through another build (the previous
    // commit's) on the same state, then through this one again. The machine's speed
    // wanders between runs, so the baseline is measured between this build's two.
    let mut in_run_baseline = None;
    if let Some(other) = std::env::var_os("BENCH_BASELINE_DAEMON") {
        let mine = daemon.binary.clone();
        let mut runs = Vec::new();
        for (bin, label) in [
            (PathBuf::from(&other), "baseline daemon, 100 msg/s"),
            (mine, "daemon again, 100 msg/s"),
        ] {
            daemon.swap(bin);
            wait_bus_ready(&conn, &mut daemon, Instant::now()).await;
            wait_connected(&adm, Instant::now()).await;
            let r = daemon_stream(
                &server,
                &app,
                &daemon,
                &subs,
                paced_bodies.clone(),
                Some(100.0),
            )
            .await;
            print_stream(label, &r);
            runs.push(r);
        }
        let again = runs.pop().unwrap();
        let base = runs.pop().unwrap();
        in_run_baseline = Some((PathBuf::from(other).display().to_string(), base, again));
    }
    let ratio = d_flat.rate / b_flat.rate;
    println!("  daemon / bare throughput: {ratio:.2}");
    let stream_log = daemon.log();
    drop(bare);
    daemon.stop();

    targets.push(Target {
        what: "≥ 5,000 msg/s sustained, nothing lost",
        measured: format!(
            "{:.0} msg/s, {} lost",
            d_flat.rate,
            d_flat.sent - d_flat.received
        ),
        met: d_flat.rate >= 5000.0 && d_flat.received == d_flat.sent,
    });
    let added_p99 = d_paced.latency.p99 - b_paced.latency.p99;
    targets.push(Target {
        what: "p99 latency added by the daemon ≤ 2 ms at 100 msg/s",
        measured: format!(
            "{added_p99:.2} ms added (daemon path p99 {:.2} ms, bare client p99 {:.2} ms)",
            d_paced.latency.p99, b_paced.latency.p99
        ),
        met: added_p99 <= 2.0,
    });
    targets.push(Target {
        what: "daemon throughput ≥ 0.85 × bare client, same run",
        measured: format!("{ratio:.2} ×"),
        met: ratio >= 0.85,
    });
    let (before_us, after_us) = (st.per_message(), st_after.per_message());
    let stages_us = (before_us + after_us) / 2.0;
    let cost = d_flat.daemon_cpu_us / stages_us;
    targets.push(Target {
        what: "daemon CPU per message, flat out ≤ 1.2 × its stages alone, same run",
        measured: format!(
            "{:.0} µs against {stages_us:.0} µs of stages (mean of {before_us:.0} before the streams and {after_us:.0} after): {cost:.2} ×",
            d_flat.daemon_cpu_us
        ),
        met: cost <= 1.2,
    });
    let paced_target = match &in_run_baseline {
        Some((bin, base, again)) => {
            let mine = (d_paced.daemon_cpu_us + again.daemon_cpu_us) / 2.0;
            Some(Target {
                what: "daemon CPU per message at 100 msg/s ≤ half the baseline's",
                measured: format!(
                    "{mine:.0} µs (mean of {:.0} and {:.0}) against {:.0} µs of {bin} between them",
                    d_paced.daemon_cpu_us, again.daemon_cpu_us, base.daemon_cpu_us
                ),
                met: mine <= base.daemon_cpu_us / 2.0,
            })
        }
        None => None,
    };
    targets.push(match (paced_target, baseline_paced_cpu()) {
        (Some(t), _) => t,
        (None, Some((file, base))) => Target {
            what: "daemon CPU per message at 100 msg/s ≤ half the baseline's",
            measured: format!(
                "{:.0} µs against {base:.0} µs in {file}",
                d_paced.daemon_cpu_us
            ),
            met: d_paced.daemon_cpu_us <= base / 2.0,
        },
        (None, None) => Target {
            what: "daemon CPU per message at 100 msg/s ≤ half the baseline's",
            measured: format!(
                "{:.0} µs; no baseline (BENCH_BASELINE_DAEMON=another build, or BENCH_BASELINE=an earlier run's pipeline.json)",
                d_paced.daemon_cpu_us
            ),
            met: false,
        },
    });

    // 3. Idle: a daemon with `idle_subs` subscriptions, restarted, then left alone.
    println!(
        "\n[3] idle with {} subscriptions, {} s window",
        k.idle_subs, k.idle_secs
    );
    let home = tmp.path().join("scale");
    let mut daemon = Daemon::spawn(&bus, &home, &server.ws_url());
    wait_bus_ready(&conn, &mut daemon, Instant::now()).await;
    wait_connected(&adm, Instant::now()).await;
    let app = bus.app(APP_ID).await;
    subscribe(&app, &adm, "s0", true).await;
    let first = k.idle_subs.min(k.scale_subs);
    let create1 = create_subs(&app, 1, first, 16).await;
    drop(app);
    let (_, _) = timed_restart(&mut daemon, &bus).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = daemon.pid();
    let rss_idle = rss_kib(pid);
    let (anon_idle, file_idle) = rss_split_kib(pid);
    // Startup leaves a tokio blocking-pool thread that exits after 10 s idle; in a full run
    // wait for that, so the window sees the steady state (and no thread's count is lost).
    let settle = if k.idle_secs >= 30 { 11 } else { 0 };
    tokio::time::sleep(Duration::from_secs(settle)).await;
    let cs0 = context_switches(pid);
    let cpu_idle0 = cpu_secs(pid);
    tokio::time::sleep(Duration::from_secs(k.idle_secs)).await;
    let cs1 = context_switches(pid);
    let cpu_idle1 = cpu_secs(pid);
    let rss_end = rss_kib(pid);
    let (anon_end, file_end) = rss_split_kib(pid);
    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "  RSS 1 s after start {:.1} MiB (anonymous {:.1}, files {:.1}); after the idle window {:.1} MiB (anonymous {:.1}, files {:.1})",
        mib(rss_idle), mib(anon_idle), mib(file_idle), mib(rss_end), mib(anon_end), mib(file_end)
    );
    let mut switches = 0;
    let mut per_thread = Vec::new();
    for (tid, (name, n1)) in &cs1 {
        let n0 = cs0.get(tid).map_or(0, |x| x.1);
        if n1 > &n0 {
            per_thread.push(format!("{name}[{tid}] +{}", n1 - n0));
        }
        switches += n1 - n0;
    }
    let gone = cs0.keys().filter(|t| !cs1.contains_key(t)).count();
    let names = |m: &HashMap<u32, (String, u64)>| {
        let mut v: Vec<String> = m.values().map(|x| x.0.clone()).collect();
        v.sort();
        v.join(",")
    };
    println!(
        "  threads at the start of the window: {}; at the end: {}",
        names(&cs0),
        names(&cs1)
    );
    println!(
        "  RSS after start: {:.1} MiB; context switches over {} s: {switches} ({}); threads {} → {} ({} exited); CPU {:.3} s",
        rss_idle as f64 / 1024.0,
        k.idle_secs,
        if per_thread.is_empty() { "none".to_string() } else { per_thread.join(", ") },
        cs0.len(),
        cs1.len(),
        gone,
        cpu_idle1 - cpu_idle0,
    );
    targets.push(Target {
        what: "RSS ≤ 14 MiB 1 s after start with 1,000 subscriptions",
        measured: format!("{:.1} MiB with {}", rss_idle as f64 / 1024.0, first),
        met: rss_idle <= 14 * 1024 && first >= 1000,
    });
    targets.push(Target {
        what: "anonymous memory ≤ 4 MiB 1 s after start with 1,000 subscriptions",
        measured: format!("{:.1} MiB with {}", anon_idle as f64 / 1024.0, first),
        met: anon_idle <= 4 * 1024 && first >= 1000,
    });
    targets.push(Target {
        what: "≤ 5 context switches per 60 s idle",
        measured: format!("{switches} in {} s", k.idle_secs),
        met: switches <= 5 && k.idle_secs >= 60,
    });

    // 4. Scale.
    println!("\n[4] scale: {} subscriptions", k.scale_subs);
    let app = bus.app(APP_ID).await;
    let create2 = create_subs(&app, first, k.scale_subs, 16).await;
    let created = k.scale_subs.max(1);
    let subscribe_rate = (created - 1) as f64 / (create1 + create2);
    println!("  created through D-Bus at {subscribe_rate:.0} Subscribe/s (16 calls in flight)");
    drop(app);
    let mut ready = Vec::new();
    let mut connected = Vec::new();
    for _ in 0..k.restarts {
        let (r, c) = timed_restart(&mut daemon, &bus).await;
        ready.push(r.as_secs_f64() * 1e3);
        connected.push(c.as_secs_f64() * 1e3);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_scale = rss_kib(daemon.pid());
    daemon.stop();
    let db_scale = db_bytes(&daemon.db());
    // The same file loaded in this process: open + read every row + check every key.
    let copy = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::copy(daemon.db(), copy.path().join("webpushd.db")).unwrap();
    let t = Instant::now();
    let (store, _) = Store::open(copy.path()).unwrap();
    let open_ms = t.elapsed().as_secs_f64() * 1e3;
    let t = Instant::now();
    let loaded = store.subscriptions().unwrap().len();
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    drop(store);
    // Empty baseline: a daemon started once with no subscription.
    let home0 = tmp.path().join("empty");
    let mut d0 = Daemon::spawn(&bus, &home0, &server.ws_url());
    let r0 = wait_bus_ready(&conn, &mut d0, Instant::now()).await;
    wait_connected(&adm, Instant::now()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = rss_kib(d0.pid());
    d0.stop();
    let mut empty_ready = vec![r0.as_secs_f64() * 1e3];
    let mut empty_connected = Vec::new();
    for _ in 0..k.restarts {
        let (r, c) = timed_restart(&mut d0, &bus).await;
        empty_ready.push(r.as_secs_f64() * 1e3);
        empty_connected.push(c.as_secs_f64() * 1e3);
    }
    d0.stop();
    let db_empty = db_bytes(&d0.db());
    let per_sub = (db_scale as f64 - db_empty as f64) / created as f64;
    let (ready_med, conn_med) = (median(ready.clone()), median(connected.clone()));
    println!(
        "  bus-ready: median {ready_med:.0} ms (runs {ready:.0?}); connected: median {conn_med:.0} ms (runs {connected:.0?})"
    );
    println!(
        "  with no subscription: bus-ready median {:.0} ms, connected median {:.0} ms, RSS {:.1} MiB",
        median(empty_ready.clone()),
        median(empty_connected.clone()),
        rss_empty as f64 / 1024.0
    );
    println!(
        "  in-process: Store::open {open_ms:.0} ms, Store::subscriptions() of {loaded} rows {load_ms:.0} ms"
    );
    println!(
        "  database: {:.2} MiB for {created} subscriptions, {:.0} KiB empty → {per_sub:.0} bytes per subscription; RSS {:.1} MiB",
        db_scale as f64 / 1048576.0,
        db_empty as f64 / 1024.0,
        rss_scale as f64 / 1024.0
    );
    println!(
        "  memory per subscription: {:.2} KiB (RSS with {created} − RSS with none)",
        (rss_scale as f64 - rss_empty as f64) / created.max(1) as f64
    );
    targets.push(Target {
        what: "≤ 200 ms to bus-ready with 10,000 subscriptions",
        measured: format!("{ready_med:.0} ms with {created}"),
        met: ready_med <= 200.0 && created >= 10_000,
    });

    let padded = PADDED.load(Ordering::Relaxed);
    println!(
        "  ({padded} of {created} subscriptions had a 31-byte private key and were padded so the daemon could start)"
    );

    println!("\n[targets]");
    for t in &targets {
        println!(
            "  {:<6} {:<52} {}",
            if t.met { "MET" } else { "MISSED" },
            t.what,
            t.measured
        );
    }
    let warnings = stream_log.lines().filter(|l| l.contains("WARN")).count();
    let errors = stream_log.lines().filter(|l| l.contains("ERROR")).count();
    println!("  (daemon log during the streams: {warnings} warnings, {errors} errors)");

    let report = json!({
        "machine": mach,
        "knobs": {"messages": k.messages, "paced_secs": k.paced_secs, "idle_subs": k.idle_subs,
                  "idle_secs": k.idle_secs, "scale_subs": k.scale_subs, "restarts": k.restarts,
                  "quick": k.quick, "payload_bytes": PAYLOAD, "stream_subscriptions": STREAM_SUBS,
                  "acks_in_flight": ACKS_IN_FLIGHT},
        "stages_us": st.rows.iter().map(|(n, us, note)| json!({"stage": n, "us": us, "note": note})).collect::<Vec<_>>(),
        "stages_after_flat_us": st_after.rows.iter().map(|(n, us, note)| json!({"stage": n, "us": us, "note": note})).collect::<Vec<_>>(),
        "streams": {
            "daemon_flat": d_flat.json(), "bare_flat": b_flat.json(),
            "daemon_paced_100": d_paced.json(), "bare_paced_100": b_paced.json(),
            "baseline_daemon": in_run_baseline.as_ref().map(|(bin, base, again)| json!({
                "binary": bin, "paced_100": base.json(), "daemon_again_paced_100": again.json(),
            })),
            "ratio_daemon_to_bare": ratio, "added_p99_ms_at_100": added_p99,
        },
        "idle": {"subscriptions": first, "rss_kib": rss_idle, "window_s": k.idle_secs,
                 "rss_anon_kib": anon_idle, "rss_file_kib": file_idle, "rss_end_kib": rss_end,
                 "rss_end_anon_kib": anon_end, "rss_end_file_kib": file_end,
                 "settle_s": settle, "threads_exited_in_window": gone,
                 "context_switches": switches, "per_thread": per_thread,
                 "cpu_s": cpu_idle1 - cpu_idle0},
        "scale": {"subscriptions": created, "subscribe_per_s": subscribe_rate,
                  "bus_ready_ms": ready, "connected_ms": connected,
                  "bus_ready_ms_median": ready_med, "connected_ms_median": conn_med,
                  "empty_bus_ready_ms": empty_ready, "empty_connected_ms": empty_connected,
                  "empty_rss_kib": rss_empty,
                  "store_open_ms": open_ms, "store_subscriptions_ms": load_ms,
                  "db_bytes": db_scale, "db_bytes_empty": db_empty,
                  "db_bytes_per_subscription": per_sub, "rss_kib": rss_scale,
                  "short_private_keys_padded": padded},
        "targets": targets.iter().map(|t| json!({"target": t.what, "measured": t.measured, "met": t.met})).collect::<Vec<_>>(),
    });
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/target")))
        .join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("pipeline.json");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{}", serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("\nwrote {}", path.display());
    drop(server);
}

/// Messages dropped by the pending cap, from the daemon's log: one line per subscription and
/// burst, with `count=N` (or, from older daemons, one line per message).
fn evicted_in(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("max_pending_per_subscription"))
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("count="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(1)
        })
        .sum()
}
