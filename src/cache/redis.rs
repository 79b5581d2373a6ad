//! The Redis cache: shared by every replica, and never a reason to fail or slow a request.
//!
//! It runs on a [`RedisConn`], so one server (`--redis`) or a Cluster (`--redis-cluster`)
//! alike. Three guards stand between a request and a sick Redis:
//! 1. **A deadline of our own** on every call ([`CacheConfig::read_deadline`], 25 ms by
//!    default): redis-rs reconnects by itself, but a caller that waits on it can wait out
//!    the whole reconnect backoff (seconds), and a paused Redis (SIGSTOP, a stalled host)
//!    answers nothing at all. Past the deadline the call reads as a miss and the request
//!    evaluates.
//! 2. **A circuit breaker**: after `breaker_failures` consecutive failed or timed-out calls
//!    it opens and no request touches Redis (a dead Redis costs an atomic load per request).
//!    Every error counts: a refused connection, a timeout, and Redis's own error replies too
//!    (`OOM`, `CROSSSLOT`, `CLUSTERDOWN`, `READONLY`): a cache that cannot store or answer is
//!    not working, whoever is to blame.
//! 3. **A bounded write queue**: [`Cache::put_many`] hands the batch to one writer task
//!    (`try_send`, never waiting); a full queue, or an open breaker, drops the batch and
//!    counts it. The writer merges what is queued into one pipeline (one per shard).
//!
//! **A probe of its own**: every `breaker_cooldown` (1 s) a background task `PING`s Redis
//! (on a Cluster every master) under the read deadline, with or without traffic. A failed
//! probe opens the breaker at once (so `/readyz` says `degraded` within about a second of
//! Redis becoming unreachable, even on an idle replica); an answer closes it. The cache
//! starts half-open until the first probe answers, so a Redis that is down at start costs
//! requests nothing. Every change of the breaker is logged.
//!
//! Reads are one `MGET` per batch on a single server, one pipeline of `GET`s per shard on
//! a Cluster; writes one pipeline of `SET key value PX ttl` (on a single server wrapped in
//! `MULTI`/`EXEC`, so a request's entries and latest decisions land together; on a Cluster
//! one pipeline per shard), so a batch costs a constant number of round trips per shard.

use super::{Cache, CacheConfig, CacheError, CacheStats, Counters, Key, VALUE_PREFIX, WriteBatch};
use crate::redis_conn::{Options, RedisConn, Target};
use ::redis::RedisResult;
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{
    AtomicU8, AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

use super::BreakerState;

/// The writer merges queued batches into one pipeline up to this many keys.
const MERGE_MAX_KEYS: usize = 4096;

pub struct RedisCache {
    shared: Arc<Shared>,
    /// To the writer task; dropping the cache closes it and the writer ends.
    tx: mpsc::Sender<Job>,
}

/// What the request path, the writer task and the probe share.
struct Shared {
    /// Cheap to clone; reconnects by itself after a lost connection.
    conn: RedisConn,
    /// `Redis at ..` / `Redis Cluster (seeds ..)`, passwords redacted: for the logs.
    target: String,
    cfg: CacheConfig,
    counters: Counters,
    breaker: Breaker,
    /// The last failure, for `/readyz` details. A std Mutex: nothing awaits while it is held.
    last_error: Mutex<Option<String>>,
}

enum Job {
    Write(WriteBatch),
    Flush(oneshot::Sender<()>),
}

impl RedisCache {
    /// A cache over the Redis at `url`, a single server.
    pub fn connect(url: &str, cfg: &CacheConfig) -> Result<Self, CacheError> {
        Self::connect_to(&Target::Single(url.to_string()), cfg)
    }

    /// A cache over a single Redis or a Cluster. Connects lazily: Redis being down is not an
    /// error (the cache starts degraded and picks Redis up when a probe gets an answer).
    /// Needs a tokio runtime (it spawns the writer and the probe).
    pub fn connect_to(target: &Target, cfg: &CacheConfig) -> Result<Self, CacheError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| CacheError::NoRuntime)?;
        let conn = RedisConn::connect(target, &Options { connect_timeout: cfg.probe_timeout })
            .map_err(|e| match e {
                crate::redis_conn::ConnError::BadUrl { url, message } => {
                    CacheError::BadUrl { url, message }
                }
                other => CacheError::BadUrl { url: String::new(), message: other.to_string() },
            })?;
        let shared = Arc::new(Shared {
            conn,
            target: target.describe(),
            cfg: cfg.clone(),
            counters: Counters::default(),
            breaker: Breaker::new(cfg.breaker_failures),
            last_error: Mutex::new(Some("connecting to redis".to_string())),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_batches.max(1));
        handle.spawn(writer(shared.clone(), rx));
        handle.spawn(probe_loop(Arc::downgrade(&shared)));
        Ok(RedisCache { shared, tx })
    }

    /// The breaker's state now.
    pub fn breaker(&self) -> BreakerState {
        self.shared.breaker.state()
    }
}

impl Shared {
    /// Whether a request may call Redis now.
    fn admit(&self) -> bool {
        self.breaker.state.load(Acquire) == CLOSED
    }

    fn note(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }

    /// Counts a failed call; opens the breaker (and says so) at the threshold.
    fn failed(&self, why: String) {
        if self.breaker.failure() {
            tracing::warn!(
                target: "tierwise::cache",
                redis = %self.target,
                breaker = "open",
                reason = %why,
                "redis cache breaker opened: requests evaluate without the cache"
            );
        }
        self.note(why);
    }

    /// Runs one Redis call under `deadline`, counting its failure for the breaker.
    async fn call<T>(
        &self,
        deadline: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> Option<T> {
        match tokio::time::timeout(deadline, fut).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::add(&self.counters.errors, 1);
                self.failed(format!("redis error: {e}"));
                None
            }
            Err(_) => {
                Counters::add(&self.counters.timeouts, 1);
                self.failed(format!("redis gave no answer within {} ms", deadline.as_millis()));
                None
            }
        }
    }

    async fn write(&self, batch: WriteBatch) {
        let n = batch.len();
        if n == 0 {
            return;
        }
        if !self.admit() {
            Counters::add(&self.counters.dropped_writes, n);
            return;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let (ttl, latest_ttl) = (ms(self.cfg.ttl), ms(self.cfg.latest_ttl));
        let mut cmds = Vec::with_capacity(n);
        for (items, ttl) in [(&batch.entries, ttl), (&batch.latest, latest_ttl)] {
            for (k, v) in items {
                let mut cmd = ::redis::cmd("SET");
                cmd.arg(k.as_str()).arg(encode(v)).arg("PX").arg(ttl);
                cmds.push((k.as_str().as_bytes(), cmd));
            }
        }
        // On a single server MULTI/EXEC: one request's entries and latest decisions land
        // together (a reader never sees a latest decision whose entry is missing), still one
        // round trip. On a Cluster one pipeline per shard.
        let run = self.conn.run_by_shard(&cmds, true);
        match self.call(self.cfg.write_deadline(n), run).await {
            Some(_) => Counters::add(&self.counters.written, n),
            None => Counters::add(&self.counters.dropped_writes, n),
        }
    }

    /// One health probe: `PING` (every master of a Cluster) under the read deadline.
    async fn probe(&self) {
        let deadline = self.cfg.read_deadline(1).max(Duration::from_millis(1));
        let failure = match tokio::time::timeout(deadline, self.conn.ping()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => {
                Counters::add(&self.counters.errors, 1);
                Some(format!("redis error: {e}"))
            }
            Err(_) => {
                Counters::add(&self.counters.timeouts, 1);
                Some(format!("redis gave no answer to a probe within {} ms", deadline.as_millis()))
            }
        };
        let before = self.breaker.state();
        match failure {
            None => {
                self.breaker.close();
                if before != BreakerState::Closed {
                    tracing::info!(
                        target: "tierwise::cache",
                        redis = %self.target,
                        breaker = "closed",
                        was = before.as_str(),
                        "redis cache breaker closed: redis answers again"
                    );
                }
            }
            Some(why) => {
                if self.breaker.open() {
                    tracing::warn!(
                        target: "tierwise::cache",
                        redis = %self.target,
                        breaker = "open",
                        was = before.as_str(),
                        reason = %why,
                        "redis cache breaker opened: requests evaluate without the cache"
                    );
                }
                self.note(why);
            }
        }
    }
}

fn encode(v: &Bytes) -> Vec<u8> {
    let mut out = Vec::with_capacity(VALUE_PREFIX.len() + v.len());
    out.extend_from_slice(VALUE_PREFIX);
    out.extend_from_slice(v);
    out
}

/// The stored bytes without the format prefix; another format reads as a miss.
fn decode(v: Option<Vec<u8>>) -> Option<Bytes> {
    let v = v?;
    v.starts_with(VALUE_PREFIX).then(|| Bytes::from(v).slice(VALUE_PREFIX.len()..))
}

/// The health probe, every `breaker_cooldown`, for as long as the cache lives.
async fn probe_loop(shared: Weak<Shared>) {
    loop {
        let Some(s) = shared.upgrade() else { return };
        let every = s.cfg.breaker_cooldown.max(Duration::from_millis(10));
        let started = Instant::now();
        s.probe().await;
        drop(s);
        tokio::time::sleep(every.saturating_sub(started.elapsed())).await;
    }
}

/// The one writer: queued batches, merged, one pipeline each round.
async fn writer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut batch = WriteBatch::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(b) => {
                    batch.entries.extend(b.entries);
                    batch.latest.extend(b.latest);
                }
                Job::Flush(done) => flushes.push(done),
            }
            if batch.len() < MERGE_MAX_KEYS {
                next = rx.try_recv().ok();
            }
        }
        shared.write(batch).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get_many(&self, keys: &[Key]) -> Vec<Option<Bytes>> {
        let n = keys.len();
        if n == 0 {
            return Vec::new();
        }
        let s = &self.shared;
        if !s.admit() {
            Counters::add(&s.counters.skipped, n);
            return vec![None; n];
        }
        let raw: Vec<&[u8]> = keys.iter().map(|k| k.as_str().as_bytes()).collect();
        match s.call(s.cfg.read_deadline(n), s.conn.get_many(&raw)).await {
            Some(values) if values.len() == n => {
                let found: Vec<Option<Bytes>> = values.into_iter().map(decode).collect();
                s.counters.count(&found);
                found
            }
            _ => vec![None; n],
        }
    }

    fn put_many(&self, mut batch: WriteBatch) {
        let max = self.shared.cfg.max_value_bytes;
        let before = batch.len();
        batch.entries.retain(|(_, v)| v.len() <= max);
        batch.latest.retain(|(_, v)| v.len() <= max);
        let mut dropped = before - batch.len();
        if !batch.is_empty() {
            let n = batch.len();
            if self.shared.breaker.state() != BreakerState::Closed
                || self.tx.try_send(Job::Write(batch)).is_err()
            {
                dropped += n;
            }
        }
        Counters::add(&self.shared.counters.dropped_writes, dropped);
    }

    async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        let bound = self.shared.cfg.write_deadline(MERGE_MAX_KEYS) * 4;
        let _ = tokio::time::timeout(bound, async {
            if self.tx.send(Job::Flush(done)).await.is_ok() {
                let _ = wait.await;
            }
        })
        .await;
    }

    fn stats(&self) -> CacheStats {
        let s = &self.shared;
        let mut st = s.counters.stats("redis");
        st.queued = (self.tx.max_capacity() - self.tx.capacity()) as u64;
        st.breaker = s.breaker.state();
        st.breaker_opened = s.breaker.opened.load(Relaxed);
        st
    }

    fn available(&self) -> bool {
        self.shared.admit()
    }

    fn degraded(&self) -> Option<String> {
        let state = self.shared.breaker.state();
        if state == BreakerState::Closed {
            return None;
        }
        let last = self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(format!(
            "redis cache breaker {}: {}",
            state.as_str(),
            last.unwrap_or_else(|| "no answer".to_string())
        ))
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Closed → open after `threshold` consecutive failed calls, or at once on a failed probe →
/// closed when a probe gets an answer. Starts half-open: nothing known until the first probe.
///
/// Only the probe closes it: a late answer to a call made before it opened changes nothing.
struct Breaker {
    /// Read on every request: an atomic, so a closed or open breaker costs one load.
    state: AtomicU8,
    failures: AtomicU32,
    /// Transitions happen under this lock (a std Mutex, never held across an await).
    lock: Mutex<()>,
    threshold: u32,
    opened: AtomicU64,
}

impl Breaker {
    fn new(threshold: u32) -> Self {
        Breaker {
            state: AtomicU8::new(HALF_OPEN),
            failures: AtomicU32::new(0),
            lock: Mutex::new(()),
            threshold: threshold.max(1),
            opened: AtomicU64::new(0),
        }
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    fn success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// A failed call; `true` when this one opened the breaker.
    fn failure(&self) -> bool {
        if self.state.load(Acquire) != CLOSED {
            return false;
        }
        if self.failures.fetch_add(1, AcqRel) + 1 >= self.threshold {
            return self.open();
        }
        false
    }

    /// Opens it (a failed probe, or the threshold); `true` when it was closed before.
    fn open(&self) -> bool {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.failures.store(0, Relaxed);
        let was = self.state.swap(OPEN, AcqRel);
        if was != OPEN {
            self.opened.fetch_add(1, Relaxed);
        }
        was == CLOSED
    }

    /// A probe got an answer.
    fn close(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.failures.store(0, Relaxed);
        self.state.store(CLOSED, Release);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn breaker_cycle() {
        let b = Breaker::new(3);
        assert_eq!(b.state(), BreakerState::HalfOpen, "nothing known before the first probe");
        b.close();
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.failure());
        assert!(!b.failure());
        b.success();
        assert!(!b.failure());
        assert!(!b.failure());
        assert_eq!(b.state(), BreakerState::Closed, "failures must be consecutive");
        assert!(b.failure(), "the third in a row opens it");
        assert_eq!(b.state(), BreakerState::Open);
        b.success(); // a late answer to an old call closes nothing
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.open(), "already open");
        b.close();
        assert!(b.open(), "a failed probe opens a closed breaker at once");
        assert_eq!(b.opened.load(Relaxed), 2);
    }

    #[test]
    fn values_carry_the_format() {
        assert_eq!(decode(Some(encode(&Bytes::from_static(b"{}")))).as_deref(), Some(&b"{}"[..]));
        assert_eq!(decode(Some(b"tw2\n{}".to_vec())), None);
        assert_eq!(decode(None), None);
    }
}
