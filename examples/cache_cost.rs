//! What the cache costs and saves per request, in process (no HTTP): evaluating 1 and 100
//! accounts under the shipped enterprise policy against the in-memory cache and a Redis
//! (warm, cold, and stopped), through `AccountPlan` as the service uses it.
//!
//! `cargo run --release --example cache_cost -- redis://127.0.0.1:PORT/` (a redis-server of
//! your own, e.g. `redis-server --port 6391 --save '' --appendonly no`). Without a URL only
//! the in-memory rows are measured. With `--stop-pid PID` it also measures after sending
//! SIGSTOP to that redis-server (and SIGCONT at the end).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::result_large_err)]

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tierwise::cache::{self, AccountPlan, Cache, CacheConfig, CostGate, PolicyId};
use tierwise::policy::Policy;
use tierwise::snapshot::Record;

/// Salts of books never seen before (cold runs); starts from the clock so a second run
/// against the same Redis is cold too.
static FRESH: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn book(n: usize, salt: u64) -> Vec<Record> {
    let rels = ["tactical", "cooperative", "interdependent", "strategic"];
    (0..n)
        .map(|i| {
            let v = serde_json::json!({
                "id": format!("acct-{salt}-{i:05}"), "manager": format!("kam-{}", i % 7), "as_of": "2026-11-01",
                "current_tier": "managed", "tier_since": "2025-01-01",
                "fields": { "revenue_12m": 50_000.0 + 997.0 * i as f64, "potential": 200_000.0, "gross_margin": 0.25,
                            "relationship": rels[i % 4], "strategic_fit": 1 + i % 5, "nps": (i % 50) as i64 - 10,
                            "nps_prev": 20, "last_qbr": "2026-09-01", "renewal_date": "2027-03-01", "share_of_wallet": 0.3 }
            });
            Ok(serde_json::from_value(v).unwrap())
        })
        .collect()
}

struct Stat {
    v: Vec<Duration>,
}

impl Stat {
    fn line(&mut self, what: &str, n: usize) {
        self.v.sort();
        let q = |p: f64| {
            self.v[((self.v.len() as f64 * p) as usize).min(self.v.len() - 1)].as_secs_f64() * 1e6
        };
        let total: f64 = self.v.iter().map(Duration::as_secs_f64).sum();
        println!(
            "| {what} | {n} | {:.0} | {:.1} | {:.1} |",
            self.v.len() as f64 / total,
            q(0.5),
            q(0.99)
        );
    }
}

/// One request through the cache as the service would make it; `gate` decides the read.
async fn request(
    c: &dyn Cache,
    p: &Policy,
    pid: &PolicyId,
    records: &[Record],
    gate: Option<&CostGate>,
) -> usize {
    let plan = match gate {
        Some(g) => AccountPlan::gated(pid, records, g),
        None => AccountPlan::new(pid, records),
    };
    let read = gate.is_none_or(|g| g.should_read(plan.keys().len()));
    let found = if read {
        let t = Instant::now();
        let f = c.get_many(plan.keys()).await;
        if let Some(g) = gate {
            g.record_read(f.len(), f.iter().filter(|x| x.is_some()).count(), t.elapsed());
        }
        f
    } else {
        Vec::new()
    };
    let mut took = Duration::ZERO;
    let (answer, writes) = plan
        .finish(records, found, |m| {
            let t = Instant::now();
            let o = tierwise::engine::evaluate(p, m);
            took = t.elapsed();
            o
        })
        .unwrap();
    if let Some(g) = gate {
        g.record_eval(answer.fresh.len(), took);
    }
    let mut buf = Vec::new();
    answer.write_array(&mut buf);
    c.put_many(writes);
    buf.len()
}

async fn measure(
    label: &str,
    c: &dyn Cache,
    p: &Policy,
    n: usize,
    warm: bool,
    gate: bool,
    rounds: usize,
) {
    let pid = PolicyId::new(p.name.as_str(), p.hash.as_str());
    let g = CostGate::new();
    let warm_book = book(n, 0);
    if warm {
        request(c, p, &pid, &warm_book, None).await;
        c.flush().await;
    }
    let mut s = Stat { v: Vec::with_capacity(rounds) };
    for r in 0..rounds {
        let cold_book;
        let records = if warm {
            &warm_book
        } else {
            cold_book = book(n, FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            &cold_book
        };
        let t = Instant::now();
        std::hint::black_box(request(c, p, &pid, records, gate.then_some(&g)).await);
        s.v.push(t.elapsed());
        if r % 64 == 63 {
            c.flush().await; // keep the write queue from filling in a tight loop
        }
    }
    s.line(&format!("{label}{}", if gate { " (gated)" } else { "" }), n);
    if gate {
        let (e, f, k, h) = g.estimates();
        eprintln!(
            "  gate after `{label}` n={n}: eval {e:.0} ns/account, read {f:.0} ns + {k:.0} ns/key, hit ratio {h:.2}"
        );
    }
}

async fn no_cache(p: &Policy, n: usize, rounds: usize) {
    let records = book(n, 0);
    let mut s = Stat { v: Vec::with_capacity(rounds) };
    for _ in 0..rounds {
        let t = Instant::now();
        let o = tierwise::engine::evaluate(p, &records);
        std::hint::black_box(serde_json::to_vec(&o).unwrap());
        s.v.push(t.elapsed());
    }
    s.line("no cache: evaluate + serialize", n);
}

/// Where a cold request's time goes (µs per request): plan, read, finish, put.
async fn breakdown(c: &dyn Cache, p: &Policy, n: usize, rounds: usize) {
    let pid = PolicyId::new(p.name.as_str(), p.hash.as_str());
    let mut t = [Duration::ZERO; 5];
    for _ in 0..rounds {
        let records = book(n, FRESH.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let t0 = Instant::now();
        let plan = AccountPlan::new(&pid, &records);
        let t1 = Instant::now();
        let found = c.get_many(plan.keys()).await;
        let t2 = Instant::now();
        let mut ev = Duration::ZERO;
        let (answer, writes) = plan
            .finish(&records, found, |m| {
                let a = Instant::now();
                let o = tierwise::engine::evaluate(p, m);
                ev = a.elapsed();
                o
            })
            .unwrap();
        let t3 = Instant::now();
        c.put_many(writes);
        let t4 = Instant::now();
        std::hint::black_box(answer);
        for (i, d) in [t1 - t0, t2 - t1, t3 - t2 - ev, ev, t4 - t3].into_iter().enumerate() {
            t[i] += d;
        }
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / rounds as f64;
    eprintln!(
        "  cold breakdown n={n}: plan {:.1} µs, read {:.1}, finish without evaluation {:.1}, evaluation {:.1}, put {:.1}",
        us(t[0]),
        us(t[1]),
        us(t[2]),
        us(t[3]),
        us(t[4])
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    FRESH.store(now.as_nanos() as u64 | 1, std::sync::atomic::Ordering::Relaxed);
    let url = args.iter().find(|a| a.starts_with("redis")).cloned();
    let stop_pid =
        args.iter().position(|a| a == "--stop-pid").and_then(|i| args.get(i + 1)).cloned();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/enterprise");
    let p = tierwise::policy::load_dir(&dir, &tierwise::script::Limits::default())
        .map_err(|e| e.to_string())
        .unwrap();
    let rounds = |n: usize| if n == 1 { 4000 } else { 400 };

    println!("| path | accounts | req/s (1 client) | p50 µs | p99 µs |\n|---|---|---|---|---|");
    for n in [1, 100] {
        no_cache(&p, n, rounds(n)).await;
    }
    let mem: Arc<dyn Cache> = cache::build(&CacheConfig::default()).unwrap();
    if args.iter().any(|a| a == "--breakdown") {
        breakdown(&*mem, &p, 100, 400).await;
        return;
    }
    for n in [1, 100] {
        for gate in [false, true] {
            measure("memory, warm", &*mem, &p, n, true, gate, rounds(n)).await;
            measure("memory, cold", &*mem, &p, n, false, gate, rounds(n)).await;
        }
    }
    let Some(url) = url else { return };
    let cfg = CacheConfig { redis_url: Some(url), ..CacheConfig::default() };
    let redis = cache::build(&cfg).unwrap();
    while redis.degraded().is_some() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for n in [1, 100] {
        for gate in [false, true] {
            measure("redis, warm", &*redis, &p, n, true, gate, rounds(n)).await;
            measure("redis, cold", &*redis, &p, n, false, gate, rounds(n)).await;
        }
    }
    if let Some(pid) = stop_pid {
        Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        for n in [1, 100] {
            measure("redis stopped (SIGSTOP)", &*redis, &p, n, false, false, rounds(n)).await;
        }
        Command::new("kill").args(["-CONT", &pid]).status().unwrap();
        println!("\nafter the stopped runs: {:?}", redis.stats());
    }
}
