//! The Redis cache: shared by every replica, and never a reason to fail or slow a request.
//!
//! Three guards stand between a request and a sick Redis:
//! 1. **A deadline of our own** on every call ([`CacheConfig::read_deadline`], 25 ms by
//!    default): redis-rs's [`ConnectionManager`] reconnects by itself, but a caller that
//!    waits on it can wait out the whole reconnect backoff (seconds), and a paused Redis
//!    (SIGSTOP, a stalled host) answers nothing at all. Past the deadline the call reads as
//!    a miss and the request evaluates.
//! 2. **A circuit breaker**: after `breaker_failures` consecutive failed or timed-out calls
//!    it opens and no request touches Redis (a dead Redis costs an atomic load per request).
//!    After `breaker_cooldown` one background probe (`PING`, its own longer deadline) asks
//!    again: an answer closes the breaker, silence opens it for another cool-down. The
//!    cache starts half-open with such a probe, so a Redis that is down at start costs the
//!    requests nothing either.
//! 3. **A bounded write queue**: [`Cache::put_many`] hands the batch to one writer task
//!    (`try_send`, never waiting); a full queue, or an open breaker, drops the batch and
//!    counts it. The writer merges what is queued into one pipeline.
//!
//! Reads are one `MGET` per batch; writes one pipeline of `SET key value PX ttl` per batch
//! (latest decisions included, wrapped in `MULTI`/`EXEC`), so a batch costs a constant number
//! of round trips.

use super::{Cache, CacheConfig, CacheError, CacheStats, Counters, Key, VALUE_PREFIX, WriteBatch};
use ::redis::RedisResult;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use async_trait::async_trait;
use bytes::Bytes;
use std::future::Future;
use std::sync::atomic::{
    AtomicU8, AtomicU32, AtomicU64, Ordering::AcqRel, Ordering::Acquire, Ordering::Relaxed,
    Ordering::Release,
};
use std::sync::{Arc, Mutex};
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

/// What the request path and the writer task share.
struct Shared {
    /// Cheap to clone (an `Arc`); reconnects by itself after a lost connection.
    conn: ConnectionManager,
    cfg: CacheConfig,
    counters: Counters,
    breaker: Breaker,
    /// The last failure, for `/readyz` details. A std Mutex: nothing awaits while it is held.
    last_error: Mutex<Option<String>>,
    /// Where probes run: [`Cache::available`] may be asked from a blocking-pool thread.
    handle: tokio::runtime::Handle,
}

enum Job {
    Write(WriteBatch),
    Flush(oneshot::Sender<()>),
}

impl RedisCache {
    /// A cache over the Redis at `url`. Connects lazily: Redis being down is not an error
    /// (the cache starts degraded and picks Redis up when a probe gets an answer). Needs a
    /// tokio runtime (it spawns the writer and the first probe).
    pub fn connect(url: &str, cfg: &CacheConfig) -> Result<Self, CacheError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|_| CacheError::NoRuntime)?;
        let bad = |e: ::redis::RedisError| CacheError::BadUrl {
            url: redact(url),
            message: e.to_string(),
        };
        let client = ::redis::Client::open(url).map_err(bad)?;
        // Short reconnect backoff: the breaker's probe, not a waiting request, is what
        // notices Redis is back, and it should find a fresh connection attempt under way.
        let mcfg = ConnectionManagerConfig::new()
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_connection_timeout(Some(cfg.probe_timeout))
            .set_response_timeout(None);
        let conn = ConnectionManager::new_lazy_with_config(client, mcfg).map_err(bad)?;
        let shared = Arc::new(Shared {
            conn,
            cfg: cfg.clone(),
            counters: Counters::default(),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown),
            last_error: Mutex::new(Some("connecting to redis".to_string())),
            handle: handle.clone(),
        });
        let (tx, rx) = mpsc::channel(cfg.queue_batches.max(1));
        handle.spawn(writer(shared.clone(), rx));
        handle.spawn(probe(shared.clone()));
        Ok(RedisCache { shared, tx })
    }

    /// The breaker's state now.
    pub fn breaker(&self) -> BreakerState {
        self.shared.breaker.state()
    }
}

/// `redis://user:secret@host` without the secret, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl Shared {
    /// Whether a request may call Redis now; starts the probe when the cool-down is over.
    fn admit(self: &Arc<Self>) -> bool {
        match self.breaker.admit() {
            Admit::Call => true,
            Admit::Probe => {
                self.handle.spawn(probe(self.clone()));
                false
            }
            Admit::Skip => false,
        }
    }

    fn note(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
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
                self.note(format!("redis error: {e}"));
                if answered(&e) {
                    // Redis answered, with an error (OOM under `noeviction`, a read-only
                    // replica): it costs no waiting, so it does not stop the reads.
                    self.breaker.success();
                } else {
                    self.breaker.failure();
                }
                None
            }
            Err(_) => {
                Counters::add(&self.counters.timeouts, 1);
                self.note(format!("redis gave no answer within {} ms", deadline.as_millis()));
                self.breaker.failure();
                None
            }
        }
    }

    async fn write(self: &Arc<Self>, batch: WriteBatch) {
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
        // MULTI/EXEC: one request's entries and latest decisions land together (a reader never
        // sees a latest decision whose entry is missing), still one round trip.
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (items, ttl) in [(&batch.entries, ttl), (&batch.latest, latest_ttl)] {
            for (k, v) in items {
                pipe.cmd("SET").arg(k.as_str()).arg(encode(v)).arg("PX").arg(ttl).ignore();
            }
        }
        let mut conn = self.conn.clone();
        match self.call(self.cfg.write_deadline(n), pipe.query_async::<()>(&mut conn)).await {
            Some(()) => Counters::add(&self.counters.written, n),
            None => Counters::add(&self.counters.dropped_writes, n),
        }
    }
}

/// Whether the error is Redis's own answer rather than a broken or silent connection.
fn answered(e: &::redis::RedisError) -> bool {
    matches!(e.kind(), ::redis::ErrorKind::Server(_) | ::redis::ErrorKind::Extension)
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

/// Asks Redis whether it answers, and closes or reopens the breaker accordingly.
async fn probe(shared: Arc<Shared>) {
    let mut conn = shared.conn.clone();
    let deadline = shared.cfg.probe_timeout;
    let ok =
        match tokio::time::timeout(deadline, ::redis::cmd("PING").query_async::<String>(&mut conn))
            .await
        {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => {
                Counters::add(&shared.counters.errors, 1);
                shared.note(format!("redis error: {e}"));
                false
            }
            Err(_) => {
                Counters::add(&shared.counters.timeouts, 1);
                shared.note(format!(
                    "redis gave no answer to a probe within {} ms",
                    deadline.as_millis()
                ));
                false
            }
        };
    shared.breaker.probe_result(ok);
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
        let mut cmd = ::redis::cmd("MGET");
        for k in keys {
            cmd.arg(k.as_str());
        }
        let mut conn = s.conn.clone();
        let got: Option<Vec<Option<Vec<u8>>>> =
            s.call(s.cfg.read_deadline(n), cmd.query_async(&mut conn)).await;
        match got {
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

    /// Starts the breaker's probe when the cool-down is over: a service that skips the cache
    /// while this is `false` would otherwise never call Redis again, and the breaker, which
    /// a call's `admit` moves to half-open, would stay open for good.
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

enum Admit {
    Call,
    /// The cool-down is over and this caller is the one to start the probe.
    Probe,
    Skip,
}

/// Closed → open after `threshold` consecutive failures → half-open (one background probe)
/// after `cooldown` → closed on the probe's answer, open again on its failure.
///
/// Only the probe moves the breaker out of open/half-open: a late answer to a call made
/// before it opened changes nothing.
struct Breaker {
    /// Read on every request: an atomic, so a closed or open breaker costs one load.
    state: AtomicU8,
    failures: AtomicU32,
    /// When it last opened; transitions happen under this lock.
    opened_at: Mutex<Instant>,
    threshold: u32,
    cooldown: Duration,
    opened: AtomicU64,
}

impl Breaker {
    /// Starts half-open: the first probe, spawned by [`RedisCache::connect`], decides.
    fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            state: AtomicU8::new(HALF_OPEN),
            failures: AtomicU32::new(0),
            opened_at: Mutex::new(Instant::now()),
            threshold: threshold.max(1),
            cooldown,
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

    fn admit(&self) -> Admit {
        match self.state.load(Acquire) {
            CLOSED => Admit::Call,
            OPEN => {
                let at = self.opened_at.lock().unwrap_or_else(|p| p.into_inner());
                if self.state.load(Acquire) == OPEN && at.elapsed() >= self.cooldown {
                    self.state.store(HALF_OPEN, Release);
                    Admit::Probe
                } else {
                    Admit::Skip
                }
            }
            _ => Admit::Skip,
        }
    }

    fn success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    fn failure(&self) {
        if self.state.load(Acquire) != CLOSED {
            return;
        }
        if self.failures.fetch_add(1, AcqRel) + 1 >= self.threshold {
            let mut at = self.opened_at.lock().unwrap_or_else(|p| p.into_inner());
            if self.state.load(Acquire) == CLOSED {
                *at = Instant::now();
                self.failures.store(0, Relaxed);
                self.state.store(OPEN, Release);
                self.opened.fetch_add(1, Relaxed);
            }
        }
    }

    fn probe_result(&self, ok: bool) {
        let mut at = self.opened_at.lock().unwrap_or_else(|p| p.into_inner());
        self.failures.store(0, Relaxed);
        if ok {
            self.state.store(CLOSED, Release);
        } else {
            if self.state.load(Acquire) != OPEN {
                self.opened.fetch_add(1, Relaxed);
            }
            *at = Instant::now();
            self.state.store(OPEN, Release);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn breaker_cycle() {
        let b = Breaker::new(3, Duration::from_millis(30));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert!(matches!(b.admit(), Admit::Skip));
        b.probe_result(true);
        assert_eq!(b.state(), BreakerState::Closed);
        b.failure();
        b.failure();
        b.success();
        b.failure();
        b.failure();
        assert_eq!(b.state(), BreakerState::Closed, "failures must be consecutive");
        b.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert!(matches!(b.admit(), Admit::Skip));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(b.admit(), Admit::Probe));
        assert!(matches!(b.admit(), Admit::Skip), "one probe at a time");
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.success(); // a late answer to an old call closes nothing
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.probe_result(false);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened.load(Relaxed), 2);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://user:secret@host:6379/0"), "redis://***@host:6379/0");
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn values_carry_the_format() {
        assert_eq!(decode(Some(encode(&Bytes::from_static(b"{}")))).as_deref(), Some(&b"{}"[..]));
        assert_eq!(decode(Some(b"tw2\n{}".to_vec())), None);
        assert_eq!(decode(None), None);
    }
}
