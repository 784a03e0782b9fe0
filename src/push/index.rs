//! The subscriptions in memory, found by id, by channel and by (app, scope).

use std::collections::HashMap;

use super::SubscriptionRecord;
use crate::ids::{AppId, ChannelId, Scope};

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Boxed: a map keeps up to twice as many slots as entries, and a record is ~400 bytes.
    subs: HashMap<i64, Box<SubscriptionRecord>>,
    by_channel: HashMap<ChannelId, i64>,
    by_scope: HashMap<(AppId, Scope), i64>,
}

impl Index {
    pub fn insert(&mut self, rec: SubscriptionRecord) {
        self.by_channel.insert(rec.channel_id.clone(), rec.id);
        self.by_scope
            .insert((rec.app_id.clone(), rec.scope.clone()), rec.id);
        self.subs.insert(rec.id, Box::new(rec));
    }

    pub fn remove(&mut self, id: i64) -> Option<SubscriptionRecord> {
        let rec = self.subs.remove(&id)?;
        self.by_channel.remove(&rec.channel_id);
        self.by_scope
            .remove(&(rec.app_id.clone(), rec.scope.clone()));
        Some(*rec)
    }

    /// Put `rec` in place of the subscription with its id (its channel may be new).
    pub fn replace(&mut self, rec: SubscriptionRecord) {
        self.remove(rec.id);
        self.insert(rec);
    }

    pub fn get(&self, id: i64) -> Option<&SubscriptionRecord> {
        self.subs.get(&id).map(|b| &**b)
    }

    /// For fields that are not keys of the index (channel, app and scope stay as they are).
    pub fn get_mut(&mut self, id: i64) -> Option<&mut SubscriptionRecord> {
        self.subs.get_mut(&id).map(|b| &mut **b)
    }

    pub fn by_channel(&self, channel: &ChannelId) -> Option<i64> {
        self.by_channel.get(channel).copied()
    }

    pub fn by_scope(&self, app: &AppId, scope: &Scope) -> Option<i64> {
        self.by_scope.get(&(app.clone(), scope.clone())).copied()
    }

    pub fn values(&self) -> impl Iterator<Item = &SubscriptionRecord> {
        self.subs.values().map(|b| &**b)
    }

    pub fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.subs.keys().copied()
    }

    /// The ids of the subscriptions that match `f`.
    pub fn ids_where(&self, f: impl Fn(&SubscriptionRecord) -> bool) -> Vec<i64> {
        self.values().filter(|s| f(s)).map(|s| s.id).collect()
    }

    pub fn len(&self) -> usize {
        self.subs.len()
    }
}
