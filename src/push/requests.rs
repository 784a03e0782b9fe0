//! What apps and `pushctl` ask of the domain (through `dbus/`), answered on `Reply`s.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info};

use super::{
    Counts, DomainEvent, Input, MessageId, Push, PushError, Reply, Request, SubscriptionInfo,
    SubscriptionRecord,
};
use crate::connection::Unregister;
use crate::ids::{AppId, Scope};

/// Message ids acknowledged in one transaction at most (a request is never split).
const MAX_ACKS: usize = 128;

fn no_scope(scope: &Scope) -> PushError {
    PushError::NotFound(format!("no subscription for scope \"{scope}\""))
}

/// How often subscriptions' counters are announced at most: the first change after a
/// quiet period at once, later ones gathered until the period ends. Under a stream that is
/// one `PropertiesChanged` per subscription and period instead of two per message (its
/// push, its acknowledgement).
const ANNOUNCE_EVERY: Duration = Duration::from_millis(250);

/// Changes of subscriptions' counters waiting to be announced to watchers.
#[derive(Debug, Default)]
pub(super) struct Announce {
    /// Subscriptions whose push counters changed (announced with `Updated`, which also
    /// invalidates their count of pending messages).
    counters: Vec<i64>,
    /// Subscriptions whose count of pending messages alone changed (`PendingChanged`).
    pending: Vec<i64>,
    /// The end of the period the last announcement began.
    quiet_at: Option<Instant>,
}

impl Announce {
    pub fn due(&self) -> Option<Instant> {
        if self.counters.is_empty() && self.pending.is_empty() {
            None
        } else {
            self.quiet_at
        }
    }
}

/// The answers to acknowledgements whose deletes wait to be committed, each with the ids
/// of its request that were not pending.
#[derive(Debug, Default)]
pub(super) struct Acked {
    replies: Vec<(Reply<Vec<MessageId>>, Vec<MessageId>)>,
}

/// One `AckMessage` or `AckMessages` of a batch.
struct AckItem {
    id: Option<i64>,
    scope: Scope,
    message_ids: Vec<MessageId>,
    reply: Reply<Vec<MessageId>>,
}

impl Push {
    pub(super) fn request(&mut self, r: Request) {
        match r {
            Request::Subscribe {
                caller,
                scope,
                options,
                reply,
            } => self.subscribe(caller, scope, options, reply),
            Request::Get { app, scope, reply } => {
                let res = match self.index.by_scope(&app, &scope) {
                    Some(id) => Ok(self.info(id)),
                    None => Err(no_scope(&scope)),
                };
                let _ = reply.send(res);
            }
            Request::GetById { app, id, reply } => {
                let res = self
                    .owned(app.as_ref(), id)
                    .map(SubscriptionInfo::from_record);
                let _ = reply.send(res);
            }
            Request::Unsubscribe { app, scope, reply } => {
                let res = match self.index.by_scope(&app, &scope) {
                    Some(id) => self.remove(id, Unregister::ByApp),
                    None => Ok(false),
                };
                let _ = reply.send(res);
            }
            Request::Remove { app, id, reply } => {
                let why = if app.is_some() {
                    Unregister::ByApp
                } else {
                    Unregister::Revoked
                };
                let res = self
                    .owned(app.as_ref(), id)
                    .map(|_| ())
                    .and_then(|_| self.remove(id, why));
                let _ = reply.send(res);
            }
            Request::List { app, reply } => {
                let _ = reply.send(Ok(self.list(app.as_ref())));
            }
            Request::Fetch { app, scope, reply } => {
                let res = match self.index.by_scope(&app, &scope) {
                    Some(id) => self
                        .store
                        .pending(id)
                        .map_err(|e| PushError::Failed(format!("cannot read messages: {e}"))),
                    None => Err(no_scope(&scope)),
                };
                let _ = reply.send(res);
            }
            ack @ Request::Ack { .. } => self.acks(ack),
            Request::ResetQuota { id, reply } => {
                let res = self.owned(None, id).map(|_| ());
                if res.is_ok() {
                    self.restore_quota(id);
                }
                let _ = reply.send(res);
            }
            Request::SetServer {
                server,
                ws_url,
                config_server,
                reply,
            } => {
                let res = self.set_server(server, ws_url, &config_server);
                let _ = reply.send(res);
            }
            Request::SetNotificationsAllowed {
                app,
                allowed,
                reply,
            } => {
                let res = self
                    .store
                    .set_notifications_allowed(&app, allowed)
                    .map_err(|e| PushError::Failed(format!("cannot store the permission: {e}")));
                info!(%app, allowed, "notification permission changed");
                let _ = reply.send(res);
            }
            Request::Counts { reply } => {
                let _ = reply.send(Ok(self.counts()));
            }
            Request::Pending { id, reply } => {
                let res = self.owned(None, id).and_then(|_| {
                    self.store
                        .pending_count(id)
                        .map_err(|e| PushError::Failed(format!("cannot count messages: {e}")))
                });
                let _ = reply.send(res);
            }
            Request::NotificationsDenied { reply } => {
                let res = self
                    .store
                    .notifications_denied()
                    .map_err(|e| PushError::Failed(format!("cannot read the permissions: {e}")));
                let _ = reply.send(res);
            }
        }
    }

    fn info(&self, id: i64) -> SubscriptionInfo {
        SubscriptionInfo::from_record(self.index.get(id).expect("indexed"))
    }

    /// The subscription `id`, if `app` (or an admin, `None`) may see it.
    fn owned(&self, app: Option<&AppId>, id: i64) -> Result<&SubscriptionRecord, PushError> {
        match self.index.get(id) {
            Some(r) if app.is_none_or(|a| *a == r.app_id) => Ok(r),
            _ => Err(PushError::NotFound(format!("no subscription {id}"))),
        }
    }

    fn list(&self, app: Option<&AppId>) -> Vec<SubscriptionInfo> {
        let mut v: Vec<_> = self
            .index
            .values()
            .filter(|s| app.is_none_or(|a| *a == s.app_id))
            .map(SubscriptionInfo::from_record)
            .collect();
        v.sort_by_key(|s| s.id);
        v
    }

    fn counts(&self) -> Counts {
        let pending = self
            .index
            .ids()
            .map(|id| self.store.pending_count(id).unwrap_or(0))
            .sum();
        Counts {
            subscriptions: self.index.len() as u64,
            expired: self.index.values().filter(|s| s.expired).count() as u64,
            pending_messages: pending,
            messages_received: self.burst.received,
            apps_connected: self
                .delivery
                .apps()
                .filter(|app| self.index.values().any(|s| s.app_id == **app))
                .count() as u64,
            notification_server: self.delivery.notification_server(),
        }
    }

    /// `AckMessage` and `AckMessages`: this one and every other already queued, in one
    /// transaction (one fsync), so acknowledgements keep up with a stream of notifications.
    fn acks(&mut self, first: Request) {
        let items = self.gather_acks(first);
        let keys: Vec<(i64, &str)> = items
            .iter()
            .filter_map(|i| i.id.map(|id| (id, &i.message_ids)))
            .flat_map(|(id, ids)| ids.iter().map(move |m| (id, m.as_str())))
            .collect();
        let done = self.store.ack_many(&keys);
        let mut results = match &done {
            Ok(v) => v.clone().into_iter(),
            Err(_) => Vec::new().into_iter(),
        };
        // Of a subscription, only its count of pending messages changes with an ack (read
        // from the store when asked): announced as such, no Updated event.
        let mut emptied: Vec<i64> = Vec::new();
        for i in items {
            let Some(id) = i.id else {
                let _ = i.reply.send(Err(no_scope(&i.scope)));
                continue;
            };
            if let Err(e) = &done {
                let _ = i
                    .reply
                    .send(Err(PushError::Failed(format!("cannot acknowledge: {e}"))));
                continue;
            }
            let mut deleted_any = false;
            let mut unknown = Vec::new();
            for m in i.message_ids {
                self.delivery.taken(&m);
                // One result per message id of an item that has a subscription, in order.
                if results.next() == Some(true) {
                    deleted_any = true;
                } else if !self.acked_before_stored(id, &m) {
                    unknown.push(m);
                }
            }
            if deleted_any {
                if !emptied.contains(&id) {
                    emptied.push(id);
                }
                // Answered once the deletes are committed (`answer_acks`).
                self.acked.replies.push((i.reply, unknown));
            } else {
                let _ = i.reply.send(Ok(unknown));
            }
        }
        if !emptied.is_empty() {
            self.announce(&emptied, false);
        }
    }

    /// Answer the acknowledgements whose deletes were committed (or undone) since the
    /// last turn of the loop.
    pub(super) fn answer_acks(&mut self) {
        let Some(outcome) = self.store.acks_outcome() else {
            return;
        };
        for (reply, unknown) in self.acked.replies.drain(..) {
            let _ = reply.send(
                outcome
                    .clone()
                    .map(|()| unknown)
                    .map_err(|e| PushError::Failed(format!("cannot acknowledge: {e}"))),
            );
        }
    }

    /// Announce that the counters of `ids` changed (`counters`), or their counts of pending
    /// messages alone: now, or at the end of the current period (see `ANNOUNCE_EVERY`).
    pub(super) fn announce(&mut self, ids: &[i64], counters: bool) {
        let a = &mut self.announce;
        let list = if counters {
            &mut a.counters
        } else {
            &mut a.pending
        };
        for id in ids {
            if !list.contains(id) {
                list.push(*id);
            }
        }
        let now = Instant::now();
        if a.quiet_at.is_none_or(|t| t <= now) {
            self.announce_now(now);
        }
    }

    fn announce_now(&mut self, now: Instant) {
        let counters = std::mem::take(&mut self.announce.counters);
        let mut pending = std::mem::take(&mut self.announce.pending);
        pending.retain(|id| !counters.contains(id));
        let any = !counters.is_empty() || !pending.is_empty();
        self.announce.quiet_at = any.then_some(now + ANNOUNCE_EVERY);
        for id in counters {
            self.refresh(id);
        }
        if !pending.is_empty() {
            self.emit(DomainEvent::PendingChanged(pending));
        }
    }

    /// Commit the acknowledgements no write took along in time, and announce the changes
    /// gathered in the period that ended.
    pub(super) fn acks_due(&mut self, now: Instant) {
        if self
            .store
            .settle_at()
            .is_some_and(|at| Instant::from_std(at) <= now)
        {
            if let Err(e) = self.store.settle() {
                error!(error = %e, "cannot commit acknowledgements: those messages will be delivered again");
            }
        }
        if self.announce.due().is_some_and(|at| at <= now) {
            self.announce_now(now);
        }
    }

    /// The first acknowledgement request and every other already queued, up to `MAX_ACKS`
    /// message ids; anything else read meanwhile is held for the loop's next turn.
    fn gather_acks(&mut self, first: Request) -> Vec<AckItem> {
        let mut ids = acked_ids(&first);
        let mut batch = vec![first];
        while ids < MAX_ACKS && self.io.held_input.is_none() {
            match self.io.inputs.try_recv() {
                Ok(Input::Request(r @ Request::Ack { .. })) => {
                    ids += acked_ids(&r);
                    batch.push(r);
                }
                Ok(other) => self.io.held_input = Some(other),
                Err(_) => break,
            }
        }
        batch
            .into_iter()
            .filter_map(|r| match r {
                Request::Ack {
                    app,
                    scope,
                    message_ids,
                    reply,
                } => Some(AckItem {
                    id: self.index.by_scope(&app, &scope),
                    scope,
                    message_ids,
                    reply,
                }),
                _ => None,
            })
            .collect()
    }

    /// A message signalled before a commit that failed: the app has it, and its next copy
    /// from the server needs no storing.
    fn acked_before_stored(&mut self, id: i64, message_id: &MessageId) -> bool {
        let Some(sub) = self.burst.acked_before_stored(Some(id), message_id) else {
            return false;
        };
        debug!(subscription = sub, message = %message_id, "acknowledged before it could be stored");
        true
    }
}

fn acked_ids(r: &Request) -> usize {
    match r {
        Request::Ack { message_ids, .. } => message_ids.len(),
        _ => 0,
    }
}
