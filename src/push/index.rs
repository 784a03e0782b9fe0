//! The subscriptions in memory, found by id, by channel and by (app, scope).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::SubscriptionRecord;
use crate::ids::{AppId, ChannelId, Scope};

#[derive(Debug, Default)]
pub(super) struct Index {
    /// Boxed: a map keeps up to twice as many slots as entries, and a record is ~400 bytes.
    subs: HashMap<i64, Box<SubscriptionRecord>>,
    /// Ids hashed by channel and by (app, scope), compared through their records: the
    /// keys are not stored a second time (they were ~180 bytes per subscription).
    by_channel: HashTable<i64>,
    by_scope: HashTable<i64>,
    hasher: RandomState,
}

fn channel_hash(h: &RandomState, channel: &ChannelId) -> u64 {
    h.hash_one(channel.as_str())
}

fn scope_hash(h: &RandomState, app: &AppId, scope: &Scope) -> u64 {
    h.hash_one((app.as_str(), scope.as_str()))
}

impl Index {
    /// Add `rec`; it replaces a subscription with its id, and takes its channel and its
    /// (app, scope) from any other.
    pub fn insert(&mut self, rec: SubscriptionRecord) {
        self.remove(rec.id);
        let id = rec.id;
        let hc = channel_hash(&self.hasher, &rec.channel_id);
        let hs = scope_hash(&self.hasher, &rec.app_id, &rec.scope);
        let Index {
            subs,
            by_channel,
            by_scope,
            hasher,
        } = self;
        if let Ok(e) = by_channel.find_entry(hc, |x| {
            subs.get(x).is_some_and(|s| s.channel_id == rec.channel_id)
        }) {
            e.remove();
        }
        if let Ok(e) = by_scope.find_entry(hs, |x| {
            subs.get(x)
                .is_some_and(|s| s.app_id == rec.app_id && s.scope == rec.scope)
        }) {
            e.remove();
        }
        subs.insert(id, Box::new(rec));
        by_channel.insert_unique(hc, id, |x| {
            subs.get(x)
                .map_or(0, |s| channel_hash(hasher, &s.channel_id))
        });
        by_scope.insert_unique(hs, id, |x| {
            subs.get(x)
                .map_or(0, |s| scope_hash(hasher, &s.app_id, &s.scope))
        });
    }

    pub fn remove(&mut self, id: i64) -> Option<SubscriptionRecord> {
        let rec = self.subs.get(&id)?;
        let hc = channel_hash(&self.hasher, &rec.channel_id);
        let hs = scope_hash(&self.hasher, &rec.app_id, &rec.scope);
        if let Ok(e) = self.by_channel.find_entry(hc, |x| *x == id) {
            e.remove();
        }
        if let Ok(e) = self.by_scope.find_entry(hs, |x| *x == id) {
            e.remove();
        }
        self.subs.remove(&id).map(|b| *b)
    }

    /// Put `rec` in place of the subscription with its id (its channel may be new).
    pub fn replace(&mut self, rec: SubscriptionRecord) {
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
        let h = channel_hash(&self.hasher, channel);
        self.by_channel
            .find(h, |x| {
                self.subs.get(x).is_some_and(|s| s.channel_id == *channel)
            })
            .copied()
    }

    pub fn by_scope(&self, app: &AppId, scope: &Scope) -> Option<i64> {
        let h = scope_hash(&self.hasher, app, scope);
        self.by_scope
            .find(h, |x| {
                self.subs
                    .get(x)
                    .is_some_and(|s| s.app_id == *app && s.scope == *scope)
            })
            .copied()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::examples::record;

    fn rec(id: i64, channel: &str, scope: &str) -> SubscriptionRecord {
        let mut r = record(channel, scope);
        r.id = id;
        r
    }

    const C1: &str = "00000000-0000-4000-8000-000000000001";
    const C2: &str = "00000000-0000-4000-8000-000000000002";
    const C3: &str = "00000000-0000-4000-8000-000000000003";

    #[test]
    fn found_by_id_channel_and_scope_until_removed_or_replaced() {
        let mut ix = Index::default();
        for i in 0..500 {
            // Enough to make the tables grow (and rehash through the records).
            let ch = format!("00000000-0000-4000-8000-{:012}", 100 + i);
            ix.insert(rec(100 + i, &ch, &format!("s{i}")));
        }
        ix.insert(rec(1, C1, "inbox"));
        ix.insert(rec(2, C2, "alerts"));
        let app = AppId::parse("org.example.App").unwrap();
        let scope = |s: &str| Scope::parse(s).unwrap();
        let ch = |c: &str| ChannelId::parse(c).unwrap();
        assert_eq!(ix.by_channel(&ch(C1)), Some(1));
        assert_eq!(ix.by_scope(&app, &scope("alerts")), Some(2));
        assert_eq!(ix.by_scope(&app, &scope("s499")), Some(599));
        assert_eq!(ix.len(), 502);

        // Renewed on a new channel: the old one no longer leads to it.
        ix.replace(rec(1, C3, "inbox"));
        assert_eq!(ix.by_channel(&ch(C1)), None);
        assert_eq!(ix.by_channel(&ch(C3)), Some(1));
        assert_eq!(ix.by_scope(&app, &scope("inbox")), Some(1));
        assert_eq!(ix.len(), 502);

        let gone = ix.remove(2).unwrap();
        assert_eq!(gone.scope, scope("alerts"));
        assert_eq!(ix.by_channel(&ch(C2)), None);
        assert_eq!(ix.by_scope(&app, &scope("alerts")), None);
        assert!(ix.remove(2).is_none());
        let other = AppId::parse("org.example.Other").unwrap();
        assert_eq!(ix.by_scope(&other, &scope("inbox")), None);
    }
}
