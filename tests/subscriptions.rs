//! Subscriptions end to end: a real bus, the real daemon, the project's push server, and
//! apps acting through zbus proxies.

mod support;

use std::collections::HashMap;

use support::*;
use webpushd::appserver::SendOptions;
use zbus::zvariant::Value;
use zbus::DBusError as _;

/// The D-Bus error name of a failed call or property read.
fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        zbus::Error::FDO(e) => e.name().to_string(),
        other => format!("not a D-Bus error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_post_arrives_as_a_message_signal_with_the_exact_plaintext() {
    let w = World::new().await;
    let app = w.bus.app("org.example.Chat").await;
    let sub = app.subscribe("https://chat.example/").await;
    assert!(
        sub.endpoint.starts_with(&w.server.http_base()),
        "{}",
        sub.endpoint
    );
    assert_eq!(sub.p256dh.len(), 65);
    assert_eq!(sub.auth.len(), 16);

    let mut messages = app.messages().await;
    for aesgcm in [false, true] {
        let text = format!("hello via {}", if aesgcm { "aesgcm" } else { "aes128gcm" });
        let opts = SendOptions {
            aesgcm,
            ..Default::default()
        };
        let resp = post_with(&sub, text.as_bytes(), &opts).await;
        assert_eq!(resp.status, 201, "{}", resp.body);
        let (scope, id, payload) = next(&mut messages, "Message").await;
        assert_eq!(scope, "https://chat.example/");
        assert_eq!(payload, text.as_bytes());
        app.manager.ack_message(&scope, &id).await.unwrap();
    }
    // Acked with 100 only: both messages stored, then acknowledged. (The app hears of a
    // message before the commit, so its ack can beat the daemon's ack to the server.)
    eventually("two acks of 100 at the server", || async {
        let acks = w.server.stats().acks;
        (acks.len() == 2).then_some(())
    })
    .await;
    let acks = w.server.stats().acks;
    assert!(acks.iter().all(|a| a.2 == 100), "{acks:?}");
    // Acknowledged by the app: nothing pending.
    assert!(app
        .manager
        .fetch_messages("https://chat.example/")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn subscribe_is_idempotent_and_apps_are_isolated() {
    let w = World::new().await;
    let a = w.bus.app("org.example.A").await;
    let b = w.bus.app("org.example.B").await;
    let sa = a.subscribe("scope").await;
    assert_eq!(a.subscribe("scope").await.path, sa.path);
    let sb = b.subscribe("scope").await;
    assert_ne!(sa.path, sb.path);
    assert_ne!(sa.endpoint, sb.endpoint);

    assert_eq!(
        a.manager.list_subscriptions().await.unwrap(),
        vec![sa.path.clone()]
    );
    assert_eq!(
        b.manager.list_subscriptions().await.unwrap(),
        vec![sb.path.clone()]
    );

    // B cannot use A's object.
    let foreign = b.subscription(&sa.path).await;
    let err = foreign.get_key("auth").await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");
    let err = foreign.unsubscribe().await.unwrap_err();
    assert!(err.to_string().contains("AccessDenied"), "{err}");

    // Messages go only to the owner.
    let mut ma = a.messages().await;
    let mut mb = b.messages().await;
    post(&sa, b"for A").await;
    let (_, _, payload) = next(&mut ma, "A's message").await;
    assert_eq!(payload, b"for A");
    post(&sb, b"for B").await;
    let (_, _, payload) = next(&mut mb, "B's message").await;
    assert_eq!(payload, b"for B");
    // A never saw B's.
    assert!(tokio::time::timeout(
        std::time::Duration::from_millis(300),
        futures_util::StreamExt::next(&mut ma)
    )
    .await
    .is_err());
    // B's unsubscribe of "scope" is B's own.
    assert!(b.manager.unsubscribe("scope").await.unwrap());
    assert_eq!(a.manager.list_subscriptions().await.unwrap().len(), 1);
}

/// One rule for a subscription's capabilities (Endpoint, P256dh, Auth): the owner and the
/// user's tools. Another app, unsandboxed and ordinary (it owns a reverse-DNS name), sees
/// the details but not those, on any path; a tool (no app identity: this test process on
/// a nameless connection, as pushctl without --app-id) reads them all.
#[tokio::test(flavor = "multi_thread")]
async fn endpoint_and_keys_are_for_the_owner_and_the_users_tools_only() {
    let w = World::new().await;
    let a = w.bus.app("org.example.Owner").await;
    let sa = a.subscribe("scope").await;

    let other = w.bus.app("org.example.Nosy").await;
    let foreign = other.subscription(&sa.path).await;
    let denied = |r: zbus::Result<()>, what: &str| {
        let err = r.unwrap_err();
        assert_eq!(
            error_name(&err),
            "org.freedesktop.DBus.Error.AccessDenied",
            "{what}: {err}"
        );
    };
    denied(foreign.endpoint().await.map(drop), "Endpoint");
    denied(foreign.p256dh().await.map(drop), "P256dh");
    denied(foreign.auth().await.map(drop), "Auth");
    let err = foreign.get_key("auth").await.unwrap_err();
    assert_eq!(error_name(&err), "org.webpushd.Push1.Error.AccessDenied");
    let err = foreign.get_key("p256dh").await.unwrap_err();
    assert_eq!(error_name(&err), "org.webpushd.Push1.Error.AccessDenied");
    // GetAll gives the details and leaves the capabilities out.
    let props = properties_of(&other.conn, &sa.path).await;
    let iface = zbus::names::InterfaceName::try_from("org.webpushd.Push1.Subscription").unwrap();
    let all = props.get_all(iface.clone()).await.unwrap();
    assert!(
        all.contains_key("Scope") && all.contains_key("AppId"),
        "{all:?}"
    );
    for k in ["Endpoint", "P256dh", "Auth"] {
        assert!(!all.contains_key(k), "GetAll gave another app {k}");
    }
    assert_eq!(foreign.scope().await.unwrap(), "scope");

    // The user's tool reads everything, on every path.
    let tool = App::new(w.bus.connect().await).await;
    let p = tool.subscription(&sa.path).await;
    assert_eq!(p.endpoint().await.unwrap(), sa.endpoint);
    assert_eq!(p.p256dh().await.unwrap(), sa.p256dh);
    assert_eq!(p.auth().await.unwrap(), sa.auth);
    assert_eq!(p.get_key("auth").await.unwrap().into_vec(), sa.auth);
    let props = properties_of(&tool.conn, &sa.path).await;
    let all = props.get_all(iface).await.unwrap();
    for k in ["Endpoint", "P256dh", "Auth"] {
        assert!(all.contains_key(k), "GetAll kept {k} from the user's tool");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_offline_app_gets_its_messages_and_everything_survives_restart() {
    let mut w = World::new().await;
    let sub = {
        let app = w.bus.app("org.example.Mail").await;
        app.subscribe("inbox").await
    }; // the app leaves the bus
    let resp = post(&sub, b"while you were away").await;
    assert_eq!(resp.status, 201);
    eventually("the message to be stored and acknowledged", || async {
        w.server
            .stats()
            .acks
            .iter()
            .any(|a| a.2 == 100)
            .then_some(())
    })
    .await;

    w.daemon.restart(&w.bus).await;

    let app = w.bus.app("org.example.Mail").await;
    let same = app.subscribe("inbox").await;
    assert_eq!(same.path, sub.path);
    assert_eq!(same.endpoint, sub.endpoint);
    assert_eq!(same.p256dh, sub.p256dh);
    assert_eq!(same.auth, sub.auth);
    let pending = app.manager.fetch_messages("inbox").await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1.as_ref(), b"while you were away");
    let meta = &pending[0].2;
    assert!(meta.contains_key("received_at") && meta.contains_key("ttl"));
    app.manager
        .ack_message("inbox", &pending[0].0)
        .await
        .unwrap();
    assert!(app
        .manager
        .fetch_messages("inbox")
        .await
        .unwrap()
        .is_empty());
    let err = app
        .manager
        .ack_message("inbox", &pending[0].0)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
}

/// The ids of the messages pending for `app`'s `scope`, as FetchMessages lists them.
async fn pending_ids(app: &App, scope: &str) -> Vec<String> {
    app.manager
        .fetch_messages(scope)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.0)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ack_messages_forgets_several_at_once_and_names_those_not_pending() {
    let mut w = World::new().await;
    let sub = {
        let app = w.bus.app("org.example.Mail").await;
        app.subscribe("inbox").await
    }; // the app leaves the bus: its messages wait
    for text in ["one", "two", "three"] {
        assert_eq!(post(&sub, text.as_bytes()).await.status, 201);
    }
    eventually("three messages stored and acknowledged", || async {
        (w.server.stats().acks.iter().filter(|a| a.2 == 100).count() == 3).then_some(())
    })
    .await;
    let app = w.bus.app("org.example.Mail").await;
    let pending = app.manager.fetch_messages("inbox").await.unwrap();
    let id = |text: &str| {
        pending
            .iter()
            .find(|m| m.1.as_ref() == text.as_bytes())
            .map(|m| m.0.clone())
            .unwrap()
    };
    let (one, two, three) = (id("one"), id("two"), id("three"));
    let not_pending = app
        .manager
        .ack_messages("inbox", &[&one, &two, "no-such-message", &one])
        .await
        .unwrap();
    assert_eq!(not_pending, vec!["no-such-message".to_string()]);
    let left = pending_ids(&app, "inbox").await;
    assert_eq!(left, vec![three.clone()]);
    // Acknowledged again: not pending any more, and no error for it.
    let again = app.manager.ack_messages("inbox", &[&one]).await.unwrap();
    assert_eq!(again, vec![one.clone()]);
    assert!(app
        .manager
        .ack_messages("inbox", &[])
        .await
        .unwrap()
        .is_empty());

    // Bad calls change nothing.
    let too_many: Vec<String> = (0..1025).map(|i| format!("m{i}")).collect();
    let refs: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let err = app.manager.ack_messages("inbox", &refs).await.unwrap_err();
    assert_eq!(error_name(&err), "org.webpushd.Push1.Error.InvalidArgument");
    let err = app
        .manager
        .ack_messages("outbox", &[&three])
        .await
        .unwrap_err();
    assert_eq!(error_name(&err), "org.webpushd.Push1.Error.NotFound");
    let other = w.bus.app("org.example.Other").await;
    other.subscribe("inbox").await;
    let theirs = other
        .manager
        .ack_messages("inbox", &[&three])
        .await
        .unwrap();
    assert_eq!(
        theirs,
        vec![three.clone()],
        "another app's scope of the same name"
    );

    drop(app);
    w.daemon.restart(&w.bus).await;
    let app = w.bus.app("org.example.Mail").await;
    app.subscribe("inbox").await;
    let left = pending_ids(&app, "inbox").await;
    assert_eq!(
        left,
        vec![three],
        "the acknowledged ones stay forgotten after a restart"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn unsubscribe_makes_the_endpoint_gone() {
    let w = World::new().await;
    let app = w.bus.app("org.example.News").await;
    let sub = app.subscribe("feed").await;
    assert_eq!(post(&sub, b"one").await.status, 201);
    assert!(app.manager.unsubscribe("feed").await.unwrap());
    assert!(!app.manager.unsubscribe("feed").await.unwrap());
    eventually("the endpoint to answer 410", || async {
        (post(&sub, b"two").await.status == 410).then_some(())
    })
    .await;
    let err = app.manager.get_subscription("feed").await.unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_arguments_get_named_errors_and_change_nothing() {
    let w = World::new().await;
    let app = w.bus.app("org.example.Bad").await;
    let check = |r: zbus::Result<Sub>, name: &str| {
        let e = r.unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
    };
    check(
        app.subscribe_with("", HashMap::new()).await,
        "InvalidArgument",
    );
    check(
        app.subscribe_with(&"x".repeat(1024 * 1024), HashMap::new())
            .await,
        "InvalidArgument",
    );
    let opts = HashMap::from([("application_server_key", Value::from(vec![4u8; 65]))]);
    check(app.subscribe_with("s", opts).await, "InvalidArgument");
    let opts = HashMap::from([("application_server_key", Value::from("!!notbase64"))]);
    check(app.subscribe_with("s", opts).await, "InvalidArgument");
    let opts = HashMap::from([("surprise", Value::from(true))]);
    check(app.subscribe_with("s", opts).await, "InvalidArgument");
    let opts = HashMap::from([("system", Value::from("yes"))]);
    check(app.subscribe_with("s", opts).await, "InvalidArgument");
    let opts = HashMap::from([("bus_name", Value::from("org.someone.Else"))]);
    check(app.subscribe_with("s", opts).await, "AccessDenied");
    assert!(app.manager.list_subscriptions().await.unwrap().is_empty());

    // A VAPID key is kept, and a different one is a KeyMismatch.
    let k1 = webpushd::vapid::VapidKey::generate()
        .unwrap()
        .public_raw()
        .to_vec();
    let k2 = webpushd::vapid::VapidKey::generate()
        .unwrap()
        .public_raw()
        .to_vec();
    let opts = HashMap::from([("application_server_key", Value::from(k1.clone()))]);
    let sub = app.subscribe_with("keyed", opts).await.unwrap();
    assert!(sub.endpoint.contains("/wpush/v2/"), "{}", sub.endpoint);
    let b64 = webpushd::crypto::b64_encode(&k1);
    let opts = HashMap::from([("application_server_key", Value::from(b64.as_str()))]);
    assert_eq!(
        app.subscribe_with("keyed", opts).await.unwrap().path,
        sub.path
    );
    let opts = HashMap::from([("application_server_key", Value::from(k2))]);
    check(app.subscribe_with("keyed", opts).await, "KeyMismatch");
    let err = app.manager.fetch_messages("nope").await.unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
    let p = app.subscription(&sub.path).await;
    let err = p.get_key("private").await.unwrap_err();
    assert!(err.to_string().contains("InvalidArgument"), "{err}");
}
