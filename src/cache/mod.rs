//! The decision cache in front of the engine (README "Cache"; docs/deploy.md for replicas on one Redis).
//!
//! What is cached: the serialized JSON of one account's decision, keyed by the policy that
//! made it (name and content hash) and the digest of the snapshot it was made from; a whole
//! portfolio answer, keyed by the policy and the digest of the whole book; and, beside these
//! content-addressed entries, the latest decision per (policy name, account id) for
//! `GET /v1/accounts/{id}/decision`. Evaluation is a pure function of (policy, snapshot), so
//! an entry can never be stale: a policy change changes its hash and therefore every key.
//!
//! Two implementations of one [`Cache`] trait:
//! - [`memory::MemoryCache`]: in-process (moka), bounded by bytes, the embedded default;
//! - [`redis::RedisCache`]: shared by every replica. The cache is never a reason to fail a
//!   request: every Redis call has a short deadline of its own, a circuit breaker stops
//!   calling a Redis that keeps failing (and probes it in the background until it answers
//!   again), and writes go through a bounded queue to one writer task, dropped and counted
//!   when the queue is full.
//!
//! The contract for callers (the service):
//! - a miss, a timeout, an error or an open breaker all read as `None`: evaluate;
//! - one batch is one call ([`Cache::get_many`]: one `MGET`) and one write
//!   ([`Cache::put_many`]: one pipeline of `SET .. PX ttl`, the latest decisions included);
//! - [`Cache::put_many`] never waits: it hands the batch to the writer and returns.
//!
//! Keys (the layout of [`crate::redis_conn`]: all under `tierwise:v2:`; `%`, `:`, `{` and `}`
//! inside names and ids are percent-encoded so a key reads back unambiguously and no name
//! opens a hash tag):
//! - `tierwise:v2:acct:<policy name>:<policy hash>:<snapshot digest>` — one decision;
//! - `tierwise:v2:book:<policy name>:<policy hash>:<book digest>` — one portfolio answer;
//! - `tierwise:v2:latest:{<policy name>:<account id>}` — the latest decision of an account,
//!   under its account's hash tag (on a Redis Cluster, in the slot of everything else about
//!   that account). Content-addressed entries have no tag: they spread over every shard.
//!
//! The policy's name is in the key as well as its hash because a decision names its policy:
//! two folders with the same files (a `staging` copy) have one hash but answer differently.
//!
//! Values in Redis are [`VALUE_PREFIX`] followed by the bytes the caller stored (the JSON a
//! fresh evaluation serializes), so a reader of another format version sees a miss, never
//! bytes it would misread. The in-process cache keeps the bytes as given (no other process
//! reads them).

pub mod config;
pub mod gate;
pub mod memory;
pub mod plan;
pub mod redis;

pub use config::{CacheArgs, CacheConfig};
pub use gate::CostGate;
pub use plan::{AccountPlan, CachedAnswer, decision_policy_hash};

use crate::snapshot::{Record, Snapshot};
use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every key starts with this: the project, then the key layout's version.
pub use crate::redis_conn::KEY_PREFIX;
use crate::redis_conn::key_part;

/// Every value stored in Redis starts with this: the value format's version. A value with
/// another prefix is a miss (written by a newer or older tierwise sharing the Redis).
pub const VALUE_PREFIX: &[u8] = b"tw1\n";

/// A SHA-256 digest of a canonical serialization (see [`snapshot_digest`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.hex())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hex())
    }
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Feeds what is written into a SHA-256: the canonical form is hashed as it is produced,
/// never held in memory whole.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes `v` as canonical JSON: no whitespace, object keys sorted by their UTF-8 bytes at
/// every depth, strings escaped as serde_json escapes them, numbers as serde_json prints
/// them (so `3` and `3.0` differ: at worst a miss, never a wrong hit).
pub fn write_canonical<W: Write>(w: &mut W, v: &Value) -> io::Result<()> {
    match v {
        Value::Object(map) => write_object(w, map),
        Value::Array(items) => {
            w.write_all(b"[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                write_canonical(w, item)?;
            }
            w.write_all(b"]")
        }
        other => serde_json::to_writer(&mut *w, other).map_err(io::Error::other),
    }
}

fn write_object<W: Write>(w: &mut W, map: &serde_json::Map<String, Value>) -> io::Result<()> {
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    w.write_all(b"{")?;
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_str(w, k)?;
        w.write_all(b":")?;
        write_canonical(w, v)?;
    }
    w.write_all(b"}")
}

fn write_str<W: Write>(w: &mut W, s: &str) -> io::Result<()> {
    serde_json::to_writer(w, s).map_err(io::Error::other)
}

/// The canonical JSON of a snapshot, written field by field (the generic path through a
/// `serde_json::Value` costs as much as evaluating the account). Must equal
/// [`write_canonical`] of the snapshot's serde serialization: a unit test builds a snapshot
/// with every field set, so a field added to [`Snapshot`] fails it until it is added here.
fn write_snapshot<W: Write>(w: &mut W, s: &Snapshot) -> io::Result<()> {
    // Keys in byte order: as_of, current_tier, fields, id, manager, name, tier_since.
    w.write_all(b"{\"as_of\":")?;
    write_str(w, &s.as_of)?;
    if let Some(t) = &s.current_tier {
        w.write_all(b",\"current_tier\":")?;
        write_str(w, t)?;
    }
    w.write_all(b",\"fields\":")?;
    write_object(w, &s.fields)?;
    w.write_all(b",\"id\":")?;
    write_str(w, &s.id)?;
    for (key, v) in [
        (&b",\"manager\":"[..], &s.manager),
        (b",\"name\":", &s.name),
        (b",\"tier_since\":", &s.tier_since),
    ] {
        if let Some(v) = v {
            w.write_all(key)?;
            write_str(w, v)?;
        }
    }
    w.write_all(b"}")
}

/// The canonical JSON of any serializable value (what [`snapshot_digest`] hashes).
pub fn canonical_json<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and a Snapshot always serializes.
    let _ = serde_json::to_value(v)
        .map_err(io::Error::other)
        .and_then(|v| write_canonical(&mut out, &v));
    out
}

fn digest_value<T: Serialize + ?Sized>(h: &mut HashWriter, v: &T) {
    // A `Value` serializes into a `Value` and from there into a hasher without error; the
    // `Snapshot` and `AccountError` types have no map with non-string keys.
    let _ = serde_json::to_value(v).map_err(io::Error::other).and_then(|v| write_canonical(h, &v));
}

/// SHA-256 of the snapshot's canonical JSON ([`write_canonical`] of its serde_json
/// serialization: every field, the ones the policy ignores included; absent optional
/// fields omitted). Two snapshots with the same digest get the same decision under one
/// policy; the converse need not hold (key order and whitespace do not matter, `3` vs
/// `3.0` or an explicit `null` vs an absent field do: a miss, never a wrong hit).
pub fn snapshot_digest(s: &Snapshot) -> Digest {
    let mut buf = Vec::with_capacity(256 + 32 * s.fields.len());
    // Writing to a Vec cannot fail.
    let _ = write_snapshot(&mut buf, s);
    Digest(Sha256::digest(&buf).into())
}

/// SHA-256 over a whole book, in input order (a portfolio answer lists accounts in input
/// order): per record, `S` + the snapshot's canonical JSON, or `E` + the canonical JSON of
/// `{"id", "error"}` for a record that was not a snapshot, each followed by a newline
/// (canonical JSON has no raw newline, so records cannot run into each other).
pub fn book_digest(records: &[Record]) -> Digest {
    #[derive(Serialize)]
    struct Bad<'a> {
        id: &'a Option<String>,
        error: &'a crate::snapshot::AccountError,
    }
    let mut h = HashWriter(Sha256::new());
    for r in records {
        match r {
            Ok(s) => {
                h.0.update(b"S");
                let _ = write_snapshot(&mut h, s);
            }
            Err(e) => {
                h.0.update(b"E");
                digest_value(&mut h, &Bad { id: &e.id, error: e });
            }
        }
        h.0.update(b"\n");
    }
    Digest(h.0.finalize().into())
}

/// The policy a decision was made under: its name and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyId {
    pub name: Arc<str>,
    pub hash: Arc<str>,
}

impl PolicyId {
    pub fn new(name: impl Into<Arc<str>>, hash: impl Into<Arc<str>>) -> Self {
        PolicyId { name: name.into(), hash: hash.into() }
    }

    /// The key of one account's decision under this policy.
    pub fn account_key(&self, digest: &Digest) -> Key {
        self.key("acct", digest)
    }

    /// The key of a whole portfolio answer under this policy.
    pub fn book_key(&self, digest: &Digest) -> Key {
        self.key("book", digest)
    }

    /// The key of the latest decision of `account_id` under this policy's name (any hash:
    /// the stored decision says which version made it, in its `policy.hash`).
    pub fn latest_key(&self, account_id: &str) -> Key {
        latest_key(&self.name, account_id)
    }

    fn key(&self, kind: &str, digest: &Digest) -> Key {
        let mut s = String::with_capacity(
            KEY_PREFIX.len() + kind.len() + self.name.len() + self.hash.len() + 68,
        );
        s.push_str(KEY_PREFIX);
        s.push_str(kind);
        s.push(':');
        key_part(&mut s, &self.name);
        s.push(':');
        key_part(&mut s, &self.hash);
        s.push(':');
        s.push_str(&digest.hex());
        Key(s.into())
    }
}

/// `tierwise:v2:latest:{<policy>:<account id>}` (the account's hash tag).
pub fn latest_key(policy: &str, account_id: &str) -> Key {
    Key(crate::redis_conn::account_key("latest", policy, account_id, "").into())
}

/// A cache key, exactly as stored in Redis (see the module docs for the layout).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key(Arc<str>);

impl Key {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one request writes: its new entries and the latest decision of each account, in one
/// Redis pipeline. Values are the bytes a fresh evaluation serialized (no prefix: the
/// implementation adds its format version).
#[derive(Clone, Debug, Default)]
pub struct WriteBatch {
    /// Content-addressed entries (decisions, portfolio answers), kept for `ttl`.
    pub entries: Vec<(Key, Bytes)>,
    /// Latest decisions ([`latest_key`]), kept for `latest_ttl`.
    pub latest: Vec<(Key, Bytes)>,
}

impl WriteBatch {
    pub fn new() -> Self {
        WriteBatch::default()
    }
    pub fn put(&mut self, key: Key, value: Bytes) -> &mut Self {
        self.entries.push((key, value));
        self
    }
    pub fn put_latest(&mut self, key: Key, value: Bytes) -> &mut Self {
        self.latest.push((key, value));
        self
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.latest.is_empty()
    }
    pub fn len(&self) -> usize {
        self.entries.len() + self.latest.len()
    }
}

/// The circuit breaker's state, as metrics and `/readyz` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go to Redis.
    #[default]
    Closed,
    /// Redis failed repeatedly: no call goes to it until the cool-down has passed.
    Open,
    /// One background probe is asking Redis whether it is back; requests skip the cache.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
    /// 0 closed, 1 open, 2 half-open: the value of a gauge.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

/// Counters since start, for `/metrics` (counters, plus the breaker as a gauge) and
/// `/readyz` details. Hits and misses count keys; errors and timeouts count calls.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CacheStats {
    /// `memory` or `redis`.
    pub backend: &'static str,
    /// Keys found (decisions, portfolio answers and latest decisions).
    pub hits: u64,
    /// Keys looked up and not found (or found in another value format).
    pub misses: u64,
    /// Keys not looked up because the breaker was open: the request evaluated them.
    pub skipped: u64,
    /// Calls that failed (connection refused or lost, a Redis error).
    pub errors: u64,
    /// Calls that outlived their deadline.
    pub timeouts: u64,
    /// Entries written (Redis: acknowledged by Redis).
    pub written: u64,
    /// Entries not written: the queue was full, the breaker open, or the write failed.
    pub dropped_writes: u64,
    /// Batches waiting in the write queue now.
    pub queued: u64,
    pub breaker: BreakerState,
    /// How many times the breaker opened.
    pub breaker_opened: u64,
}

/// The cache in front of the engine. Every method answers: a failure reads as a miss.
///
/// Object-safe (`Arc<dyn Cache>` in the service) through `async_trait`.
#[async_trait]
pub trait Cache: Send + Sync {
    /// One value per key, in order: `Some(bytes)` exactly as stored by [`Cache::put_many`],
    /// `None` for a miss, and all `None` when the backend cannot answer in time. One round
    /// trip for the whole slice (Redis `MGET`); an empty slice costs nothing.
    async fn get_many(&self, keys: &[Key]) -> Vec<Option<Bytes>>;

    /// One value, e.g. a portfolio answer ([`PolicyId::book_key`]).
    async fn get(&self, key: &Key) -> Option<Bytes> {
        self.get_many(std::slice::from_ref(key)).await.pop().flatten()
    }

    /// The latest decision made for `account_id` under the policy named `policy`, if any was
    /// stored and has not expired.
    async fn get_latest(&self, policy: &str, account_id: &str) -> Option<Bytes> {
        self.get(&latest_key(policy, account_id)).await
    }

    /// Stores a batch without waiting: the in-process cache inserts at once; Redis queues it
    /// for the writer task (one pipeline), dropping and counting it when the queue is full.
    fn put_many(&self, batch: WriteBatch);

    /// Waits (bounded) until every batch queued before this call is written or dropped. For
    /// tests and shutdown; requests never call it.
    async fn flush(&self);

    fn stats(&self) -> CacheStats;

    /// Whether a request should bother with the cache at all: `false` while the Redis
    /// breaker is open or half-open, when every lookup would be skipped and every write
    /// dropped, so the service can evaluate as if there were no cache (no digests, no
    /// per-account serialization).
    fn available(&self) -> bool {
        true
    }

    /// Why the cache is not fully working, for `/readyz` details (never a reason to report
    /// not-ready: requests are answered by evaluating). `None` when healthy.
    fn degraded(&self) -> Option<String>;
}

/// The cache the configuration asks for: Redis with a URL or Cluster seeds, else in-process
/// memory. Must be
/// called inside a tokio runtime when a Redis URL is set (it spawns the writer task). Redis
/// being down is not an error here (the cache starts degraded and picks Redis up when it
/// answers); a malformed URL is.
pub fn build(cfg: &CacheConfig) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(match cfg.target() {
        Some(target) => Arc::new(self::redis::RedisCache::connect_to(&target, cfg)?),
        None => Arc::new(memory::MemoryCache::new(cfg)),
    })
}

/// Why a cache could not be built at all.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("invalid Redis URL `{url}`: {message}")]
    BadUrl { url: String, message: String },
    #[error("the Redis cache needs a tokio runtime")]
    NoRuntime,
}

/// Lock-free counters behind [`CacheStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub skipped: AtomicU64,
    pub errors: AtomicU64,
    pub timeouts: AtomicU64,
    pub written: AtomicU64,
    pub dropped_writes: AtomicU64,
}

impl Counters {
    pub fn add(c: &AtomicU64, n: usize) {
        if n > 0 {
            c.fetch_add(n as u64, Relaxed);
        }
    }
    pub fn stats(&self, backend: &'static str) -> CacheStats {
        CacheStats {
            backend,
            hits: self.hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            skipped: self.skipped.load(Relaxed),
            errors: self.errors.load(Relaxed),
            timeouts: self.timeouts.load(Relaxed),
            written: self.written.load(Relaxed),
            dropped_writes: self.dropped_writes.load(Relaxed),
            ..CacheStats::default()
        }
    }
    /// Counts a lookup's answers as hits and misses.
    pub fn count(&self, found: &[Option<Bytes>]) {
        let hits = found.iter().filter(|v| v.is_some()).count();
        Counters::add(&self.hits, hits);
        Counters::add(&self.misses, found.len() - hits);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn snap(json: &str) -> Snapshot {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn digest_ignores_key_order_and_whitespace() {
        let a = snap(r#"{"id":"a","as_of":"2026-11-01","fields":{"x":1,"y":{"b":2,"a":[1,2]}}}"#);
        let b = snap(
            r#"{ "fields": {"y": {"a": [1, 2], "b": 2}, "x": 1}, "as_of": "2026-11-01", "id": "a" }"#,
        );
        assert_eq!(snapshot_digest(&a), snapshot_digest(&b));
        assert_eq!(
            String::from_utf8(canonical_json(&a)).unwrap(),
            r#"{"as_of":"2026-11-01","fields":{"x":1,"y":{"a":[1,2],"b":2}},"id":"a"}"#
        );
    }

    #[test]
    fn the_field_by_field_form_is_the_generic_one() {
        // A struct literal: a new field of Snapshot fails to compile here until it is
        // added to `write_snapshot` and to this test.
        let full = Snapshot {
            id: "a\"b".to_string(),
            name: Some("Acme ☃".to_string()),
            manager: Some("jane".to_string()),
            current_tier: Some("key".to_string()),
            tier_since: Some("2025-01-01".to_string()),
            as_of: "2026-11-01".to_string(),
            fields: serde_json::from_str(
                r#"{"z":1,"a":[{"y":2,"b":null}],"m":"\u0007","n":1.5e300}"#,
            )
            .unwrap(),
        };
        let bare = snap(r#"{"id":"x","as_of":"2026-11-01"}"#);
        for s in [full, bare] {
            let mut fast = Vec::new();
            write_snapshot(&mut fast, &s).unwrap();
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(canonical_json(&s)).unwrap()
            );
        }
    }

    #[test]
    fn digest_sees_every_value() {
        let base = snap(r#"{"id":"a","as_of":"2026-11-01","fields":{"x":1}}"#);
        let others = [
            r#"{"id":"b","as_of":"2026-11-01","fields":{"x":1}}"#,
            r#"{"id":"a","as_of":"2026-11-02","fields":{"x":1}}"#,
            r#"{"id":"a","as_of":"2026-11-01","fields":{"x":2}}"#,
            r#"{"id":"a","as_of":"2026-11-01","fields":{"x":1.0}}"#,
            r#"{"id":"a","as_of":"2026-11-01","fields":{"x":1,"z":null}}"#,
            r#"{"id":"a","as_of":"2026-11-01","manager":"jane","fields":{"x":1}}"#,
            r#"{"id":"a","as_of":"2026-11-01","current_tier":"key","fields":{"x":1}}"#,
        ];
        for o in others {
            assert_ne!(snapshot_digest(&base), snapshot_digest(&snap(o)), "{o}");
        }
        // Known answer: the digest is part of the shared key layout, it must not drift.
        assert_eq!(
            snapshot_digest(&base).hex(),
            hex(&Sha256::digest(br#"{"as_of":"2026-11-01","fields":{"x":1},"id":"a"}"#))
        );
    }

    #[test]
    fn book_digest_follows_order_and_bad_records() {
        let a = snap(r#"{"id":"a","as_of":"2026-11-01"}"#);
        let b = snap(r#"{"id":"b","as_of":"2026-11-01"}"#);
        let ab = book_digest(&[Ok(a.clone()), Ok(b.clone())]);
        assert_eq!(ab, book_digest(&[Ok(a.clone()), Ok(b.clone())]));
        assert_ne!(ab, book_digest(&[Ok(b.clone()), Ok(a.clone())]));
        assert_ne!(ab, book_digest(&[Ok(a.clone())]));
        let bad = crate::snapshot::AccountError::new(Some("b"), "bad_record", "not a snapshot");
        assert_ne!(ab, book_digest(&[Ok(a), Err(bad)]));
    }

    #[test]
    fn keys_are_namespaced_and_unambiguous() {
        let p = PolicyId::new("enterprise", "ab12");
        let d = Digest([0; 32]);
        assert_eq!(
            p.account_key(&d).as_str(),
            format!("tierwise:v2:acct:enterprise:ab12:{}", "0".repeat(64))
        );
        assert_eq!(
            p.book_key(&d).as_str(),
            format!("tierwise:v2:book:enterprise:ab12:{}", "0".repeat(64))
        );
        assert_eq!(p.latest_key("acme:001").as_str(), "tierwise:v2:latest:{enterprise:acme%3A001}");
        assert_ne!(latest_key("a:b", "c"), latest_key("a", "b:c"));
        assert_eq!(latest_key("a%3Ab", "c").as_str(), "tierwise:v2:latest:{a%253Ab:c}");
        assert_eq!(
            PolicyId::new("p{x}", "h").account_key(&d).as_str(),
            format!("tierwise:v2:acct:p%7Bx%7D:h:{}", "0".repeat(64)),
            "no hash tag in a content-addressed key: it spreads over the shards"
        );
        // Same files under two names: two keys (a decision names its policy).
        assert_ne!(PolicyId::new("staging", "ab12").account_key(&d), p.account_key(&d));
    }
}
