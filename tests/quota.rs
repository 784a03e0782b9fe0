//! Quota and expiry, as nsIPushSubscription does it for web pages: background messages
//! cost one, using the app restores the budget, zero expires the subscription.

mod support;

use std::collections::HashMap;

use support::*;
use zbus::zvariant::Value;

/// Subscribe as `app_id`, then leave the bus so later messages arrive in the background.
async fn subscribe_and_leave(w: &World, app_id: &str, options: HashMap<&str, Value<'_>>) -> Sub {
    let app = w.bus.app(app_id).await;
    let sub = app.subscribe_with("s", options).await.unwrap();
    app.conn.close().await.unwrap();
    seen_leaving(w).await;
    sub
}

/// Wait until the daemon has seen every app leave the bus: until then, messages would
/// still be free.
async fn seen_leaving(w: &World) {
    let observer = App::new(w.bus.connect().await).await;
    eventually("the daemon to see the app leave", || async {
        let s = observer.admin.status().await.ok()?;
        let n: u64 = s.get("apps_connected")?.try_into().ok()?;
        (n == 0).then_some(())
    })
    .await;
}

/// Read a subscription's properties from an unrelated, unsandboxed observer.
async fn props(w: &World, sub: &Sub) -> (i32, bool, u64, bool) {
    let observer = App::new(w.bus.connect().await).await;
    let p = observer.subscription(&sub.path).await;
    (
        p.quota().await.unwrap(),
        p.expired().await.unwrap(),
        p.push_count().await.unwrap(),
        p.quota_applies().await.unwrap(),
    )
}

async fn acked(w: &World, n: usize) {
    eventually(&format!("{n} acks"), || async {
        (w.server.stats().acks.len() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sixteen_background_messages_expire_the_subscription() {
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Quiet", HashMap::new()).await;
    for i in 0..15 {
        assert_eq!(post(&sub, format!("m{i}").as_bytes()).await.status, 201);
    }
    acked(&w, 15).await;
    assert_eq!(props(&w, &sub).await, (1, false, 15, true));
    assert_eq!(post(&sub, b"the last one").await.status, 201);
    acked(&w, 16).await;
    let (quota, expired, count, _) = props(&w, &sub).await;
    assert_eq!((quota, expired, count), (0, true, 16));
    // Unregistered with code 201: the endpoint is gone.
    eventually("unregister 201", || async {
        w.server
            .stats()
            .unregisters
            .iter()
            .any(|(_, c)| *c == 201)
            .then_some(())
    })
    .await;
    assert_eq!(post(&sub, b"too late").await.status, 410);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_app_pays_nothing_and_an_expired_one_comes_back_renewed() {
    let w = World::with_config("[quota]\nmax_per_subscription = 3\n").await;
    // Foreground: the app is on the bus, messages are free.
    let app = w.bus.app("org.example.Busy").await;
    let sub = app.subscribe("s").await;
    let mut msgs = app.messages().await;
    for i in 0..5 {
        post(&sub, format!("f{i}").as_bytes()).await;
        next(&mut msgs, "foreground message").await;
    }
    assert_eq!(props(&w, &sub).await.0, 3);
    app.conn.close().await.unwrap();
    drop(msgs);
    seen_leaving(&w).await;

    // Background: three messages use the budget up.
    for i in 0..3 {
        post(&sub, format!("b{i}").as_bytes()).await;
    }
    acked(&w, 8).await;
    assert!(props(&w, &sub).await.1, "expired");

    // The app comes back: a fresh subscription on the same object, with new endpoint and keys.
    // It listens before it takes its name: the daemon may restore the quota as soon as it
    // sees the app (then the renewal changes no quota) or at the renewal, and the app is
    // told either way.
    let conn = w.bus.connect().await;
    let app = App::new(conn.clone()).await;
    let mut changed = app.manager.receive_subscription_changed().await.unwrap();
    let mut quota_changed = app.manager.receive_quota_changed().await.unwrap();
    conn.request_name("org.example.Busy").await.unwrap();
    let renewed = app.subscribe("s").await;
    assert_eq!(renewed.path, sub.path);
    assert_ne!(renewed.endpoint, sub.endpoint);
    assert_ne!(renewed.p256dh, sub.p256dh);
    assert_ne!(renewed.auth, sub.auth);
    let sig = next(&mut changed, "SubscriptionChanged").await;
    assert_eq!(*sig.args().unwrap().reason(), "expired-renewed");
    // Its quota is back at the maximum, and the app is told, as when it is used.
    let sig = next(&mut quota_changed, "QuotaChanged").await;
    assert_eq!(*sig.args().unwrap().remaining(), 3);
    let (quota, expired, _, _) = props(&w, &renewed).await;
    assert_eq!((quota, expired), (3, false));
    // Messages from the background period are still there for the app.
    let pending = app.manager.fetch_messages("s").await.unwrap();
    assert_eq!(pending.len(), 3 + 5);
    // And the new endpoint works.
    assert_eq!(post(&renewed, b"hello again").await.status, 201);
}

#[tokio::test(flavor = "multi_thread")]
async fn using_the_app_restores_its_quota() {
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Returning", HashMap::new()).await;
    for i in 0..4 {
        post(&sub, format!("m{i}").as_bytes()).await;
    }
    acked(&w, 4).await;
    assert_eq!(props(&w, &sub).await.0, 12);

    let app = w.bus.app("org.example.Returning").await;
    let p = app.subscription(&sub.path).await;
    eventually("quota back to 16", || async {
        (p.quota().await.ok()? == 16).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn system_subscriptions_and_exempt_apps_never_expire() {
    let w = World::with_config(
        "[quota]\nmax_per_subscription = 2\nexempt_apps = [\"org.example.Exempt\"]\n",
    )
    .await;
    let opts = HashMap::from([("system", Value::from(true))]);
    let system = subscribe_and_leave(&w, "org.example.System", opts).await;
    let exempt = subscribe_and_leave(&w, "org.example.Exempt", HashMap::new()).await;
    for i in 0..5 {
        post(&system, format!("s{i}").as_bytes()).await;
        post(&exempt, format!("e{i}").as_bytes()).await;
    }
    acked(&w, 10).await;
    assert_eq!(props(&w, &system).await, (-1, false, 5, false));
    assert_eq!(props(&w, &exempt).await, (-1, false, 5, false));
}

#[tokio::test(flavor = "multi_thread")]
async fn quota_survives_a_restart() {
    let mut w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Durable", HashMap::new()).await;
    for i in 0..3 {
        post(&sub, format!("m{i}").as_bytes()).await;
    }
    acked(&w, 3).await;
    w.daemon.restart(&w.bus).await;
    let (quota, expired, count, _) = props(&w, &sub).await;
    assert_eq!((quota, expired, count), (13, false, 3));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_app_hears_quota_changes_and_admin_can_reset_and_remove() {
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Listen", HashMap::new()).await;
    for i in 0..2 {
        post(&sub, format!("m{i}").as_bytes()).await;
    }
    acked(&w, 2).await;
    assert_eq!(props(&w, &sub).await.0, 14);
    let admin = App::new(w.bus.connect().await).await;
    admin.admin.reset_quota(&sub.path.as_ref()).await.unwrap();
    assert_eq!(props(&w, &sub).await.0, 16);

    post(&sub, b"again").await;
    acked(&w, 3).await;
    assert_eq!(props(&w, &sub).await.0, 15);
    // The app listens first, then takes its name: its appearance restores the quota and
    // it hears QuotaChanged.
    let app = App::new(w.bus.connect().await).await;
    let mut quota = app.manager.receive_quota_changed().await.unwrap();
    app.conn.request_name("org.example.Listen").await.unwrap();
    let sig = next(&mut quota, "QuotaChanged").await;
    assert_eq!(sig.args().unwrap().remaining, 16);

    admin.admin.remove(&sub.path.as_ref()).await.unwrap();
    eventually("the subscription to be gone", || async {
        app.manager
            .list_subscriptions()
            .await
            .ok()?
            .is_empty()
            .then_some(())
    })
    .await;
    eventually("410 after removal", || async {
        (post(&sub, b"x").await.status == 410).then_some(())
    })
    .await;
}

/// Someone watching a subscription (a settings panel, `pushctl monitor`) hears the new
/// counters from PropertiesChanged itself, values included, in one signal per message.
#[tokio::test(flavor = "multi_thread")]
async fn watchers_get_the_new_counters_in_properties_changed() {
    use futures_util::StreamExt;
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Watched", HashMap::new()).await;
    let watcher = App::new(w.bus.connect().await).await;
    let props = properties_of(&watcher.conn, &sub.path).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    post(&sub, b"one").await;
    let sig = next(&mut changes, "PropertiesChanged").await;
    let a = sig.args().unwrap();
    assert_eq!(
        a.interface_name().as_str(),
        "org.webpushd.Push1.Subscription"
    );
    let ch = a.changed_properties();
    let get = |k: &str| ch.get(k).unwrap_or_else(|| panic!("{k} not in {ch:?}"));
    assert_eq!(u64::try_from(get("PushCount")).unwrap(), 1);
    assert_eq!(i32::try_from(get("Quota")).unwrap(), 15);
    assert!(bool::try_from(get("QuotaApplies")).unwrap());
    assert!(i64::try_from(get("LastPush")).unwrap() > 0);
    // Only the count of waiting messages is left to be read, in the same signal.
    let invalidated: Vec<&str> = a.invalidated_properties().to_vec();
    assert_eq!(invalidated, ["PendingMessages"]);
    // The next message: the next values, not a second signal for the first.
    post(&sub, b"two").await;
    let sig = next(&mut changes, "PropertiesChanged").await;
    let a = sig.args().unwrap();
    assert_eq!(
        u64::try_from(a.changed_properties().get("PushCount").unwrap()).unwrap(),
        2
    );
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), changes.next())
            .await
            .is_err(),
        "more than one PropertiesChanged per message"
    );
}

/// The server sends again what it did not see acknowledged (an ack lost with the
/// connection, a daemon killed after its commit). Those copies are the same messages: they
/// must not count against the quota, let alone expire the subscription, even when they
/// arrive in one batch with a new message.
#[tokio::test(flavor = "multi_thread")]
async fn copies_the_server_sends_again_cost_no_quota() {
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Copies", HashMap::new()).await;
    assert_eq!(post(&sub, b"the original").await.status, 201);
    acked(&w, 1).await;
    assert_eq!(props(&w, &sub).await, (15, false, 1, true));
    let (channel, version, _) = w.server.stats().acks[0].clone();

    // Fifteen copies of it, then a new (empty) message, back to back.
    let faults = w.server.faults().expect("fault injection is on");
    let frame = |v: &str| {
        format!(
            "{{\"messageType\":\"notification\",\"channelID\":\"{channel}\",\"version\":\"{v}\",\"ttl\":60}}"
        )
    };
    for _ in 0..15 {
        faults.send_raw(&frame(&version));
    }
    faults.send_raw(&frame("a-new-one"));
    acked(&w, 17).await;
    let acks = w.server.stats().acks;
    assert!(
        acks[1..]
            .iter()
            .filter(|a| a.1 == version)
            .all(|a| a.2 == 102),
        "copies are acknowledged as duplicates: {acks:?}"
    );
    assert!(acks.iter().any(|a| a.1 == "a-new-one" && a.2 == 100));
    // Two messages received, two paid for; the subscription lives.
    assert_eq!(props(&w, &sub).await, (14, false, 2, true));
    assert_eq!(post(&sub, b"still reachable").await.status, 201);
}

/// A server that keeps sending copies to an expired subscription (autopush-rs 1.83.1 on
/// Redis resends stored messages in a loop) gets one unregister per connection, not one
/// per copy.
#[tokio::test(flavor = "multi_thread")]
async fn copies_to_an_expired_subscription_bring_one_unregister() {
    let w = World::new().await;
    let sub = subscribe_and_leave(&w, "org.example.Loop", HashMap::new()).await;
    for i in 0..16 {
        assert_eq!(post(&sub, format!("m{i}").as_bytes()).await.status, 201);
    }
    acked(&w, 16).await;
    assert!(props(&w, &sub).await.1, "expired");
    let (channel, version, _) = w.server.stats().acks[15].clone();
    let faults = w.server.faults().expect("fault injection is on");
    for _ in 0..20 {
        faults.send_raw(&format!(
            "{{\"messageType\":\"notification\",\"channelID\":\"{channel}\",\"version\":\"{version}\",\"ttl\":60}}"
        ));
    }
    acked(&w, 36).await;
    let unregisters: Vec<_> = w
        .server
        .stats()
        .unregisters
        .into_iter()
        .filter(|(c, _)| *c == channel)
        .collect();
    assert_eq!(unregisters.len(), 1, "{unregisters:?}");
}

/// Messages waiting in the daemon, all subscriptions together.
async fn pending(w: &World) -> u64 {
    let observer = App::new(w.bus.connect().await).await;
    let s = observer.admin.status().await.unwrap();
    s.get("pending_messages").unwrap().try_into().unwrap()
}

const SMALL_CAP: &str = "[delivery]\nmax_pending_per_subscription = 2\npending_grace = \"2s\"";

#[tokio::test(flavor = "multi_thread")]
async fn the_pending_cap_applies_when_the_grace_ends_without_another_burst() {
    let w = World::with_config(SMALL_CAP).await;
    let sub = subscribe_and_leave(&w, "org.example.Away", HashMap::new()).await;
    for i in 0..5 {
        assert_eq!(post(&sub, format!("m{i}").as_bytes()).await.status, 201);
    }
    acked(&w, 5).await;
    // Within the grace all stay (up to ten times the cap)...
    assert_eq!(pending(&w).await, 5);
    // ...and once it has passed the oldest go, though nothing more came.
    eventually("the cap once the grace ended", || async {
        (pending(&w).await == 2).then_some(())
    })
    .await;
    assert!(w
        .daemon
        .log_text()
        .contains("max_pending_per_subscription reached"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_pending_cap_applies_at_startup() {
    let mut w = World::with_config(SMALL_CAP).await;
    let sub = subscribe_and_leave(&w, "org.example.Away", HashMap::new()).await;
    for i in 0..5 {
        assert_eq!(post(&sub, format!("m{i}").as_bytes()).await.status, 201);
    }
    acked(&w, 5).await;
    assert_eq!(pending(&w).await, 5);
    // Stopped within the grace, started after it.
    w.daemon.stop();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    w.daemon.restart(&w.bus).await;
    assert_eq!(pending(&w).await, 2);
}

/// The reason of the last expiry, as an unrelated observer reads it (uncached).
async fn expired_reason(w: &World, sub: &Sub) -> (bool, String) {
    let observer = App::new(w.bus.connect().await).await;
    let p = observer.subscription(&sub.path).await;
    (
        p.expired().await.unwrap(),
        p.expired_reason().await.unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn why_a_subscription_expired_is_kept_for_the_app_to_read() {
    let mut w = World::with_config("[quota]\nmax_per_subscription = 2\n").await;
    let sub = subscribe_and_leave(&w, "org.example.Later", HashMap::new()).await;
    assert_eq!(expired_reason(&w, &sub).await, (false, String::new()));
    for i in 0..2 {
        post(&sub, format!("b{i}").as_bytes()).await;
    }
    acked(&w, 2).await;
    assert_eq!(expired_reason(&w, &sub).await, (true, "quota".into()));
    // Nobody heard the Expired signal; the reason outlives a restart.
    w.daemon.restart(&w.bus).await;
    assert_eq!(expired_reason(&w, &sub).await, (true, "quota".into()));
    // The app comes back and subscribes: renewed, and it can still tell why.
    let app = w.bus.app("org.example.Later").await;
    let renewed = app.subscribe("s").await;
    assert_eq!(renewed.path, sub.path);
    assert_ne!(renewed.endpoint, sub.endpoint);
    let p = app.subscription(&renewed.path).await;
    assert!(!p.expired().await.unwrap());
    assert_eq!(p.expired_reason().await.unwrap(), "quota");
}
