//! The plan of a burst: for each notification the server sent, what to do with it —
//! acknowledge it at once (a copy, an unknown or expired channel), skip it (a second copy
//! in the burst, a payload that failed for a reason the server should retry), or record
//! it, with its new counters, its ack code, how it is presented (an ordinary message, a
//! notification the daemon shows, a mutable one offered to the app first) and whether its
//! running app is told before the commit.
//!
//! Pure: what it needs to know of the daemon's state comes through `Facts`, and nothing
//! is written, sent or emitted here (`ingest` does that with the plan). No tokio, no bus.

use std::collections::{HashMap, HashSet};

use tracing::{debug, info, warn};

use super::declarative::{self, Declarative};
use super::decrypt::{failed_ack, Decrypted};
use super::{Kind, StoredMessage, SubscriptionRecord};
use crate::connection::{Ack, Acknowledgement, Notification, Unregister};
use crate::ids::{message_id, AppId, ChannelId};
use crate::store::{BatchItem, Counters};

/// What the plan asks of the daemon's state.
pub(super) trait Facts {
    /// The subscription of a channel.
    fn subscription(&self, channel: &ChannelId) -> Option<&SubscriptionRecord>;
    /// Whether (channel, version) was received before.
    fn seen(&self, channel: &ChannelId, version: &str) -> bool;
    /// Whether the app acknowledged this message before it could be stored (forgotten
    /// once asked: only its first copy is answered so).
    fn take_acked_unstored(&mut self, channel: &ChannelId, version: &str) -> bool;
    fn app_present(&self, app: &AppId) -> bool;
    /// Notifications are on and allowed for this app.
    fn may_show(&self, app: &AppId) -> bool;
    /// Take one of the app's shown notifications for this minute, if any is left.
    fn take_show(&mut self, app: &AppId) -> bool;
}

/// How a decrypted message is presented.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Presentation {
    Ordinary,
    /// Shown by the daemon now.
    Show(Declarative),
    /// Offered to the app first; shown if it does not acknowledge within the grace.
    Mutable(Declarative),
}

/// What the plan decided for a notification to record, beside its `BatchItem`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Planned {
    pub subscription: i64,
    /// The ack once committed (a copy found by the store is acknowledged 102 instead).
    pub ack: Ack,
    /// This message used up the subscription's quota.
    pub expires_now: bool,
    pub presentation: Presentation,
    /// Signalled to its running app before the commit.
    pub early: bool,
}

#[derive(Debug, Default)]
pub(super) struct BurstPlan {
    /// Acknowledgements that need no commit: copies, unknown and expired channels.
    pub acks: Vec<Acknowledgement>,
    /// Channels to unregister: unknown, or of an expired subscription.
    pub unregister: Vec<(ChannelId, Unregister)>,
    /// What to record, in one transaction; `planned[i]` goes with `items[i]`.
    pub items: Vec<BatchItem>,
    pub planned: Vec<Planned>,
}

/// The subscription a notification is for, as far as the plan needs it.
struct Target {
    id: i64,
    kind: Kind,
    app_id: AppId,
    has_bus_name: bool,
    counters: Counters,
}

/// When the burst is handled and how long its messages are kept.
#[derive(Debug, Clone, Copy)]
pub(super) struct Clock {
    pub now_ms: i64,
    pub ttl: u32,
}

/// Plan a burst. `decrypted` has one entry per notification (`None`: no payload to use,
/// the notification is left unacknowledged).
pub(super) fn plan_burst(
    batch: Vec<Notification>,
    decrypted: Vec<Option<Decrypted>>,
    facts: &mut impl Facts,
    clock: Clock,
) -> BurstPlan {
    let mut plan = BurstPlan::default();
    let mut counters: HashMap<i64, Counters> = HashMap::new();
    let mut in_batch: HashSet<(ChannelId, String)> = HashSet::new();
    for (n, pre) in batch.into_iter().zip(decrypted) {
        let Some(target) = triage(&n, facts, &mut in_batch, &mut plan) else {
            continue;
        };
        let Some(decrypted) = pre else {
            continue;
        };
        let c = counters.entry(target.id).or_insert(target.counters);
        let (item, planned) = plan_message(n, &target, decrypted, facts, c, clock);
        plan.items.push(item);
        plan.planned.push(planned);
    }
    plan
}

/// The subscription to record `n` for, or `None` when it is answered at once or skipped.
fn triage(
    n: &Notification,
    facts: &mut impl Facts,
    in_batch: &mut HashSet<(ChannelId, String)>,
    plan: &mut BurstPlan,
) -> Option<Target> {
    let ack = |ack| Acknowledgement {
        channel_id: n.channel_id.clone(),
        version: n.version.clone(),
        ack,
    };
    let Some(rec) = facts.subscription(&n.channel_id) else {
        info!(channel = %n.channel_id, "notification for an unknown channel: acknowledged 102 and unregistered");
        plan.acks.push(ack(Ack::NotDelivered));
        plan.unregister
            .push((n.channel_id.clone(), Unregister::Revoked));
        return None;
    };
    let target = Target {
        id: rec.id,
        kind: rec.kind,
        app_id: rec.app_id.clone(),
        has_bus_name: rec.bus_name.is_some(),
        counters: Counters {
            subscription_id: rec.id,
            push_count: rec.push_count,
            last_push: rec.last_push,
            quota: rec.quota,
            expired: rec.expired,
        },
    };
    let id = target.id;
    if rec.expired {
        // The server still holds the channel: its unregister was lost (the daemon stopped
        // before sending it, or the connection dropped). Say it again, or the endpoint
        // keeps accepting pushes that nobody will see.
        debug!(
            subscription = id,
            "notification for an expired subscription: 102 and unregistered"
        );
        plan.acks.push(ack(Ack::NotDelivered));
        plan.unregister
            .push((n.channel_id.clone(), Unregister::Quota));
        return None;
    }
    // A copy of something already received (the server resends what it did not see
    // acknowledged): recognised before it can count against the quota or reach the app a
    // second time. (The store would also refuse to record it.)
    if facts.seen(&n.channel_id, &n.version) {
        debug!(subscription = id, version = %n.version, "a copy of a message already received: 102");
        plan.acks.push(ack(Ack::NotDelivered));
        return None;
    }
    if !in_batch.insert((n.channel_id.clone(), n.version.clone())) {
        // A second copy in one batch: the first one's ack (after the commit) answers for
        // both; acking this one now could forget an unstored message.
        return None;
    }
    if facts.take_acked_unstored(&n.channel_id, &n.version) {
        debug!(subscription = id, version = %n.version, "a copy of a message the app acknowledged before it could be stored: 100");
        plan.acks.push(ack(Ack::Delivered));
        return None;
    }
    Some(target)
}

/// Plan one fresh notification with a payload (or a decryption failure): its counters
/// (quota), its presentation, its ack and whether it is signalled early.
fn plan_message(
    n: Notification,
    t: &Target,
    decrypted: Decrypted,
    facts: &mut impl Facts,
    c: &mut Counters,
    clock: Clock,
) -> (BatchItem, Planned) {
    let background = !facts.app_present(&t.app_id);
    let presentation = presentation(&decrypted, t, background, facts);
    c.push_count += 1;
    c.last_push = clock.now_ms;
    let mut expires_now = false;
    // Shown notifications are user-visible: no quota.
    if background && c.quota > 0 && !matches!(presentation, Presentation::Show(_)) {
        c.quota -= 1;
        if c.quota == 0 {
            c.expired = true;
            expires_now = true;
        }
    }
    let (ack, message) = match decrypted {
        Ok(payload) => {
            let mut m = stored(&n, t.id, payload, clock);
            m.shown = matches!(presentation, Presentation::Show(_));
            (Ack::Delivered, Some(m))
        }
        Err(e) => {
            let ack = failed_ack(t.kind, &e);
            match t.kind {
                Kind::WebPush => {
                    warn!(subscription = t.id, channel = %n.channel_id, reason = %e, code = ack.code(), "cannot decrypt a notification: acknowledged, not kept")
                }
                Kind::UnifiedPush(_) => {
                    warn!(subscription = t.id, channel = %n.channel_id, reason = %e, code = ack.code(), "cannot hand a message to a UnifiedPush app (it is given the body alone: 1-4096 bytes of aes128gcm): acknowledged, not kept")
                }
            }
            (ack, None)
        }
    };
    // A running app hears of an ordinary message now, before the commit and its fsync
    // (most of the daemon's latency at low rates). Safe for "never lose": the server is
    // acknowledged only after the commit, so if it fails (or the daemon dies first) the
    // server sends the message again and the app gets it twice, as at-least-once delivery
    // allows. The app's AckMessage reaches the loop after the commit.
    let early = message.is_some()
        && presentation == Presentation::Ordinary
        && t.kind == Kind::WebPush
        && !background;
    let item = BatchItem {
        seen_until: seen_until(&n, clock),
        channel_id: n.channel_id,
        version: n.version,
        counters: Some(*c),
        message,
    };
    let planned = Planned {
        subscription: t.id,
        ack,
        expires_now,
        presentation,
        early,
    };
    (item, planned)
}

/// A declarative message is shown by the daemon (or, if mutable, offered to an app that
/// can take it first); anything else, or one over the rate limit, is an ordinary message.
fn presentation(
    decrypted: &Decrypted,
    t: &Target,
    background: bool,
    facts: &mut impl Facts,
) -> Presentation {
    let (Ok(payload), Kind::WebPush) = (decrypted, t.kind) else {
        return Presentation::Ordinary;
    };
    let Some(d) = declarative::parse(payload) else {
        return Presentation::Ordinary;
    };
    if !facts.may_show(&t.app_id) {
        return Presentation::Ordinary;
    }
    let app_takes = !background || t.has_bus_name;
    if d.mutable && app_takes {
        Presentation::Mutable(d)
    } else if facts.take_show(&t.app_id) {
        Presentation::Show(d)
    } else {
        info!(
            subscription = t.id,
            "notification rate limit reached: the message waits for the app"
        );
        Presentation::Ordinary
    }
}

/// The longest a push server keeps a message (autopush's maximum TTL, in seconds).
pub(super) const SERVER_MAX_TTL: u32 = 30 * 24 * 3600;

/// Until when the server could send `n` again (its TTL, which autopush does not say on
/// the wire: then its maximum), so its `seen` entry is kept that long.
pub(super) fn seen_until(n: &Notification, clock: Clock) -> i64 {
    let ttl = n.ttl.map_or(SERVER_MAX_TTL, |t| t.min(SERVER_MAX_TTL));
    clock.now_ms + i64::from(ttl) * 1000
}

fn stored(n: &Notification, subscription: i64, payload: Vec<u8>, clock: Clock) -> StoredMessage {
    let header = |name: &str| n.headers.get(name).cloned();
    StoredMessage {
        id: message_id(&n.channel_id, &n.version),
        subscription_id: subscription,
        channel_id: n.channel_id.clone(),
        version: n.version.clone(),
        payload,
        received: clock.now_ms,
        ttl: clock.ttl,
        topic: header("topic").unwrap_or_default(),
        urgency: header("urgency").unwrap_or_else(|| "normal".into()),
        shown: false,
    }
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
