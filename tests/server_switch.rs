//! Switching push server: every subscription moves to the new server with a new endpoint,
//! its app is told (`SubscriptionChanged` "server-changed"), messages stored before the
//! switch are still delivered, and the old server's UAID is never offered to the new one.

mod support;

use support::*;
use webpushd::client::AdminProxy;

async fn uaid(w: &Bus) -> String {
    let conn = w.connect().await;
    let admin = AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    admin.uaid().await.unwrap()
}

/// Two push servers, a daemon on the first, and two apps with a subscription each.
struct Setup {
    dir: tempfile::TempDir,
    bus: Bus,
    a: webpushd::server::PushServer,
    b: webpushd::server::PushServer,
    daemon: Daemon,
    one: App,
    two: App,
    s1: Sub,
    s2: Sub,
    old_uaid: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let bus = Bus::start();
    let a = push_server(&dir.path().join("a")).await;
    let b = push_server(&dir.path().join("b")).await;
    let daemon = Daemon::start(&bus, dir.path(), &Daemon::config_for(&a.ws_url(), "")).await;
    wait_connected(&bus).await;

    let one = bus.app("org.example.One").await;
    let two = bus.app("org.example.Two").await;
    let s1 = one.subscribe("https://one.example/").await;
    let s2 = two.subscribe("https://two.example/").await;
    let old_uaid = uaid(&bus).await;
    Setup {
        dir,
        bus,
        a,
        b,
        daemon,
        one,
        two,
        s1,
        s2,
        old_uaid,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_url_between_runs_moves_every_subscription() {
    let Setup {
        dir,
        bus,
        a,
        b,
        mut daemon,
        one,
        two,
        s1,
        s2,
        old_uaid,
    } = setup().await;
    assert!(a.is_connected(&old_uaid));

    // A message stored before the switch, not yet acknowledged.
    let mut m1 = one.messages().await;
    assert_eq!(post(&s1, b"before the switch").await.status, 201);
    let (_, _, payload) = next(&mut m1, "the message before the switch").await;
    assert_eq!(payload, b"before the switch");

    let mut changed1 = one.manager.receive_subscription_changed().await.unwrap();
    let mut changed2 = two.manager.receive_subscription_changed().await.unwrap();

    // A desktop's bus has many connections: the restarted daemon takes a while to learn
    // whose they are, and must not move the subscriptions (and tell their apps) before.
    let mut others = Vec::new();
    for _ in 0..150 {
        others.push(bus.connect().await);
    }

    // The config now names the other server.
    daemon.stop();
    let mut daemon = Daemon::start(&bus, dir.path(), &Daemon::config_for(&b.ws_url(), "")).await;
    wait_connected(&bus).await;

    for (changed, sub, what) in [(&mut changed1, &s1, "one"), (&mut changed2, &s2, "two")] {
        let sig = next(changed, what).await;
        let args = sig.args().unwrap();
        assert_eq!(args.reason(), &"server-changed", "{what}");
        assert_eq!(args.subscription().as_str(), sub.path.as_str(), "{what}");
    }
    let new1 = one.sub(s1.path.clone()).await;
    let new2 = two.sub(s2.path.clone()).await;
    for (old, new) in [(&s1, &new1), (&s2, &new2)] {
        assert_ne!(old.endpoint, new.endpoint);
        assert!(
            new.endpoint.starts_with(&b.http_base()),
            "{} is not on the new server {}",
            new.endpoint,
            b.http_base()
        );
    }
    // The old server's UAID was not offered to the new one.
    let new_uaid = uaid(&bus).await;
    assert_ne!(new_uaid, old_uaid);
    assert!(b.is_connected(&new_uaid));
    assert!(!b.is_connected(&old_uaid));

    // The message stored before the switch is still there for its app.
    let pending = one
        .manager
        .fetch_messages("https://one.example/")
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.as_slice(), b"before the switch");

    // Every new endpoint works.
    let mut m2 = two.messages().await;
    assert_eq!(post(&new1, b"after one").await.status, 201);
    assert_eq!(post(&new2, b"after two").await.status, 201);
    let got = loop {
        let (_, _, p) = next(&mut m1, "one's message after the switch").await;
        if p != b"before the switch" {
            break p;
        }
    };
    assert_eq!(got, b"after one");
    assert_eq!(next(&mut m2, "two's message").await.2, b"after two");

    // A restart on the same server keeps the UAID (it is the new server's now).
    daemon.restart(&bus).await;
    wait_connected(&bus).await;
    assert_eq!(uaid(&bus).await, new_uaid);
    assert_eq!(one.sub(s1.path.clone()).await.endpoint, new1.endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_server_url_moves_every_subscription_live_and_is_kept() {
    let Setup {
        dir: _dir,
        bus,
        a,
        b,
        mut daemon,
        one,
        two,
        s1,
        s2,
        old_uaid,
    } = setup().await;
    let mut m1 = one.messages().await;
    assert_eq!(post(&s1, b"before the switch").await.status, 201);
    assert_eq!(
        next(&mut m1, "the first message").await.2,
        b"before the switch"
    );

    let conn = bus.connect().await;
    let admin = AdminProxy::builder(&conn)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    // Validated: neither http:// nor the local service (not running) is taken.
    let e = admin
        .set_server_url("https://push.example/")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("InvalidArgument"), "{e}");
    let e = admin.set_server_url("local").await.unwrap_err();
    assert!(e.to_string().contains("Unavailable"), "{e}");
    assert_eq!(admin.server_url().await.unwrap(), a.ws_url());

    let mut changed1 = one.manager.receive_subscription_changed().await.unwrap();
    let mut changed2 = two.manager.receive_subscription_changed().await.unwrap();
    admin.set_server_url(&b.ws_url()).await.unwrap();
    assert_eq!(admin.server_url().await.unwrap(), b.ws_url());
    for (changed, what) in [(&mut changed1, "one"), (&mut changed2, "two")] {
        let sig = next(changed, what).await;
        assert_eq!(sig.args().unwrap().reason(), &"server-changed", "{what}");
    }
    let new1 = one.sub(s1.path.clone()).await;
    let new2 = two.sub(s2.path.clone()).await;
    assert!(
        new1.endpoint.starts_with(&b.http_base()),
        "{}",
        new1.endpoint
    );
    assert!(
        new2.endpoint.starts_with(&b.http_base()),
        "{}",
        new2.endpoint
    );
    let new_uaid = uaid(&bus).await;
    assert_ne!(new_uaid, old_uaid);
    assert!(b.is_connected(&new_uaid) && !b.is_connected(&old_uaid));

    // The old server got its channels back: the old endpoints are gone.
    for old in [&s1, &s2] {
        let status = post(old, b"to the old server").await.status;
        assert!(
            status == 404 || status == 410,
            "old endpoint answered {status}"
        );
    }
    // Stored before the switch, still delivered; the new endpoints work.
    let pending = one
        .manager
        .fetch_messages("https://one.example/")
        .await
        .unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.as_slice(), b"before the switch");
    let mut m2 = two.messages().await;
    assert_eq!(post(&new1, b"after one").await.status, 201);
    assert_eq!(post(&new2, b"after two").await.status, 201);
    assert_eq!(next(&mut m1, "one's message after").await.2, b"after one");
    assert_eq!(next(&mut m2, "two's message after").await.2, b"after two");

    // The choice is kept over the config file's (unchanged) server_url.
    daemon.restart(&bus).await;
    wait_connected(&bus).await;
    assert_eq!(admin.server_url().await.unwrap(), b.ws_url());
    assert_eq!(uaid(&bus).await, new_uaid);
    assert_eq!(one.sub(s1.path.clone()).await.endpoint, new1.endpoint);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushctl_server_shows_and_switches_the_server() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let bus = Bus::start();
    let a = push_server(&dir.path().join("a")).await;
    let b = push_server(&dir.path().join("b")).await;
    let daemon = Daemon::start(&bus, dir.path(), &Daemon::config_for(&a.ws_url(), "")).await;
    wait_connected(&bus).await;
    let one = bus.app("org.example.One").await;
    let s1 = one.subscribe("https://one.example/").await;

    let run = |args: Vec<String>| {
        let mut cmd = daemon.pushctl_command();
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
    };
    let out = run(vec!["--json".into(), "server".into()]).await.unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["server"], a.ws_url());

    let out = run(vec!["server".into(), "http://nope/".into()])
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wss://"));

    let out = run(vec!["server".into(), b.ws_url()]).await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(&b.ws_url()));
    eventually("the subscription on the new server", || async {
        let p = one.subscription(&s1.path).await;
        let e = p.endpoint().await.ok()?;
        e.starts_with(&b.http_base()).then_some(())
    })
    .await;
}
