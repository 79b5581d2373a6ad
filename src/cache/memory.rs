//! The in-process cache (moka): the embedded default, one per replica.
//!
//! Bounded by bytes (key + value of every entry); moka evicts the least useful entries first
//! (TinyLFU). Latest decisions live in a second cache with their own bound and TTL, so a
//! flood of one-off snapshots cannot push them out.
//!
//! The TTL is checked when an entry is read (each value carries its insertion time) rather
//! than by moka's timer wheel, which made an insert cost as much as evaluating an account;
//! an expired entry reads as a miss and leaves when the size bound or a new insert evicts it.

use super::{Cache, CacheConfig, CacheStats, Counters, Key, WriteBatch};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// A value and when it was stored.
#[derive(Clone)]
struct Stored {
    at: Instant,
    value: Bytes,
}

pub struct MemoryCache {
    entries: moka::sync::Cache<Key, Stored>,
    latest: moka::sync::Cache<Key, Stored>,
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
        let build = |max: u64| moka::sync::Cache::builder().max_capacity(max).weigher(weigh).build();
        MemoryCache {
            entries: build(cfg.memory_max_bytes),
            latest: build(cfg.memory_latest_max_bytes),
            ttl: cfg.ttl,
            latest_ttl: cfg.latest_ttl,
            max_value_bytes: cfg.max_value_bytes,
            counters: Counters::default(),
        }
    }

    fn lookup(&self, key: &Key) -> Option<Bytes> {
        let latest = key.as_str().as_bytes().get(super::KEY_PREFIX.len()..).is_some_and(|r| r.starts_with(b"latest:"));
        let (cache, ttl) = if latest { (&self.latest, self.latest_ttl) } else { (&self.entries, self.ttl) };
        cache.get(key).filter(|s| s.at.elapsed() < ttl).map(|s| s.value)
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
        for (latest, items) in [(false, batch.entries), (true, batch.latest)] {
            let cache = if latest { &self.latest } else { &self.entries };
            for (k, v) in items {
                if v.len() > self.max_value_bytes {
                    dropped += 1;
                    continue;
                }
                // Entries are written on misses only: new. A latest decision is rewritten on
                // every hit with the bytes it already holds, and a lookup and a compare cost
                // less than an insert (refreshed at half its TTL).
                if latest && cache.get(&k).is_some_and(|s| s.value == v && now.duration_since(s.at) < self.latest_ttl / 2) {
                    continue;
                }
                cache.insert(k, Stored { at: now, value: v });
                written += 1;
            }
        }
        Counters::add(&self.counters.written, written);
        Counters::add(&self.counters.dropped_writes, dropped);
    }

    async fn flush(&self) {
        self.entries.run_pending_tasks();
        self.latest.run_pending_tasks();
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
    async fn ttl_and_size_bounds() {
        let cfg = CacheConfig { ttl: Duration::from_millis(100), max_value_bytes: 10, ..CacheConfig::default() };
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
