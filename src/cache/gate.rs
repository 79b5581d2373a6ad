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
//! weighted mean. One request in [`SAMPLE_EVERY`] reads the cache whatever the estimate, so
//! the read cost and the hit ratio stay current (a cache warming up, a Redis coming back),
//! and another one does not, so the evaluation cost is measured even when everything hits.
//! Until it has measured both sides it reads.
//!
//! One gate per policy version (evaluation cost is the policy's), lock-free: relaxed atomics,
//! where a lost update only makes a mean a little older.

use super::Digest;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// One read in this many is made whatever the estimate says.
pub const SAMPLE_EVERY: u64 = 32;

/// Reads of at most this many keys estimate the fixed cost of a read.
const SMALL_READ: usize = 16;

/// Weight of a new measurement in a mean.
const ALPHA: f64 = 1.0 / 8.0;

pub struct CostGate {
    doorkeeper: Doorkeeper,
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
        CostGate {
            doorkeeper: Doorkeeper::new(),
            eval_ns: AtomicU64::new(0),
            read_fixed_ns: AtomicU64::new(0),
            read_key_ns: AtomicU64::new(0),
            hit_ratio: AtomicU64::new(0),
            hit_ratio_known: AtomicU64::new(0),
            requests: AtomicU64::new(0),
        }
    }

    /// Whether a fresh decision for this snapshot is worth writing: only once the snapshot
    /// was seen before (by this gate, recently). A stream of one-off snapshots then costs no
    /// writes; a snapshot sent again is written the second time and hits from the third.
    pub fn admit(&self, d: &Digest) -> bool {
        self.doorkeeper.seen_before(d)
    }

    /// Whether to read the cache for a request of `n` cacheable accounts.
    pub fn should_read(&self, n: usize) -> bool {
        if n == 0 {
            return false;
        }
        match self.requests.fetch_add(1, Relaxed) % SAMPLE_EVERY {
            0 => return true,
            // The other way round: a cache that hits everything leaves nothing to evaluate,
            // so the evaluation cost would never be measured.
            k if k == SAMPLE_EVERY / 2 => return false,
            _ => {}
        }
        let (eval, fixed, per_key) =
            (load(&self.eval_ns), load(&self.read_fixed_ns), load(&self.read_key_ns));
        if eval == 0.0
            || (fixed == 0.0 && per_key == 0.0)
            || self.hit_ratio_known.load(Relaxed) == 0
        {
            return true;
        }
        // A term not measured yet counts as 0: only small reads seen, the per-key part is in
        // the fixed one; only large ones, the fixed part is spread over the keys.
        let read = fixed + per_key * n as f64;
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
        (
            load(&self.eval_ns),
            load(&self.read_fixed_ns),
            load(&self.read_key_ns),
            load(&self.hit_ratio),
        )
    }
}

impl Default for CostGate {
    fn default() -> Self {
        CostGate::new()
    }
}

/// Bits of the doorkeeper (128 KiB); cleared once a quarter of them were set.
const DOOR_BITS: usize = 1 << 20;

/// TinyLFU's doorkeeper: a two-hash Bloom filter of the digests seen lately. A false
/// positive admits a one-off snapshot (a wasted write, never a wrong answer).
struct Doorkeeper {
    words: Vec<AtomicU64>,
    marked: AtomicU64,
}

impl Doorkeeper {
    fn new() -> Self {
        Doorkeeper {
            words: (0..DOOR_BITS / 64).map(|_| AtomicU64::new(0)).collect(),
            marked: AtomicU64::new(0),
        }
    }

    fn seen_before(&self, d: &Digest) -> bool {
        let bit = |i: usize| {
            let b = &d.0[i..i + 8];
            (u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
                % DOOR_BITS
        };
        let mut seen = true;
        for b in [bit(0), bit(8)] {
            let mask = 1u64 << (b % 64);
            if let Some(w) = self.words.get(b / 64) {
                seen &= w.fetch_or(mask, Relaxed) & mask != 0;
            }
        }
        if !seen && self.marked.fetch_add(1, Relaxed) + 1 >= (DOOR_BITS / 4) as u64 {
            self.marked.store(0, Relaxed);
            for w in &self.words {
                w.store(0, Relaxed);
            }
        }
        seen
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
        assert_eq!(
            decisions(&g, 1, 30),
            29,
            "except the one request in 32 that measures evaluation"
        );
        // A cheap policy (7 µs an account), a 60 µs round trip, 1 µs a key, every key a hit.
        g.record_eval(100, Duration::from_micros(700));
        g.record_read(1, 1, Duration::from_micros(60));
        g.record_read(100, 100, Duration::from_micros(160));
        // One account: 61 µs to read against 7 µs to evaluate: only the samples read.
        assert_eq!(decisions(&g, 1, 320), 10);
        assert_eq!(decisions(&g, 100, 320), 310, "all but the samples that measure evaluation");

        // An expensive policy (200 µs an account): a single account reads too.
        for _ in 0..64 {
            g.record_eval(1, Duration::from_micros(200));
        }
        assert_eq!(decisions(&g, 1, 320), 310);
    }

    #[test]
    fn the_doorkeeper_admits_the_second_sighting() {
        let g = CostGate::new();
        let d = |i: u32| {
            let mut b = [0u8; 32];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b[8..12].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_le_bytes());
            Digest(b)
        };
        assert!(!g.admit(&d(1)));
        assert!(g.admit(&d(1)));
        let false_positives = (2..10_000).filter(|&i| g.admit(&d(i))).count();
        assert!(false_positives < 10, "{false_positives} one-off snapshots admitted");
    }

    #[test]
    fn large_reads_alone_are_enough_to_decide() {
        let g = CostGate::new();
        g.record_eval(100, Duration::from_micros(200));
        g.record_read(100, 100, Duration::from_micros(300));
        assert_eq!(decisions(&g, 100, 320), 10, "3 µs a key to read against 2 µs to evaluate");
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
        assert_eq!(decisions(&g, 100, 320), 310, "warm again: read");
    }
}
