//! The burst plan on fixtures: a fake `Facts`, plain notifications, no tokio and no bus.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::*;
use crate::crypto::{CryptoError, SubscriptionKeys};
use crate::ids::Scope;

const CH_A: &str = "9d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";
const CH_B: &str = "0d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";
const CH_UNKNOWN: &str = "1d4a2c3e-1b6f-4f0a-8c2d-5e6f7a8b9c0d";
const CLOCK: Clock = Clock {
    now_ms: 1_000,
    ttl: 60,
};

#[derive(Default)]
struct Fake {
    subs: HashMap<ChannelId, SubscriptionRecord>,
    seen: HashSet<(ChannelId, String)>,
    acked_unstored: HashSet<(ChannelId, String)>,
    present: HashSet<AppId>,
    may_show: bool,
    shows_left: u32,
}

impl Facts for Fake {
    fn subscription(&self, channel: &ChannelId) -> Option<&SubscriptionRecord> {
        self.subs.get(channel)
    }
    fn seen(&self, channel: &ChannelId, version: &str) -> bool {
        self.seen.contains(&(channel.clone(), version.to_string()))
    }
    fn take_acked_unstored(&mut self, channel: &ChannelId, version: &str) -> bool {
        self.acked_unstored
            .remove(&(channel.clone(), version.to_string()))
    }
    fn app_present(&self, app: &AppId) -> bool {
        self.present.contains(app)
    }
    fn may_show(&self, _: &AppId) -> bool {
        self.may_show
    }
    fn take_show(&mut self, _: &AppId) -> bool {
        let ok = self.shows_left > 0;
        self.shows_left = self.shows_left.saturating_sub(1);
        ok
    }
}

fn ch(s: &str) -> ChannelId {
    ChannelId::parse(s).unwrap()
}

fn app() -> AppId {
    AppId::parse("org.example.App").unwrap()
}

fn record(id: i64, channel: &str, kind: Kind, quota: i32) -> SubscriptionRecord {
    SubscriptionRecord {
        id,
        channel_id: ch(channel),
        app_id: app(),
        scope: Scope::parse("s").unwrap(),
        endpoint: "https://push.example/x".into(),
        keys: SubscriptionKeys::generate().unwrap(),
        app_server_key: None,
        push_count: 3,
        last_push: 5,
        quota,
        expired: false,
        expired_reason: String::new(),
        system: false,
        bus_name: None,
        created: 1,
        kind,
        description: String::new(),
        sandbox: None,
    }
}

fn fake(recs: Vec<SubscriptionRecord>) -> Fake {
    Fake {
        subs: recs
            .into_iter()
            .map(|r| (r.channel_id.clone(), r))
            .collect(),
        ..Fake::default()
    }
}

fn note(channel: &str, version: &str) -> Notification {
    Notification {
        channel_id: ch(channel),
        version: version.into(),
        data: None,
        headers: BTreeMap::new(),
        ttl: None,
    }
}

fn ok(payload: &[u8]) -> Option<Decrypted> {
    Some(Ok(payload.to_vec()))
}

fn plan(facts: &mut Fake, batch: Vec<(Notification, Option<Decrypted>)>) -> BurstPlan {
    let (notes, dec) = batch.into_iter().unzip();
    plan_burst(notes, dec, facts, CLOCK)
}

fn acks(p: &BurstPlan) -> Vec<(String, Ack)> {
    p.acks.iter().map(|a| (a.version.clone(), a.ack)).collect()
}

const SHOWN: &[u8] =
    br#"{"web_push":8030,"notification":{"title":"Hi","navigate":"https://example.org/"}}"#;
const MUTABLE: &[u8] = br#"{"web_push":8030,"mutable":true,"notification":{"title":"Hi","navigate":"https://example.org/"}}"#;

#[test]
fn unknown_and_expired_channels_are_answered_102_and_unregistered() {
    let mut expired = record(2, CH_B, Kind::WebPush, 0);
    expired.expired = true;
    let mut f = fake(vec![expired]);
    let p = plan(
        &mut f,
        vec![
            (note(CH_UNKNOWN, "u"), ok(b"x")),
            (note(CH_B, "e"), ok(b"x")),
        ],
    );
    assert_eq!(
        acks(&p),
        [
            ("u".into(), Ack::NotDelivered),
            ("e".into(), Ack::NotDelivered)
        ]
    );
    assert_eq!(
        p.unregister,
        [
            (ch(CH_UNKNOWN), Unregister::Revoked),
            (ch(CH_B), Unregister::Quota)
        ]
    );
    assert!(p.items.is_empty() && p.planned.is_empty());
}

#[test]
fn copies_are_answered_or_skipped_and_never_recorded_twice() {
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 16)]);
    f.seen.insert((ch(CH_A), "old".into()));
    f.acked_unstored.insert((ch(CH_A), "taken".into()));
    let p = plan(
        &mut f,
        vec![
            (note(CH_A, "old"), ok(b"x")),
            (note(CH_A, "new"), ok(b"x")),
            (note(CH_A, "new"), ok(b"x")),
            (note(CH_A, "taken"), ok(b"x")),
            (note(CH_A, "taken"), ok(b"x")),
        ],
    );
    // A copy seen before: 102. The app acked before it was stored: 100, once; its second
    // copy in the burst is skipped like any second copy.
    assert_eq!(
        acks(&p),
        [
            ("old".into(), Ack::NotDelivered),
            ("taken".into(), Ack::Delivered)
        ]
    );
    let versions: Vec<&str> = p.items.iter().map(|i| i.version.as_str()).collect();
    assert_eq!(versions, ["new"]);
    assert!(f.acked_unstored.is_empty());
}

#[test]
fn a_notification_without_a_usable_result_is_left_unacknowledged() {
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 16)]);
    let p = plan(&mut f, vec![(note(CH_A, "v"), None)]);
    assert!(p.acks.is_empty() && p.items.is_empty());
}

#[test]
fn undecryptable_is_101_for_web_push_and_102_for_unified_push() {
    let mut f = fake(vec![
        record(1, CH_A, Kind::WebPush, 16),
        record(2, CH_B, Kind::UnifiedPush(2), 16),
    ]);
    let bad = || Some(Err(CryptoError::Decrypt("bad".into())));
    let p = plan(
        &mut f,
        vec![(note(CH_A, "a"), bad()), (note(CH_B, "b"), bad())],
    );
    let planned: Vec<Ack> = p.planned.iter().map(|p| p.ack).collect();
    assert_eq!(planned, [Ack::Undecryptable, Ack::NotDelivered]);
    assert!(p.items.iter().all(|i| i.message.is_none()));
    // Still counted: the push happened.
    assert_eq!(p.items[0].counters.unwrap().push_count, 4);
}

#[test]
fn background_messages_use_the_quota_until_it_expires() {
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 2)]);
    let p = plan(
        &mut f,
        vec![
            (note(CH_A, "1"), ok(b"x")),
            (note(CH_A, "2"), ok(b"x")),
            (note(CH_A, "3"), ok(b"x")),
        ],
    );
    let quotas: Vec<i32> = p.items.iter().map(|i| i.counters.unwrap().quota).collect();
    assert_eq!(quotas, [1, 0, 0]);
    let expires: Vec<bool> = p.planned.iter().map(|p| p.expires_now).collect();
    assert_eq!(expires, [false, true, false]);
    let c = p.items[2].counters.unwrap();
    assert_eq!(
        (c.push_count, c.last_push, c.expired),
        (6, CLOCK.now_ms, true)
    );
    let m = p.items[0].message.as_ref().unwrap();
    assert_eq!(
        (m.ttl, m.received, m.urgency.as_str()),
        (60, 1_000, "normal")
    );
    assert_eq!(m.id, message_id(&ch(CH_A), "1"));
    assert!(p.planned.iter().all(|p| !p.early));
}

#[test]
fn a_running_app_costs_no_quota_and_hears_of_ordinary_messages_early() {
    let mut f = fake(vec![
        record(1, CH_A, Kind::WebPush, 2),
        record(2, CH_B, Kind::UnifiedPush(1), 2),
    ]);
    f.present.insert(app());
    let p = plan(
        &mut f,
        vec![(note(CH_A, "1"), ok(b"x")), (note(CH_B, "2"), ok(b"x"))],
    );
    assert_eq!(p.items[0].counters.unwrap().quota, 2);
    // UnifiedPush apps are called, never signalled.
    let early: Vec<bool> = p.planned.iter().map(|p| p.early).collect();
    assert_eq!(early, [true, false]);
}

#[test]
fn declarative_messages_are_shown_without_quota_within_the_rate_limit() {
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 5)]);
    f.may_show = true;
    f.shows_left = 1;
    let p = plan(
        &mut f,
        vec![(note(CH_A, "1"), ok(SHOWN)), (note(CH_A, "2"), ok(SHOWN))],
    );
    assert!(matches!(p.planned[0].presentation, Presentation::Show(_)));
    assert_eq!(p.items[0].counters.unwrap().quota, 5);
    // Over the limit: an ordinary message, which waits for the app and costs quota.
    assert_eq!(p.planned[1].presentation, Presentation::Ordinary);
    assert_eq!(p.items[1].counters.unwrap().quota, 4);
}

#[test]
fn mutable_messages_go_to_an_app_that_can_take_them() {
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 5)]);
    f.may_show = true;
    f.shows_left = 10;
    // Not running and not activatable: shown at once.
    let p = plan(&mut f, vec![(note(CH_A, "1"), ok(MUTABLE))]);
    assert!(matches!(p.planned[0].presentation, Presentation::Show(_)));
    // Running: offered to it first, and not signalled early (it is not ordinary).
    f.present.insert(app());
    let p = plan(&mut f, vec![(note(CH_A, "2"), ok(MUTABLE))]);
    assert!(matches!(
        p.planned[0].presentation,
        Presentation::Mutable(_)
    ));
    assert!(!p.planned[0].early);
    // Notifications off: an ordinary message.
    f.may_show = false;
    let p = plan(&mut f, vec![(note(CH_A, "3"), ok(SHOWN))]);
    assert_eq!(p.planned[0].presentation, Presentation::Ordinary);
}

#[test]
fn what_a_unified_push_app_cannot_take_is_101_if_encrypted_for_headers_else_102() {
    use super::super::decrypt::failed_ack;
    let up = Kind::UnifiedPush(2);
    let aesgcm = CryptoError::UnknownEncoding("aesgcm".into());
    let empty = CryptoError::Decrypt("a UnifiedPush message must be 1-4096 bytes, not 0".into());
    assert_eq!(failed_ack(up, &aesgcm), Ack::Undecryptable);
    assert_eq!(failed_ack(up, &empty), Ack::NotDelivered);
    assert_eq!(failed_ack(Kind::WebPush, &empty), Ack::Undecryptable);
}

#[test]
fn seen_lasts_as_long_as_the_server_could_send_the_message() {
    let day_ms = 24 * 3600 * 1000;
    // autopush does not say the TTL: the longest it keeps a message.
    assert_eq!(
        seen_until(&note(CH_A, "a"), CLOCK),
        CLOCK.now_ms + 30 * day_ms
    );
    let mut n = note(CH_A, "a");
    n.ttl = Some(60);
    assert_eq!(seen_until(&n, CLOCK), CLOCK.now_ms + 60_000);
    n.ttl = Some(u32::MAX);
    assert_eq!(seen_until(&n, CLOCK), CLOCK.now_ms + 30 * day_ms);
    // The plan gives each recorded notification its own.
    let mut f = fake(vec![record(1, CH_A, Kind::WebPush, 16)]);
    let p = plan(&mut f, vec![(n, ok(b"x"))]);
    assert_eq!(p.items[0].seen_until, CLOCK.now_ms + 30 * day_ms);
}
