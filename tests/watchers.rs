//! What a settings window or monitor follows without polling, seen from a connection that
//! owns no subscription: subscriptions coming and going (Admin's broadcast signals), each
//! one's count of pending messages (an invalidation on push and on ack), and the apps
//! forbidden to show notifications (Admin.NotificationsDenied, with PropertiesChanged).

mod support;

use support::*;
use webpushd::client::{AdminProxy, SubscriptionProxy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_sees_subscriptions_come_and_go_and_messages_wait() {
    let w = World::new().await;
    let watcher = w.bus.connect().await;
    let admin = AdminProxy::builder(&watcher)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let mut added = admin.receive_subscription_added().await.unwrap();
    let mut removed = admin.receive_subscription_removed().await.unwrap();

    let app = w.bus.app("org.example.Chat").await;
    let sub = app.subscribe("inbox").await;
    let sig = next(&mut added, "SubscriptionAdded").await;
    let args = sig.args().unwrap();
    assert_eq!(args.subscription().as_str(), sub.path.as_str());
    assert_eq!(*args.app_id(), "org.example.Chat");

    // Pending messages: a push adds one, an ack takes it away; each time the watcher is
    // told to read the count again.
    let p = SubscriptionProxy::builder(&watcher)
        .path(sub.path.clone())
        .unwrap()
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .unwrap();
    let props = properties_of(&watcher, &sub.path).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    assert_eq!(p.pending_messages().await.unwrap(), 0);
    let mut messages = app.messages().await;
    w.connected().await;
    assert_eq!(post(&sub, b"one").await.status, 201);
    let (_, id, _) = next(&mut messages, "the message").await;
    wait_invalidated(&mut changes, "PendingMessages").await;
    assert_eq!(p.pending_messages().await.unwrap(), 1);
    app.manager.ack_message("inbox", &id).await.unwrap();
    wait_invalidated(&mut changes, "PendingMessages").await;
    assert_eq!(p.pending_messages().await.unwrap(), 0);

    // Removed by the user: the watcher hears of it too.
    admin.remove(&sub.path.as_ref()).await.unwrap();
    let sig = next(&mut removed, "SubscriptionRemoved").await;
    assert_eq!(
        sig.args().unwrap().subscription().as_str(),
        sub.path.as_str()
    );
}

async fn wait_invalidated(changes: &mut zbus::fdo::PropertiesChangedStream, name: &str) {
    loop {
        let sig = next(changes, name).await;
        if sig.args().unwrap().invalidated_properties().contains(&name) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_permissions_are_a_property_that_announces_changes() {
    let w = World::new().await;
    let conn = w.bus.connect().await;
    let admin = AdminProxy::new(&conn).await.unwrap();
    assert!(admin.notifications_denied().await.unwrap().is_empty());
    let mut changed = admin.receive_notifications_denied_changed().await;
    admin
        .set_notifications_allowed("org.example.Mail", false)
        .await
        .unwrap();
    admin
        .set_notifications_allowed("org.example.Chat", false)
        .await
        .unwrap();
    // Cached proxy: the value comes with the signal.
    let mut last = Vec::new();
    while last.len() < 2 {
        last = next(&mut changed, "NotificationsDenied changed")
            .await
            .get()
            .await
            .unwrap();
    }
    assert_eq!(last, ["org.example.Chat", "org.example.Mail"]);
    admin
        .set_notifications_allowed("org.example.Chat", true)
        .await
        .unwrap();
    let conn2 = w.bus.connect().await;
    let fresh = AdminProxy::new(&conn2).await.unwrap();
    assert_eq!(
        fresh.notifications_denied().await.unwrap(),
        ["org.example.Mail"],
        "allowing again takes the app off the list"
    );
}

/// A stream of messages does not become a stream of signals to everyone watching: the
/// counters are announced at once after a quiet spell, then at most four times a second,
/// each time with the latest values; nothing is left unannounced at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_announced_a_few_times_a_second_with_the_latest_counters() {
    use futures_util::StreamExt;
    let w = World::new().await;
    let watcher = w.bus.connect().await;
    let app = w.bus.app("org.example.Busy").await;
    let sub = app.subscribe("feed").await;
    let props = properties_of(&watcher, &sub.path).await;
    let mut changes = props.receive_properties_changed().await.unwrap();
    let mut messages = app.messages().await;
    w.connected().await;
    const N: u64 = 40;
    let started = std::time::Instant::now();
    for i in 0..N {
        assert_eq!(post(&sub, format!("m{i}").as_bytes()).await.status, 201);
    }
    for _ in 0..N {
        let (scope, id, _) = next(&mut messages, "a message").await;
        app.manager.ack_message(&scope, &id).await.unwrap();
    }
    let took = started.elapsed();
    // Every signal until the last push count has come, and a quiet second after it.
    let mut signals = 0;
    let mut last_count = 0;
    while let Ok(Some(sig)) =
        tokio::time::timeout(std::time::Duration::from_secs(1), changes.next()).await
    {
        signals += 1;
        if let Some(v) = sig.args().unwrap().changed_properties().get("PushCount") {
            last_count = u64::try_from(v).unwrap();
        }
    }
    assert_eq!(last_count, N, "the last announcement has the last count");
    // One at once, then one per 250 ms period with something in it (pushes, then acks).
    let periods = took.as_millis() as u64 / 250 + 2;
    assert!(
        signals <= periods + 1 && signals < N,
        "{signals} PropertiesChanged for {N} messages in {took:?}"
    );
}
