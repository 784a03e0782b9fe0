//! The push-server connection, seen from outside: the real daemon on a private bus against
//! the project's push server with faults injected. What is asserted is what a user or an
//! app would notice — the `State` and `Uaid` properties, whether `Subscribe` answers, and
//! whether every message arrives exactly once — plus the server's own counters.
//!
//! Waits are bounded (`eventually`, `next`); the few fixed windows only check that
//! something does *not* happen and are kept short.

mod support;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use futures_util::StreamExt;
use support::*;
use tokio::time::Instant;
use webpushd::client::AdminProxy;
use webpushd::server::{Faults, ServerStats, Step};
use zbus::proxy::CacheProperties;

/// Short timers so faults resolve in about a second; pings stay far away (the server
/// closes a connection that pings twice within 45 s).
const FAST: &str =
    "[connection]\nrequest_timeout = \"1s\"\nretry_base = \"200ms\"\nretry_max = \"2s\"";
/// How long "nothing else happens" is watched for.
const QUIET: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------
// Helpers

/// An Admin proxy without a property cache: every read asks the daemon.
async fn admin(bus: &Bus) -> AdminProxy<'static> {
    let conn = bus.connect().await;
    AdminProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .unwrap()
}

async fn wait_state(admin: &AdminProxy<'_>, want: &str) {
    eventually(&format!("State to become {want:?}"), || async {
        (admin.state().await.ok()? == want).then_some(())
    })
    .await;
}

/// Wait until the server's counters satisfy `f`.
async fn wait_stats<T>(w: &World, what: &str, f: impl Fn(&ServerStats) -> Option<T>) -> T {
    eventually(what, || {
        let r = f(&w.server.stats());
        async move { r }
    })
    .await
}

fn faults(w: &World) -> Faults {
    w.server.faults().expect("fault injection is on")
}

/// The uaid the server put into an endpoint token (its first 16 bytes), as 32 hex digits.
fn uaid_in_endpoint(endpoint: &str) -> String {
    let token = endpoint.rsplit('/').next().unwrap();
    let raw = URL_SAFE_NO_PAD.decode(token).unwrap();
    uuid::Uuid::from_slice(&raw[..16])
        .unwrap()
        .simple()
        .to_string()
}

/// The push's version (message id) from the POST's `Location`.
fn version_of(resp: &webpushd::appserver::SendResponse) -> String {
    let loc = resp.location.as_deref().expect("a Location header");
    loc.rsplit('/').next().unwrap().to_string()
}

/// The D-Bus error name of a failed call.
fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => format!("not a method error: {other}"),
    }
}

/// Wait until `scope` has a pending message and the server holds none; return the payloads.
async fn settled_messages(w: &World, app: &App, scope: &str) -> Vec<Vec<u8>> {
    eventually(
        "the message to be stored by the daemon and gone from the server",
        || async {
            let pending = app.manager.fetch_messages(scope).await.ok()?;
            (!pending.is_empty() && w.server.stats().stored_messages == 0).then_some(())
        },
    )
    .await;
    app.manager
        .fetch_messages(scope)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.1.into_vec())
        .collect()
}

/// Assert no further item arrives on `s` within `QUIET`.
async fn assert_quiet<S: futures_util::Stream + Unpin>(s: &mut S, what: &str)
where
    S::Item: std::fmt::Debug,
{
    if let Ok(Some(item)) = tokio::time::timeout(QUIET, s.next()).await {
        panic!("unexpected {what}: {item:?}");
    }
}

/// Acks the server recorded for one version, as codes.
fn ack_codes(stats: &ServerStats, version: &str) -> Vec<u16> {
    stats
        .acks
        .iter()
        .filter(|a| a.1 == version)
        .map(|a| a.2)
        .collect()
}

/// CPU time (user + system) the process has used, from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

// ---------------------------------------------------------------------------------------
// 1. First hello and the UAID

#[tokio::test(flavor = "multi_thread")]
async fn first_hello_gets_a_uaid_that_is_kept_across_a_restart() {
    let mut w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    assert_eq!(w.server.stats().hellos, 1);

    let app = w.bus.app("org.example.First").await;
    let sub = app.subscribe("inbox").await;
    let assigned = uaid_in_endpoint(&sub.endpoint);
    assert_eq!(assigned.len(), 32);
    eventually("Admin.Uaid to be the server's", || async {
        (admin.uaid().await.ok()? == assigned).then_some(())
    })
    .await;

    w.daemon.restart(&w.bus).await;
    let admin = self::admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    wait_stats(&w, "the second hello", |s| (s.hellos == 2).then_some(())).await;
    // The hello carried the stored uaid: the server bound the new connection to it
    // (a hello without it would have been given a fresh one).
    assert!(
        w.server.is_connected(&assigned),
        "hello did not carry the uaid"
    );
    assert_eq!(admin.uaid().await.unwrap(), assigned);

    let resp = post(&sub, b"after restart").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        settled_messages(&w, &app, "inbox").await,
        vec![b"after restart".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------
// 2. Server reset

#[tokio::test(flavor = "multi_thread")]
async fn a_new_uaid_from_the_server_re_registers_every_channel_and_tells_each_app() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let a = w.bus.app("org.example.A").await;
    let b = w.bus.app("org.example.B").await;
    let old = vec![
        (&a, "a1", a.subscribe("a1").await),
        (&a, "a2", a.subscribe("a2").await),
        (&b, "b1", b.subscribe("b1").await),
    ];
    let old_uaid = admin.uaid().await.unwrap();
    let mut changed_a = a.manager.receive_subscription_changed().await.unwrap();
    let mut changed_b = b.manager.receive_subscription_changed().await.unwrap();
    let registers = w.server.stats().registers;

    let f = faults(&w);
    f.force_new_uaid();
    admin.reconnect().await.unwrap();

    let mut seen_a = Vec::new();
    for _ in 0..2 {
        let sig = next(&mut changed_a, "A's SubscriptionChanged").await;
        let args = sig.args().unwrap();
        assert_eq!(args.reason(), &"server-reset");
        seen_a.push(args.scope().to_string());
    }
    seen_a.sort();
    assert_eq!(seen_a, ["a1", "a2"]);
    let sig = next(&mut changed_b, "B's SubscriptionChanged").await;
    let args = sig.args().unwrap();
    assert_eq!((args.scope(), args.reason()), (&"b1", &"server-reset"));
    assert_quiet(&mut changed_a, "extra SubscriptionChanged for A").await;

    assert_eq!(w.server.stats().registers, registers + 3);
    let new_uaid = admin.uaid().await.unwrap();
    assert_ne!(new_uaid, old_uaid);

    for (app, scope, before) in old {
        let now = app.sub(before.path.clone()).await;
        assert_ne!(now.endpoint, before.endpoint, "{scope}: endpoint unchanged");
        assert_eq!(uaid_in_endpoint(&now.endpoint), new_uaid);
        // The keys stay: only the endpoint changed.
        assert_eq!(
            (now.p256dh.clone(), now.auth.clone()),
            (before.p256dh.clone(), before.auth.clone())
        );

        let gone = post(&before, b"to the old endpoint").await;
        assert!(
            matches!(gone.status, 404 | 410),
            "{scope}: old endpoint gave {}",
            gone.status
        );
        let resp = post(&now, scope.as_bytes()).await;
        assert_eq!(resp.status, 201, "{}", resp.body);
        assert_eq!(
            settled_messages(&w, app, scope).await,
            vec![scope.as_bytes().to_vec()]
        );
    }
}

/// After a server reset the daemon registers every channel again; a server that refuses
/// one (409) has lost it for good: the subscription expires with reason `server`, its app
/// hears `Expired`, and nothing is registered for it any more.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_re_registration_after_a_reset_expires_the_subscription_for_the_server() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Reset").await;
    let sub = app.subscribe("s").await;
    let mut expired = app.manager.receive_expired().await.unwrap();
    let registers = w.server.stats().registers;

    let f = faults(&w);
    f.set_register_status(Some(409));
    f.force_new_uaid();
    admin.reconnect().await.unwrap();

    let sig = next(&mut expired, "Expired").await;
    let args = sig.args().unwrap();
    assert_eq!((args.scope(), args.reason()), (&"s", &"server"));
    assert_eq!(args.subscription().as_str(), sub.path.as_str());
    let p = app.subscription(&sub.path).await;
    assert!(p.expired().await.unwrap());
    assert_eq!(w.server.stats().registers, registers + 1);

    // Expired for good: the next hello (the server accepts registers again) does not
    // try it again, and its old endpoint is gone with the old UAID.
    f.set_register_status(None);
    admin.reconnect().await.unwrap();
    wait_stats(&w, "the next hello", |s| (s.hellos >= 3).then_some(())).await;
    wait_state(&admin, "connected").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(w.server.stats().registers, registers + 1);
    assert!(p.expired().await.unwrap());
    assert!(matches!(post(&sub, b"x").await.status, 404 | 410));
}

/// A server error (5xx) while re-registering is the server's trouble, not a refusal: the
/// subscription is kept and renewed at the next hello.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_error_while_re_registering_keeps_the_subscription_for_the_next_hello() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Reset5xx").await;
    let sub = app.subscribe("s").await;
    let mut changed = app.manager.receive_subscription_changed().await.unwrap();
    let registers = w.server.stats().registers;

    let f = faults(&w);
    f.set_register_status(Some(500));
    f.force_new_uaid();
    admin.reconnect().await.unwrap();
    wait_stats(&w, "the refused re-registration", |s| {
        (s.registers > registers).then_some(())
    })
    .await;
    tokio::time::sleep(QUIET).await;
    let p = app.subscription(&sub.path).await;
    assert!(!p.expired().await.unwrap(), "a 5xx must not expire it");

    f.set_register_status(None);
    admin.reconnect().await.unwrap();
    let sig = next(&mut changed, "SubscriptionChanged").await;
    assert_eq!(sig.args().unwrap().reason(), &"server-reset");
    let renewed = app.sub(sub.path.clone()).await;
    assert_ne!(renewed.endpoint, sub.endpoint);
    assert!(!p.expired().await.unwrap());
    assert_eq!(post(&renewed, b"after the 5xx").await.status, 201);
}

// ---------------------------------------------------------------------------------------
// 3. The connection cut at each step of the protocol

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_at_hello_loses_no_stored_message() {
    let mut w = World::with_config(FAST).await;
    let app = w.bus.app("org.example.Hello").await;
    let sub = app.subscribe("s").await;
    let uaid = uaid_in_endpoint(&sub.endpoint);

    // Offline: the server stores the message.
    w.daemon.stop();
    let resp = post(&sub, b"kept by the server").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(w.server.stats().stored_messages, 1);

    let f = faults(&w);
    f.drop_connection_at(Step::Hello);
    let attempts = f.connection_attempts().len();
    let hellos = w.server.stats().hellos;
    w.daemon.restart(&w.bus).await;

    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"kept by the server".to_vec()]
    );
    // One hello was cut, the next one answered, under the same uaid.
    assert!(f.connection_attempts().len() >= attempts + 2);
    assert_eq!(w.server.stats().hellos, hellos + 1);
    assert!(w.server.is_connected(&uaid));
    assert_eq!(ack_codes(&w.server.stats(), &version_of(&resp)), [100]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_at_register_still_completes_the_subscribe() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Register").await;
    let f = faults(&w);
    f.drop_connection_at(Step::Register);
    let (hellos, registers) = (w.server.stats().hellos, w.server.stats().registers);

    // The code re-sends a pending register after the next hello (rather than failing it
    // with Unavailable), so Subscribe succeeds, within the request timeout.
    let started = Instant::now();
    let sub = app.subscribe_with("s", Default::default()).await;
    let elapsed = started.elapsed();
    let sub = sub.unwrap_or_else(|e| panic!("Subscribe failed ({}): {e}", error_name(&e)));
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    let stats = w.server.stats();
    assert_eq!(stats.hellos, hellos + 1, "exactly one reconnect");
    assert_eq!(
        stats.registers,
        registers + 1,
        "the cut register was not applied, the re-sent one was"
    );

    let resp = post(&sub, b"registered").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"registered".to_vec()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_after_a_notification_delivers_it_exactly_once() {
    let w = World::with_config(FAST).await;
    let app = w.bus.app("org.example.Notify").await;
    let sub = app.subscribe("s").await;
    let mut messages = app.messages().await;
    let hellos = w.server.stats().hellos;

    faults(&w).drop_connection_at(Step::Notification);
    let resp = post(&sub, b"cut after sending").await;
    assert_eq!(resp.status, 201, "{}", resp.body);

    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"cut after sending".to_vec()]
    );
    let (_, _, payload) = next(&mut messages, "the Message signal").await;
    assert_eq!(payload, b"cut after sending");
    assert_quiet(&mut messages, "second Message signal").await;
    let stats = w.server.stats();
    assert!(stats.hellos > hellos, "the daemon reconnected");
    assert!(stats.notifications_sent >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_at_ack_redelivers_and_the_app_sees_one_copy() {
    let w = World::with_config(FAST).await;
    let app = w.bus.app("org.example.Ack").await;
    let sub = app.subscribe("s").await;
    let mut messages = app.messages().await;

    faults(&w).drop_connection_at(Step::Ack);
    let resp = post(&sub, b"acked twice").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    let version = version_of(&resp);

    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"acked twice".to_vec()]
    );
    let (_, _, payload) = next(&mut messages, "the Message signal").await;
    assert_eq!(payload, b"acked twice");
    assert_quiet(&mut messages, "second Message signal").await;
    // The cut ack never reached the server's books; the redelivered copy was recognised
    // as a duplicate (102) and that ack removed it.
    let stats = w.server.stats();
    assert_eq!(ack_codes(&stats, &version), [102]);
    assert!(stats.notifications_sent >= 2);
}

// ---------------------------------------------------------------------------------------
// 4. Replies that never come

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_register_fails_unavailable_and_the_connection_is_renewed() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Omit").await;
    let f = faults(&w);
    let hellos = w.server.stats().hellos;

    f.set_omit_replies(true);
    let started = Instant::now();
    let err = app
        .subscribe_with("s", Default::default())
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(
        error_name(&err),
        "org.webpushd.Push1.Error.Unavailable",
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "failed after {elapsed:?}, request_timeout is 1s"
    );
    wait_stats(&w, "a new hello after the timeout", |s| {
        (s.hellos > hellos).then_some(())
    })
    .await;
    wait_state(&admin, "connected").await;

    f.set_omit_replies(false);
    let sub = app.subscribe("s").await;
    let resp = post(&sub, b"answered again").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"answered again".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------
// 5. The server refuses a register

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_register_fails_with_a_named_error_and_the_connection_stays() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Refused").await;
    let f = faults(&w);
    let hellos = w.server.stats().hellos;

    for status in [409u16, 500] {
        f.set_register_status(Some(status));
        let err = app
            .subscribe_with("s", Default::default())
            .await
            .unwrap_err();
        assert_eq!(error_name(&err), "org.webpushd.Push1.Error.Failed", "{err}");
        assert!(err.to_string().contains(&status.to_string()), "{err}");
        assert_eq!(admin.state().await.unwrap(), "connected");
    }
    assert!(app.manager.list_subscriptions().await.unwrap().is_empty());
    assert_eq!(
        w.server.stats().hellos,
        hellos,
        "no reconnect for a refusal"
    );

    f.set_register_status(None);
    app.subscribe("s").await;
    assert_eq!(w.server.stats().hellos, hellos);
}

// ---------------------------------------------------------------------------------------
// 6. Garbage from the server

#[tokio::test(flavor = "multi_thread")]
async fn malformed_server_messages_are_ignored_and_unknown_channels_unregistered() {
    let w = World::with_config(FAST).await;
    let admin = admin(&w.bus).await;
    let app = w.bus.app("org.example.Garbage").await;
    let sub = app.subscribe("s").await;
    let uaid = admin.uaid().await.unwrap();
    let hellos = w.server.stats().hellos;
    let stray = "0b0e0a0d-1111-4222-8333-444455556666";
    let f = faults(&w);

    for bad in [
        "{not json",
        "[1,2,3]",
        "\"a string\"",
        "42",
        r#"{"foo":"bar"}"#,
        r#"{"messageType":42}"#,
        r#"{"messageType":"surprise","channelID":"x"}"#,
        r#"{"messageType":"register","channelID":123,"status":"200"}"#,
        r#"{"messageType":"register","channelID":"not-a-uuid","status":200,"pushEndpoint":"http://127.0.0.1:9/wpush/v1/x"}"#,
        // A well-formed reply to a register nobody sent.
        &format!(
            r#"{{"messageType":"register","channelID":"{stray}","status":200,"pushEndpoint":"http://127.0.0.1:9/wpush/v1/x"}}"#
        ),
        r#"{"messageType":"notification","channelID":"0b0e0a0d-1111-4222-8333-444455556666","version":7}"#,
        r#"{"messageType":"notification","channelID":"0b0e0a0d-1111-4222-8333-444455556666","version":"v","data":{}}"#,
        r#"{"messageType":"notification","version":"v"}"#,
        r#"{"messageType":"broadcast","broadcasts":[1]}"#,
        r#"{"messageType":"unregister","channelID":"0b0e0a0d-1111-4222-8333-444455556666","status":200}"#,
        // A second hello, with another uaid: ignored, not adopted.
        r#"{"messageType":"hello","uaid":"ffffffffffffffffffffffffffffffff","status":200,"use_webpush":true}"#,
        r#"{"messageType":"hello","uaid":"","status":200}"#,
        // Finally a valid notification (type in another case) for a channel we do not have.
        r#"{"messageType":"NOTIFICATION","channelID":"0b0e0a0d-1111-4222-8333-444455556666","version":"stray-1"}"#,
    ] {
        f.send_raw(bad);
    }

    let stats = wait_stats(
        &w,
        "the stray notification to be acked and unregistered",
        |s| {
            let acked = s.acks.iter().any(|a| a.0 == stray && a.1 == "stray-1");
            let unreg = s.unregisters.iter().any(|u| u.0 == stray);
            (acked && unreg).then(|| s.clone())
        },
    )
    .await;
    assert_eq!(ack_codes(&stats, "stray-1"), [102]);
    assert_eq!(
        stats
            .unregisters
            .iter()
            .filter(|u| u.0 == stray)
            .map(|u| u.1)
            .collect::<Vec<_>>(),
        [202]
    );
    // Still the same connection and the same uaid.
    assert_eq!(stats.hellos, hellos, "the daemon reconnected");
    assert_eq!(admin.state().await.unwrap(), "connected");
    assert_eq!(admin.uaid().await.unwrap(), uaid);

    let resp = post(&sub, b"still fine").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"still fine".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------
// 7. Close code 4774

#[tokio::test(flavor = "multi_thread")]
async fn close_4774_stops_reconnects_until_a_request_or_reconnect() {
    let w = World::with_config(
        "[connection]\nrequest_timeout = \"1s\"\nretry_base = \"100ms\"\nretry_max = \"400ms\"",
    )
    .await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let app = w.bus.app("org.example.Stop").await;
    let f = faults(&w);

    // A new Subscribe lifts the hold.
    f.close_all(4774, "go away");
    wait_state(&admin, "offline").await;
    let attempts = f.connection_attempts().len();
    // Ten retry_base periods with nobody asking: no attempt (absence, so a fixed window).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        f.connection_attempts().len(),
        attempts,
        "reconnected after 4774"
    );
    assert_eq!(admin.state().await.unwrap(), "offline");
    let sub = app.subscribe("s").await;
    assert_eq!(admin.state().await.unwrap(), "connected");
    assert_eq!(f.connection_attempts().len(), attempts + 1);

    // So does Admin.Reconnect.
    f.close_all(4774, "go away");
    wait_state(&admin, "offline").await;
    let attempts = f.connection_attempts().len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.connection_attempts().len(),
        attempts,
        "reconnected after 4774"
    );
    admin.reconnect().await.unwrap();
    wait_state(&admin, "connected").await;
    assert_eq!(f.connection_attempts().len(), attempts + 1);

    let resp = post(&sub, b"back").await;
    assert_eq!(resp.status, 201, "{}", resp.body);
    assert_eq!(
        settled_messages(&w, &app, "s").await,
        vec![b"back".to_vec()]
    );
}

// ---------------------------------------------------------------------------------------
// 8. Back-off

#[tokio::test(flavor = "multi_thread")]
async fn reconnects_back_off_doubling_to_the_cap_and_reset_once_connected() {
    let w = World::with_config(
        "[connection]\nrequest_timeout = \"1s\"\nretry_base = \"250ms\"\nretry_max = \"1s\"",
    )
    .await;
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;
    let f = faults(&w);
    let ms = |d: Duration| d.as_millis() as u64;

    f.set_refuse_connections(true);
    let first = f.connection_attempts().len();
    admin.reconnect().await.unwrap();
    wait_state(&admin, "backoff").await;
    let status = admin.status().await.unwrap();
    let next_retry = i64::try_from(status["next_retry"].clone()).unwrap();
    assert!(next_retry > 0, "Status has no next_retry: {status:?}");
    // The reconnect itself, one retry at once (the connection had been up), then
    // 250, 500, 1000 (cap), 1000 ms, each ±20 %.
    let attempts = eventually("six refused attempts", || {
        let a = f.connection_attempts();
        async move { (a.len() >= first + 6).then_some(a) }
    })
    .await;
    let gaps: Vec<u64> = attempts[first..first + 6]
        .windows(2)
        .map(|p| ms(p[1] - p[0]))
        .collect();
    assert!(gaps[0] < 150, "first retry not immediate: {gaps:?}");
    for (gap, expected) in gaps[1..].iter().zip([250u64, 500, 1000, 1000]) {
        let (lo, hi) = (expected * 8 / 10, (expected * 12 / 10).min(1000) + 150);
        assert!(
            (lo..=hi).contains(gap),
            "gap {gap} ms, expected {expected} ±20 %: {gaps:?}"
        );
    }

    f.set_refuse_connections(false);
    wait_state(&admin, "connected").await;
    assert_eq!(w.server.stats().connected_clients, 1);

    // Connected again: the failure count is reset. The next loss retries at once, and
    // if that fails the one after waits about retry_base, not the cap.
    f.set_refuse_connections(true);
    let first = f.connection_attempts().len();
    let lost = Instant::now();
    f.close_all(1011, "x");
    let attempts = eventually("two attempts after the loss", || {
        let a = f.connection_attempts();
        async move { (a.len() >= first + 2).then_some(a) }
    })
    .await;
    assert!(
        ms(attempts[first] - lost) < 150,
        "retry after a loss took {} ms",
        ms(attempts[first] - lost)
    );
    let gap = ms(attempts[first + 1] - attempts[first]);
    assert!(
        (200..=450).contains(&gap),
        "second retry after {gap} ms, expected ~250"
    );
    f.set_refuse_connections(false);
    wait_state(&admin, "connected").await;
}

// ---------------------------------------------------------------------------------------
// 9. Ping

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_ping_reconnects_without_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::start();
    let server = push_server_with(dir.path(), |o| {
        o.client_ping_min_interval = Duration::from_millis(100)
    })
    .await;
    // A ping timeout longer than the ping interval.
    let config = Daemon::config_for(
        &server.ws_url(),
        "[connection]\nping_interval = \"1s\"\nrequest_timeout = \"2s\"\nretry_base = \"200ms\"",
    );
    let daemon = Daemon::start(&bus, dir.path(), &config).await;
    let w = World {
        bus,
        server,
        daemon,
        dir,
    };
    let admin = admin(&w.bus).await;
    wait_state(&admin, "connected").await;

    // Answered pings keep the connection. The first is an application ping; autopush
    // closes a connection that sends another within 45 s, so the next ones are
    // WebSocket ping frames.
    wait_stats(&w, "three pings", |s| (s.ws_pings >= 2).then_some(())).await;
    let stats = w.server.stats();
    assert_eq!((stats.pings, stats.hellos), (1, 1));

    let f = faults(&w);
    f.set_ignore_pings(true);
    let cpu = cpu_time(w.daemon.pid());
    let started = Instant::now();
    wait_stats(&w, "a reconnect after the unanswered ping", |s| {
        (s.hellos >= 2).then_some(())
    })
    .await;
    let elapsed = started.elapsed();
    let used = cpu_time(w.daemon.pid()) - cpu;
    // The ping goes out at most ping_interval after the last frame, and gets
    // request_timeout for an answer.
    assert!(
        elapsed < Duration::from_millis(3000 + 700),
        "reconnected after {elapsed:?}"
    );
    assert!(
        elapsed > Duration::from_millis(1500),
        "reconnected after {elapsed:?}, before the ping could time out"
    );
    // Waiting for the answer is a sleep, not a busy loop.
    assert!(
        used < Duration::from_millis(300),
        "the daemon used {used:?} of CPU in {elapsed:?} waiting for a pong"
    );
    f.set_ignore_pings(false);
    wait_state(&admin, "connected").await;
}

// ---------------------------------------------------------------------------------------
// 10. A crash around the ack

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_right_after_a_push_loses_nothing_and_duplicates_nothing() {
    let mut w = World::with_config(FAST).await;
    let app = w.bus.app("org.example.Crash").await;
    let sub = app.subscribe("s").await;

    // Kill at a few different points after the server has handed the message over.
    for (i, delay) in [0u64, 2, 10].into_iter().enumerate() {
        let text = format!("crash {i}");
        let resp = post(&sub, text.as_bytes()).await;
        assert_eq!(resp.status, 201, "{}", resp.body);
        let version = version_of(&resp);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        w.daemon.kill();
        w.daemon.restart(&w.bus).await;

        let got = settled_messages(&w, &app, "s").await;
        assert_eq!(got, vec![text.as_bytes().to_vec()], "round {i}");
        let pending = app.manager.fetch_messages("s").await.unwrap();
        app.manager.ack_message("s", &pending[0].0).await.unwrap();

        // Acked 100 once (stored) or, if the crash fell between commit and ack, only as
        // a duplicate (102) after redelivery; never stored twice.
        let codes = ack_codes(&w.server.stats(), &version);
        assert!(!codes.is_empty(), "round {i}: never acknowledged");
        assert!(
            codes.iter().all(|c| *c == 100 || *c == 102),
            "round {i}: {codes:?}"
        );
        assert!(
            codes.iter().filter(|c| **c == 100).count() <= 1,
            "round {i}: {codes:?}"
        );
        assert_eq!(w.server.stats().stored_messages, 0);
    }
}

// ---------------------------------------------------------------------------------------
// 11. State changes are signalled

#[tokio::test(flavor = "multi_thread")]
async fn state_changes_are_signalled_through_properties_changed() {
    let w = World::with_config(FAST).await;
    // A caching proxy fills its cache with GetAll and drops PropertiesChanged signals that
    // arrive before the reply, even when the reply holds the older value; so it is made
    // once the state is settled (checked uncached), and its stream's first item, the
    // cached value, is taken before anything changes.
    wait_state(&admin(&w.bus).await, "connected").await;
    let conn = w.bus.connect().await;
    let admin = AdminProxy::new(&conn).await.unwrap();
    let mut changes = admin.receive_state_changed().await;
    let first = next(&mut changes, "the cached State").await;
    let mut seen = vec![first.get().await.unwrap()];
    assert_eq!(seen, ["connected"]);

    // Slow hello replies keep "connecting" visible long enough to be seen.
    let f = faults(&w);
    f.set_reply_delay(Some(Duration::from_millis(300)));
    admin.reconnect().await.unwrap();

    // Every change until the next "connected"; the property stream may merge repeats.
    loop {
        let change = next(&mut changes, "a State change").await;
        let value = change.get().await.unwrap();
        if seen.last() != Some(&value) {
            seen.push(value.clone());
        }
        if value == "connected" {
            break;
        }
    }
    assert_eq!(seen, ["connected", "connecting", "connected"]);
    assert_eq!(w.server.stats().hellos, 2);
}
