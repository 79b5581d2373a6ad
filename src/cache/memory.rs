//! The in-process cache (moka): the embedded default, one per replica.
//!
//! Bounded by bytes (key + value of every entry); moka evicts the least useful entries first
//! (TinyLFU). Latest decisions live apart, with their own bound and TTL, so a flood of
//! one-off snapshots cannot push them out: a plain sharded map, since every decided account
//! writes one and moka's insert (~1 µs) cost half as much as evaluating the account; when a
//! shard is over its budget, arbitrary entries leave (a latest decision is a convenience
//! copy, not something a request depends on).
//!
//! The TTL is checked when an entry is read (each value carries its insertion time) rather
//! than by moka's timer wheel, which made an insert cost as much as evaluating an account;
//! an expired entry reads as a miss and leaves when the size bound or a new insert evicts it.

use super::{Cache, CacheConfig, CacheStats, Counters, Key, WriteBatch};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the latest-decision map (few cores, short critical sections).
const LATEST_SHARDS: usize = 32;

/// A value and when it was stored.
#[derive(Clone)]
struct Stored {
    at: Instant,
    value: Bytes,
}

pub struct MemoryCache {
    entries: moka::sync::Cache<Key, Stored>,
    /// The version (hash) each policy name last stored entries under; see `forget_older`.
    versions: Mutex<HashMap<String, String>>,
    latest: Latest,
    ttl: Duration,
    latest_ttl: Duration,
    max_value_bytes: usize,
    counters: Counters,
}

fn weigh(k: &Key, v: &Stored) -> u32 {
    u32::try_from(k.as_str().len() + v.value.len() + 64).unwrap_or(u32::MAX)
}

impl MemoryCache {
    pub fn new(cfg: &CacheConfig) -> Self {
        let build = |max: u64| {
            moka::sync::Cache::builder()
                .max_capacity(max)
                .weigher(weigh)
                .support_invalidation_closures()
                .build()
        };
        MemoryCache {
            entries: build(cfg.memory_max_bytes),
            versions: Mutex::new(HashMap::new()),
            latest: Latest::new(cfg.memory_latest_max_bytes),
            ttl: cfg.ttl,
            latest_ttl: cfg.latest_ttl,
            max_value_bytes: cfg.max_value_bytes,
            counters: Counters::default(),
        }
    }

    /// Drops the entries of the version of `key`'s policy that was stored before, when `key`
    /// belongs to a newer one. Keys carry the policy hash, so once a reload replaces a version
    /// its entries are never read again; left to the size bound they made the soak's RSS
    /// grow by the whole book's decisions at every reload (+115% in 5 minutes), up to the
    /// cache's 256 MiB. A version the files return to is evaluated again, as after a restart.
    /// Requests in flight across a swap may store the old version once more: that flips the
    /// record back for a moment and costs a few misses, never a wrong answer.
    fn forget_older(&self, key: &Key) {
        let Some((name, hash)) = version_of(key) else { return };
        let old = {
            let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
            match v.get_mut(name) {
                Some(h) if h == hash => return,
                Some(h) => std::mem::replace(h, hash.to_string()),
                None => {
                    v.insert(name.to_string(), hash.to_string());
                    return;
                }
            }
        };
        let prefixes: [String; 2] =
            ["acct", "book"].map(|kind| format!("{}{kind}:{name}:{old}:", super::KEY_PREFIX));
        // Only fails when invalidation closures are off, and they are on (see `new`).
        let _ = self.entries.invalidate_entries_if(move |k: &Key, _| {
            prefixes.iter().any(|p| k.as_str().starts_with(p.as_str()))
        });
    }

    fn lookup(&self, key: &Key) -> Option<Bytes> {
        let latest = key
            .as_str()
            .as_bytes()
            .get(super::KEY_PREFIX.len()..)
            .is_some_and(|r| r.starts_with(b"latest:"));
        let (found, ttl) = if latest {
            (self.latest.get(key), self.latest_ttl)
        } else {
            (self.entries.get(key), self.ttl)
        };
        found.filter(|s| s.at.elapsed() < ttl).map(|s| s.value)
    }
}

/// `(name, hash)` as written in an `acct:` or `book:` key (percent-encoded, so no `:` inside).
fn version_of(k: &Key) -> Option<(&str, &str)> {
    let rest = k.as_str().strip_prefix(super::KEY_PREFIX)?;
    let rest = rest.strip_prefix("acct:").or_else(|| rest.strip_prefix("book:"))?;
    let mut parts = rest.splitn(3, ':');
    Some((parts.next()?, parts.next()?))
}

/// Latest decisions by key, in shards each with a byte budget.
struct Latest {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    shard_budget: u64,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Stored>,
    bytes: u64,
}

impl Latest {
    fn new(max_bytes: u64) -> Self {
        Latest {
            shards: (0..LATEST_SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Default::default(),
            shard_budget: (max_bytes / LATEST_SHARDS as u64).max(1),
        }
    }

    fn shard(&self, k: &Key) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(k) as usize) % self.shards.len();
        // A poisoned shard still holds valid entries (no invariant spans an unwind).
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, k: &Key) -> Option<Stored> {
        self.shard(k).map.get(k).cloned()
    }

    /// Stores `v` unless the same bytes are there and younger than `refresh`; whether it
    /// wrote.
    fn put(&self, k: Key, v: Stored, refresh: Duration) -> bool {
        let mut sh = self.shard(&k);
        if sh
            .map
            .get(&k)
            .is_some_and(|old| old.value == v.value && v.at.duration_since(old.at) < refresh)
        {
            return false;
        }
        let w = u64::from(weigh(&k, &v));
        if let Some(old) = sh.map.insert(k.clone(), v) {
            sh.bytes = sh.bytes.saturating_sub(u64::from(weigh(&k, &old)));
        }
        sh.bytes += w;
        while sh.bytes > self.shard_budget {
            let Some(victim) = sh.map.keys().find(|x| **x != k).cloned() else { break };
            if let Some(old) = sh.map.remove(&victim) {
                sh.bytes = sh.bytes.saturating_sub(u64::from(weigh(&victim, &old)));
            }
        }
        true
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get_many(&self, keys: &[Key]) -> Vec<Option<Bytes>> {
        let found: Vec<Option<Bytes>> = keys.iter().map(|k| self.lookup(k)).collect();
        self.counters.count(&found);
        found
    }

    fn put_many(&self, batch: WriteBatch) {
        let mut written = 0;
        let mut dropped = 0;
        let now = Instant::now();
        // A batch is one request's, under one policy version: its first key says which.
        if let Some((k, _)) = batch.entries.first() {
            self.forget_older(k);
        }
        for (k, v) in batch.entries {
            if v.len() > self.max_value_bytes {
                dropped += 1;
            } else {
                self.entries.insert(k, Stored { at: now, value: v });
                written += 1;
            }
        }
        for (k, v) in batch.latest {
            if v.len() > self.max_value_bytes {
                dropped += 1;
            } else if self.latest.put(k, Stored { at: now, value: v }, self.latest_ttl / 2) {
                written += 1;
            }
        }
        Counters::add(&self.counters.written, written);
        Counters::add(&self.counters.dropped_writes, dropped);
    }

    async fn flush(&self) {
        self.entries.run_pending_tasks();
    }

    fn stats(&self) -> CacheStats {
        self.counters.stats("memory")
    }

    fn degraded(&self) -> Option<String> {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::{Digest, PolicyId};
    use std::time::Duration;

    #[tokio::test]
    async fn hit_miss_latest_and_policy_change() {
        let c = MemoryCache::new(&CacheConfig::default());
        let p1 = PolicyId::new("enterprise", "h1");
        let p2 = PolicyId::new("enterprise", "h2");
        let d = Digest([7; 32]);
        let mut b = WriteBatch::new();
        b.put(p1.account_key(&d), Bytes::from_static(b"{\"id\":\"a\"}"));
        b.put_latest(p1.latest_key("a"), Bytes::from_static(b"{\"id\":\"a\"}"));
        c.put_many(b);
        let got = c.get_many(&[p1.account_key(&d), p2.account_key(&d), p1.book_key(&d)]).await;
        assert_eq!(got, vec![Some(Bytes::from_static(b"{\"id\":\"a\"}")), None, None]);
        assert_eq!(c.get_latest("enterprise", "a").await.as_deref(), Some(&b"{\"id\":\"a\"}"[..]));
        assert_eq!(c.get_latest("enterprise", "b").await, None);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.written), (2, 3, 2));
    }

    #[tokio::test]
    async fn a_new_version_of_a_policy_drops_the_older_versions_entries() {
        let c = MemoryCache::new(&CacheConfig::default());
        let (v1, v2, other) = (
            PolicyId::new("enterprise", "h1"),
            PolicyId::new("enterprise", "h2"),
            PolicyId::new("mid-market", "m1"),
        );
        let d = Digest([3; 32]);
        let put = |p: &PolicyId| {
            let mut b = WriteBatch::new();
            b.put(p.account_key(&d), Bytes::from_static(b"{}"));
            b.put(p.book_key(&d), Bytes::from_static(b"{}"));
            c.put_many(b);
        };
        put(&v1);
        put(&other);
        put(&v2);
        c.entries.run_pending_tasks();
        let got = c
            .get_many(&[
                v1.account_key(&d),
                v1.book_key(&d),
                v2.account_key(&d),
                v2.book_key(&d),
                other.account_key(&d),
            ])
            .await;
        assert_eq!(
            got.iter().map(Option::is_some).collect::<Vec<_>>(),
            [false, false, true, true, true]
        );
        assert_eq!(version_of(&v2.account_key(&d)), Some(("enterprise", "h2")));
        assert_eq!(version_of(&v2.latest_key("a")), None);
    }

    #[tokio::test]
    async fn latest_decisions_stay_within_their_budget() {
        let cfg = CacheConfig { memory_latest_max_bytes: 32 * 1024, ..CacheConfig::default() };
        let c = MemoryCache::new(&cfg);
        let p = PolicyId::new("p", "h");
        for i in 0..2000 {
            let mut b = WriteBatch::new();
            b.put_latest(p.latest_key(&format!("acct-{i}")), Bytes::from(vec![b'x'; 100]));
            c.put_many(b);
        }
        let held: u64 = c.latest.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        let count: usize = c.latest.shards.iter().map(|s| s.lock().unwrap().map.len()).sum();
        assert!(held <= 32 * 1024 && count > 50, "{held} bytes in {count} entries");
        assert!(c.get_latest("p", "acct-1999").await.is_some(), "the newest entry stays");
    }

    #[tokio::test]
    async fn ttl_and_size_bounds() {
        let cfg = CacheConfig {
            ttl: Duration::from_millis(100),
            max_value_bytes: 10,
            ..CacheConfig::default()
        };
        let c = MemoryCache::new(&cfg);
        let p = PolicyId::new("p", "h");
        let mut b = WriteBatch::new();
        b.put(p.account_key(&Digest([1; 32])), Bytes::from_static(b"small"));
        b.put(p.account_key(&Digest([2; 32])), Bytes::from_static(b"far too large"));
        c.put_many(b);
        assert!(c.get(&p.account_key(&Digest([1; 32]))).await.is_some());
        assert!(c.get(&p.account_key(&Digest([2; 32]))).await.is_none());
        assert_eq!(c.stats().dropped_writes, 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(c.get(&p.account_key(&Digest([1; 32]))).await.is_none());
    }
}
