//! UnifiedPush: a connector written from the specification (examples/up-connector.rs) on a
//! real private bus, started by D-Bus activation from a `.service` file, registered with
//! the daemon's distributor, receiving the exact bodies application servers POST.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;
use webpushd::crypto::{self, Encoding, SubscriptionKeys};
use zbus::zvariant::{OwnedValue, Value};

fn connector_bin() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_webpushd"))
        .parent()
        .unwrap()
        .join("examples/up-connector")
}

/// Make `name` activatable: the bus starts the example connector for it.
fn install(bus: &Bus, name: &str, record: &Path, extra: &str) {
    std::fs::write(
        bus.services.join(format!("{name}.service")),
        format!(
            "[D-BUS Service]\nName={name}\nExec={} --name {name} --record {} --idle 2{extra}\n",
            connector_bin().display(),
            record.display()
        ),
    )
    .unwrap();
}

/// Run the connector as the app would at startup: register, then exit when idle.
fn register(bus: &Bus, name: &str, record: &Path, token: &str, extra: &[&str]) {
    let status = Command::new(connector_bin())
        .args(["--name", name, "--record", record.to_str().unwrap()])
        .args(["--register", token, "--idle", "1"])
        .args(extra)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .status()
        .unwrap();
    assert!(status.success());
}

fn calls(record: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(record)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn wait_call(
    record: &Path,
    what: &str,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, || async {
        calls(record).into_iter().rev().find(|c| f(c))
    })
    .await
}

fn count(record: &Path, method: &str) -> usize {
    calls(record)
        .iter()
        .filter(|c| c["method"] == method)
        .count()
}

async fn registered_endpoint(record: &Path, n: usize) -> String {
    let c = eventually("NewEndpoint", || async {
        let v: Vec<_> = calls(record)
            .into_iter()
            .filter(|c| c["method"] == "NewEndpoint")
            .collect();
        (v.len() >= n).then(|| v[n - 1].clone())
    })
    .await;
    c["endpoint"].as_str().unwrap().to_string()
}

async fn post_raw(endpoint: &str, enc: &crypto::Encrypted) -> u16 {
    let key = webpushd::vapid::VapidKey::generate().unwrap();
    webpushd::appserver::post_encrypted(endpoint, enc, &key, &Default::default())
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_switch_gives_the_connector_a_new_endpoint() {
    let w = World::new().await;
    let other_dir = w.dir.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let other = push_server(&other_dir).await;
    let name = "org.example.UpMove";
    let record = w.dir.path().join("upmove.jsonl");
    install(&w.bus, name, &record, "");
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
    let first = registered_endpoint(&record, 1).await;
    assert!(first.starts_with(&w.server.http_base()), "{first}");

    let admin = App::new(w.bus.connect().await).await;
    admin.admin.set_server_url(&other.ws_url()).await.unwrap();
    let second = registered_endpoint(&record, 2).await;
    assert!(second.starts_with(&other.http_base()), "{second}");
}

#[tokio::test(flavor = "multi_thread")]
async fn v2_register_deliver_reregister_and_unregister() {
    let w = World::new().await;
    let name = "org.example.UpChat";
    let record = w.dir.path().join("upchat.jsonl");
    install(&w.bus, name, &record, "");
    let keys = SubscriptionKeys::generate().unwrap();

    tokio::task::block_in_place(|| register(&w.bus, name, &record, "token-1", &[]));
    let result = wait_call(&record, "RegisterResult", |c| {
        c["method"] == "RegisterResult"
    })
    .await;
    assert_eq!(result["success"], "REGISTRATION_SUCCEEDED", "{result}");
    let endpoint = registered_endpoint(&record, 1).await;
    assert!(endpoint.starts_with(&w.server.http_base()), "{endpoint}");

    // An application server encrypts to the connector's keys; the app gets the exact body.
    let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"hello unifiedpush", false).unwrap();
    assert_eq!(post_raw(&endpoint, &enc).await, 201);
    let m = wait_call(&record, "Message", |c| c["method"] == "Message").await;
    assert_eq!(m["token"], "token-1");
    let body = crypto::b64(m["message"].as_str().unwrap()).unwrap();
    assert_eq!(body, enc.body);
    assert_eq!(
        crypto::decrypt(&keys, &Encoding::Aes128gcm, &body).unwrap(),
        b"hello unifiedpush"
    );

    // What pushctl list --all shows: kind, service, description.
    let observer = App::new(w.bus.connect().await).await;
    let all = observer.admin.list_all().await.unwrap();
    assert_eq!(all.len(), 1);
    let p = observer.subscription(&all[0]).await;
    assert_eq!(p.kind().await.unwrap(), "unifiedpush");
    assert_eq!(p.bus_name().await.unwrap(), name);
    assert_eq!(p.description().await.unwrap(), "example connector");
    // Delivered and acknowledged by the connector's reply: nothing waits.
    eventually("nothing pending", || async {
        let app = w.bus.app(name).await;
        let pending = app.manager.fetch_messages("token-1").await.ok()?;
        app.conn.close().await.ok()?;
        pending.is_empty().then_some(())
    })
    .await;

    // Registering again with the same token keeps the endpoint.
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "token-1", &[]));
    assert_eq!(registered_endpoint(&record, 2).await, endpoint);

    // Unregister by the app: confirmed with Unregistered; the endpoint is gone.
    let (bus, record2) = (&w.bus, record.clone());
    tokio::task::block_in_place(|| {
        let status = Command::new(connector_bin())
            .args(["--name", name, "--record", record2.to_str().unwrap()])
            .args(["--unregister", "token-1", "--idle", "1"])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .status()
            .unwrap();
        assert!(status.success());
    });
    wait_call(&record, "Unregistered", |c| {
        c["method"] == "Unregistered" && c["token"] == "token-1"
    })
    .await;
    eventually("410", || async {
        (post_raw(&endpoint, &enc).await == 410).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connector_that_fails_gets_the_message_again_later() {
    let w = World::new().await;
    let name = "org.example.UpSlow";
    let record = w.dir.path().join("upslow.jsonl");
    // One process for both attempts (a fresh one would refuse again).
    install(&w.bus, name, &record, " --fail-first 1 --idle 30");
    let keys = SubscriptionKeys::generate().unwrap();
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
    let endpoint = registered_endpoint(&record, 1).await;
    let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"persist", false).unwrap();
    assert_eq!(post_raw(&endpoint, &enc).await, 201);
    wait_call(&record, "a refused Message", |c| c["refused"] == true).await;
    let m = wait_call(&record, "the retried Message", |c| {
        c["method"] == "Message" && c["message"].is_string()
    })
    .await;
    assert_eq!(
        crypto::b64(m["message"].as_str().unwrap()).unwrap(),
        enc.body
    );
    assert_eq!(count(&record, "Message"), 2, "{:#?}", calls(&record));
}

#[tokio::test(flavor = "multi_thread")]
async fn endpoint_changes_and_removal_reach_the_connector() {
    let w = World::new().await;
    let name = "org.example.UpReset";
    let record = w.dir.path().join("upreset.jsonl");
    install(&w.bus, name, &record, "");
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
    let first = registered_endpoint(&record, 1).await;

    // Server reset: the daemon re-registers and tells the app its new endpoint.
    w.server.faults().unwrap().force_new_uaid();
    let admin = App::new(w.bus.connect().await).await;
    admin.admin.reconnect().await.unwrap();
    let second = registered_endpoint(&record, 2).await;
    assert_ne!(first, second);

    // Removed by the user (pushctl unsubscribe PATH → Admin.Remove): Unregistered.
    let all = admin.admin.list_all().await.unwrap();
    admin.admin.remove(&all[0].as_ref()).await.unwrap();
    wait_call(&record, "Unregistered", |c| c["method"] == "Unregistered").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_registrations_are_refused_with_the_spec_reasons() {
    let w = World::new().await;
    let app = w.bus.app("org.example.UpBad").await;
    let register = |args: HashMap<&'static str, Value<'static>>| {
        let conn = app.conn.clone();
        async move {
            let reply = conn
                .call_method(
                    Some("org.unifiedpush.Distributor.webpushd"),
                    "/org/unifiedpush/Distributor",
                    Some("org.unifiedpush.Distributor2"),
                    "Register",
                    &(args,),
                )
                .await
                .unwrap();
            let r: HashMap<String, OwnedValue> = reply.body().deserialize().unwrap();
            let s = |k: &str| match r.get(k).map(|v| &**v) {
                Some(Value::Str(s)) => s.to_string(),
                _ => String::new(),
            };
            (s("success"), s("reason"))
        }
    };
    let base = |token: String| {
        HashMap::from([
            ("service", Value::from("org.example.UpBad")),
            ("token", Value::from(token)),
        ])
    };
    let failed = |reason: &str| ("REGISTRATION_FAILED".to_string(), reason.to_string());
    assert_eq!(
        register(base("x".repeat(101))).await,
        failed("INTERNAL_ERROR")
    );
    let mut bad_vapid = base("ok".into());
    bad_vapid.insert("vapid", Value::from("not-a-key"));
    assert_eq!(register(bad_vapid).await, failed("INTERNAL_ERROR"));
    let mut long_desc = base("ok".into());
    long_desc.insert("description", Value::from("d".repeat(101)));
    assert_eq!(register(long_desc).await, failed("INTERNAL_ERROR"));
    let mut other = base("ok".into());
    other.insert("service", Value::from("org.someone.Else"));
    assert_eq!(register(other).await, failed("UNAUTHORIZED"));
    let missing = HashMap::from([("token", Value::from("ok"))]);
    assert_eq!(register(missing).await, failed("INTERNAL_ERROR"));
    // None of these left a registration behind.
    assert!(app.admin.list_all().await.unwrap().is_empty());
    // A good VAPID key is accepted and passed to the push server (a v2 endpoint).
    let mut good = base("ok".into());
    let key = webpushd::vapid::VapidKey::generate().unwrap().public_raw();
    good.insert("vapid", Value::from(crypto::b64_encode(&key)));
    assert_eq!(
        register(good).await,
        ("REGISTRATION_SUCCEEDED".to_string(), String::new())
    );
    let all = app.admin.list_all().await.unwrap();
    let endpoint = app.subscription(&all[0]).await.endpoint().await.unwrap();
    assert!(endpoint.contains("/wpush/v2/"), "{endpoint}");
}

#[tokio::test(flavor = "multi_thread")]
async fn version_1_connectors_work_too() {
    let w = World::new().await;
    let name = "org.example.UpOld";
    let record = w.dir.path().join("upold.jsonl");
    install(&w.bus, name, &record, "");
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "old-token", &["--v1"]));
    let result = wait_call(&record, "RegisterResult", |c| {
        c["method"] == "RegisterResult"
    })
    .await;
    assert_eq!(result["success"], "NEW_ENDPOINT");
    let nc = wait_call(&record, "NewEndpoint", |c| c["method"] == "NewEndpoint").await;
    assert_eq!(nc["version"], 1);
    let endpoint = nc["endpoint"].as_str().unwrap().to_string();
    let keys = SubscriptionKeys::generate().unwrap();
    let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"v1 body", false).unwrap();
    assert_eq!(post_raw(&endpoint, &enc).await, 201);
    let m = wait_call(&record, "Connector1.Message", |c| c["method"] == "Message").await;
    assert_eq!(m["version"], 1);
    assert_eq!(
        crypto::b64(m["message"].as_str().unwrap()).unwrap(),
        enc.body
    );

    // Connectors probe the distributor's introspection to choose a version.
    let p = zbus::fdo::IntrospectableProxy::builder(&w.bus.connect().await)
        .destination("org.unifiedpush.Distributor.webpushd")
        .unwrap()
        .path("/org/unifiedpush/Distributor")
        .unwrap()
        .build()
        .await
        .unwrap();
    let xml = p.introspect().await.unwrap();
    assert!(
        xml.contains("org.unifiedpush.Distributor2")
            && xml.contains("org.unifiedpush.Distributor1")
    );
}

/// The app is handed the body alone: what it cannot decrypt from that is acknowledged to
/// the server (101 for `aesgcm`, whose salt and key are in headers; 102 for an empty push
/// or a body over the specification's 4,096 bytes), logged, and never forwarded.
#[tokio::test(flavor = "multi_thread")]
async fn what_the_body_alone_cannot_carry_is_acknowledged_not_forwarded() {
    let w = World::new().await;
    let name = "org.example.UpRaw";
    let record = w.dir.path().join("upraw.jsonl");
    install(&w.bus, name, &record, "");
    let keys = SubscriptionKeys::generate().unwrap();
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "token-1", &[]));
    let endpoint = registered_endpoint(&record, 1).await;

    let aesgcm = crypto::encrypt(keys.public_key(), keys.auth(), b"old style", true).unwrap();
    let empty = crypto::Encrypted {
        body: Vec::new(),
        headers: Vec::new(),
    };
    let big = crypto::encrypt(keys.public_key(), keys.auth(), &[7u8; 4200], false).unwrap();
    assert!(big.body.len() > 4096);
    let good = crypto::encrypt(keys.public_key(), keys.auth(), b"fine", false).unwrap();
    let mut codes = Vec::new();
    for (n, enc) in [&aesgcm, &empty, &big, &good].into_iter().enumerate() {
        assert_eq!(post_raw(&endpoint, enc).await, 201);
        let ack = eventually("the daemon's ack", || async {
            w.server.stats().acks.get(n).map(|a| a.2)
        })
        .await;
        codes.push(ack);
    }
    assert_eq!(codes, [101, 102, 102, 100]);
    let m = wait_call(&record, "Message", |c| c["method"] == "Message").await;
    assert_eq!(
        crypto::b64(m["message"].as_str().unwrap()).unwrap(),
        good.body
    );
    assert_eq!(count(&record, "Message"), 1);
    let log = w.daemon.log_text();
    assert!(
        log.contains("cannot hand a message to a UnifiedPush app"),
        "{log}"
    );
    assert!(log.contains("aesgcm"), "{log}");
}

/// Each message keeps its own back-off: one that gets through does not make the daemon
/// forget an earlier one that failed.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivered_message_does_not_cancel_the_retry_of_one_that_failed() {
    let w = World::new().await;
    let name = "org.example.UpRetry";
    let record = w.dir.path().join("upretry.jsonl");
    let keys = SubscriptionKeys::generate().unwrap();
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
    let endpoint = registered_endpoint(&record, 1).await;
    // Already running when the messages come (its arrival on the bus would deliver
    // everything pending at once).
    let mut connector = Command::new(connector_bin())
        .args(["--name", name, "--record", record.to_str().unwrap()])
        .args(["--fail-first", "1", "--idle", "30"])
        .env("DBUS_SESSION_BUS_ADDRESS", &w.bus.address)
        .spawn()
        .unwrap();
    let observer = App::new(w.bus.connect().await).await;
    eventually("the daemon to see the connector", || async {
        let s = observer.admin.status().await.ok()?;
        let n: u64 = s.get("apps_connected")?.try_into().ok()?;
        (n == 1).then_some(())
    })
    .await;
    let first = crypto::encrypt(keys.public_key(), keys.auth(), b"first", false).unwrap();
    let second = crypto::encrypt(keys.public_key(), keys.auth(), b"second", false).unwrap();
    assert_eq!(post_raw(&endpoint, &first).await, 201);
    wait_call(&record, "the refused first Message", |c| {
        c["refused"] == true
    })
    .await;
    // The second gets through while the first waits for its retry.
    assert_eq!(post_raw(&endpoint, &second).await, 201);
    let body = |c: &serde_json::Value| {
        c["method"] == "Message"
            && c["message"]
                .as_str()
                .and_then(|m| crypto::b64(m).ok())
                .is_some()
    };
    wait_call(&record, "the second Message", |c| {
        body(c) && crypto::b64(c["message"].as_str().unwrap()).unwrap() == second.body
    })
    .await;
    // The first still comes, after its own back-off (5 s).
    wait_call(&record, "the retried first Message", |c| {
        body(c)
            && c["refused"] != true
            && crypto::b64(c["message"].as_str().unwrap()).unwrap() == first.body
    })
    .await;
    assert_eq!(count(&record, "Message"), 3, "{:#?}", calls(&record));
    let _ = connector.kill();
    let _ = connector.wait();
}

/// Whether `name` has an owner on the bus right now.
async fn on_bus(bus: &Bus, name: &str) -> bool {
    let dbus = zbus::fdo::DBusProxy::new(&bus.connect().await)
        .await
        .unwrap();
    dbus.name_has_owner(name.try_into().unwrap()).await.unwrap()
}

/// Wait until the connector has exited and the daemon has seen it go, so the next message
/// arrives in the background.
async fn wait_gone(w: &World, name: &str) {
    eventually(&format!("{name} to leave the bus"), || async {
        (!on_bus(&w.bus, name).await).then_some(())
    })
    .await;
    let observer = App::new(w.bus.connect().await).await;
    eventually("the daemon to see no app connected", || async {
        let s = observer.admin.status().await.ok()?;
        let n: u64 = s.get("apps_connected")?.try_into().ok()?;
        (n == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_startup_registrations_of_apps_neither_on_the_bus_nor_activatable_are_removed() {
    let mut w = World::new().await;
    let keys = SubscriptionKeys::generate().unwrap();
    let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"x", false).unwrap();
    let mut endpoints = HashMap::new();
    for name in [
        "org.example.UpKept",
        "org.example.UpGone",
        "org.example.UpRunning",
    ] {
        let record = w.dir.path().join(format!("{name}.jsonl"));
        install(&w.bus, name, &record, " --idle 1");
        tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
        endpoints.insert(name, registered_endpoint(&record, 1).await);
    }
    // UpGone is uninstalled; UpRunning is uninstalled too but still running (on the bus).
    for name in ["org.example.UpGone", "org.example.UpRunning"] {
        std::fs::remove_file(w.bus.services.join(format!("{name}.service"))).unwrap();
    }
    let running = w.bus.app("org.example.UpRunning").await;
    w.daemon.restart(&w.bus).await;

    let observer = App::new(w.bus.connect().await).await;
    let remaining = eventually("the uninstalled app's registration to go", || async {
        let all = observer.admin.list_all().await.ok()?;
        let mut names = Vec::new();
        for p in &all {
            names.push(observer.subscription(p).await.bus_name().await.ok()?);
        }
        names.sort();
        (names.len() == 2).then_some(names)
    })
    .await;
    assert_eq!(remaining, ["org.example.UpKept", "org.example.UpRunning"]);
    // Unregistered from the server too; the others still take messages.
    eventually("410 for the removed app", || async {
        (post_raw(&endpoints["org.example.UpGone"], &enc).await == 410).then_some(())
    })
    .await;
    for name in ["org.example.UpKept", "org.example.UpRunning"] {
        assert_eq!(post_raw(&endpoints[name], &enc).await, 201, "{name}");
    }
    drop(running);
}

#[tokio::test(flavor = "multi_thread")]
async fn background_messages_use_up_a_unifiedpush_registrations_quota() {
    let w = World::with_config("[quota]\nmax_per_subscription = 2\n").await;
    let name = "org.example.UpQuota";
    let record = w.dir.path().join("upquota.jsonl");
    install(&w.bus, name, &record, " --idle 1");
    tokio::task::block_in_place(|| register(&w.bus, name, &record, "t", &[]));
    let endpoint = registered_endpoint(&record, 1).await;
    let observer = App::new(w.bus.connect().await).await;
    let path = observer.admin.list_all().await.unwrap().remove(0);
    let p = observer.subscription(&path).await;
    assert_eq!(p.quota().await.unwrap(), 2);
    assert!(p.quota_applies().await.unwrap());
    let keys = SubscriptionKeys::generate().unwrap();

    for (i, left) in [(1usize, 1), (2, 0)] {
        wait_gone(&w, name).await;
        let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"m", false).unwrap();
        assert_eq!(post_raw(&endpoint, &enc).await, 201);
        // Delivered by starting the connector, which is not the user opening the app:
        // the message still costs one.
        eventually(&format!("message {i}"), || async {
            (count(&record, "Message") >= i).then_some(())
        })
        .await;
        assert_eq!(p.quota().await.unwrap(), left);
    }
    assert!(p.expired().await.unwrap());
    // Expired: the connector is told the registration ended, and the endpoint is gone.
    wait_call(&record, "Unregistered", |c| {
        c["method"] == "Unregistered" && c["token"] == "t"
    })
    .await;
    let enc = crypto::encrypt(keys.public_key(), keys.auth(), b"late", false).unwrap();
    eventually("410 after the expiry", || async {
        (post_raw(&endpoint, &enc).await == 410).then_some(())
    })
    .await;
}
