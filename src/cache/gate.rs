//! Whether reading the cache pays for a request: the cache must never make a request slower
//! than evaluating it.
//!
//! A decision under the shipped policy costs ~7 µs; a Redis round trip on loopback costs
//! tens of microseconds, across a network more. For one account and a cheap policy the read
//! loses; for a hundred accounts, or an expensive policy, it wins. With a hit ratio `h`, a
//! read of `n` keys is worth it when `read(n) < h × eval × n`.
//!
//! [`CostGate`] learns the three terms from what the service measures anyway: evaluation
//! time per account (every request evaluates its misses), read latency (a fixed part from
//! small reads, a per-key part from large ones) and the hit ratio, each an exponentially
//! weighted mean. One read in [`SAMPLE_EVERY`] goes to the cache whatever the estimate, so
//! the read cost and the hit ratio stay current (a cache warming up, a Redis coming back).
//! Until it has measured both sides it reads.
//!
//! One gate per policy version (evaluation cost is the policy's), lock-free: relaxed atomics,
//! where a lost update only makes a mean a little older.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// One read in this many is made whatever the estimate says.
pub const SAMPLE_EVERY: u64 = 32;

/// Reads of at most this many keys estimate the fixed cost of a read.
const SMALL_READ: usize = 16;

/// Weight of a new measurement in a mean.
const ALPHA: f64 = 1.0 / 8.0;

#[derive(Default)]
pub struct CostGate {
    /// ns per evaluated account (f64 bits; 0.0: not measured yet).
    eval_ns: AtomicU64,
    /// ns of a small read (the round trip).
    read_fixed_ns: AtomicU64,
    /// ns per key beyond the fixed part, from larger reads.
    read_key_ns: AtomicU64,
    /// Keys found over keys read (f64 bits), once a read was made.
    hit_ratio: AtomicU64,
    hit_ratio_known: AtomicU64,
    requests: AtomicU64,
}

fn load(a: &AtomicU64) -> f64 {
    f64::from_bits(a.load(Relaxed))
}

fn blend(a: &AtomicU64, x: f64) {
    let old = load(a);
    let new = if old == 0.0 { x } else { old + ALPHA * (x - old) };
    a.store(new.to_bits(), Relaxed);
}

impl CostGate {
    pub fn new() -> Self {
        CostGate::default()
    }

    /// Whether to read the cache for a request of `n` cacheable accounts.
    pub fn should_read(&self, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        if self.requests.fetch_add(1, Relaxed).is_multiple_of(SAMPLE_EVERY) {
            return true;
        }
        let (eval, fixed) = (load(&self.eval_ns), load(&self.read_fixed_ns));
        if eval == 0.0 || fixed == 0.0 || self.hit_ratio_known.load(Relaxed) == 0 {
            return true;
        }
        let read = fixed + load(&self.read_key_ns) * n as f64;
        read < load(&self.hit_ratio) * eval * n as f64
    }

    /// A read of `n` keys took `took` and found `hits` of them.
    pub fn record_read(&self, n: usize, hits: usize, took: Duration) {
        if n == 0 {
            return;
        }
        let ns = took.as_nanos() as f64;
        if n <= SMALL_READ {
            blend(&self.read_fixed_ns, ns.max(1.0));
        } else {
            let fixed = load(&self.read_fixed_ns);
            blend(&self.read_key_ns, ((ns - fixed) / n as f64).max(1.0));
        }
        let ratio = hits as f64 / n as f64;
        if self.hit_ratio_known.swap(1, Relaxed) == 0 {
            self.hit_ratio.store(ratio.to_bits(), Relaxed);
        } else {
            let old = load(&self.hit_ratio);
            self.hit_ratio.store((old + ALPHA * (ratio - old)).to_bits(), Relaxed);
        }
    }

    /// Evaluating `n` accounts took `took`.
    pub fn record_eval(&self, n: usize, took: Duration) {
        if n > 0 {
            blend(&self.eval_ns, (took.as_nanos() as f64 / n as f64).max(1.0));
        }
    }

    /// The estimates, for `/metrics` or a debug endpoint: (eval ns per account, read fixed
    /// ns, read ns per key, hit ratio).
    pub fn estimates(&self) -> (f64, f64, f64, f64) {
        (load(&self.eval_ns), load(&self.read_fixed_ns), load(&self.read_key_ns), load(&self.hit_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decisions(g: &CostGate, n: usize, rounds: u64) -> u64 {
        (0..rounds).filter(|_| g.should_read(n)).count() as u64
    }

    #[test]
    fn reads_until_it_knows_then_only_when_it_pays() {
        let g = CostGate::new();
        assert!(g.should_read(1) && g.should_read(1), "nothing measured yet: read");
        // A cheap policy (7 µs an account), a 60 µs round trip, 1 µs a key, every key a hit.
        g.record_eval(100, Duration::from_micros(700));
        g.record_read(1, 1, Duration::from_micros(60));
        g.record_read(100, 100, Duration::from_micros(160));
        // One account: 61 µs to read against 7 µs to evaluate: only the samples read.
        assert_eq!(decisions(&g, 1, 320), 10);
        // A hundred: 160 µs against 700 µs: always.
        assert_eq!(decisions(&g, 100, 320), 320);
        // An expensive policy (200 µs an account): a single account reads too.
        for _ in 0..64 {
            g.record_eval(1, Duration::from_micros(200));
        }
        assert_eq!(decisions(&g, 1, 320), 320);
    }

    #[test]
    fn a_cold_cache_is_not_read_but_sampled() {
        let g = CostGate::new();
        g.record_eval(100, Duration::from_micros(700));
        g.record_read(100, 0, Duration::from_micros(160));
        g.record_read(1, 0, Duration::from_micros(60));
        assert_eq!(decisions(&g, 100, 320), 10, "no hits: only the samples read");
        for _ in 0..32 {
            g.record_read(100, 100, Duration::from_micros(160));
        }
        assert_eq!(decisions(&g, 100, 320), 320, "warm again: read");
    }
}
