//! Engine vs hand-written Rust on `policies/enterprise` (README "Performance").
//!
//! ```text
//! cargo bench --bench engine -- --warm-up-time 1 --measurement-time 5
//! cargo bench --bench engine -- account     # one group only
//! ```
//! Setup: 100,000 generated accounts (examples/gen_portfolio.rs, fixed seed), parsed once with
//! `snapshot::read_jsonl`; the hand-written decision (benches/handwritten) is checked against
//! the engine over all of them first (account and portfolio level) and the mismatch count is
//! printed. Then:
//! - `account_10k/*`: 10,000 valid accounts per iteration (Throughput::Elements):
//!   `engine_batch_2cores` (`evaluate` on the whole slice: rayon on both cores),
//!   `engine_one_per_call` (`evaluate(from_ref(record))` per account: one thread, what a
//!   `/v1/evaluate` call per account costs), `engine_chunks_200` (one thread, per-call costs
//!   shared), `loops_engine_*` (the same two on tests/corpus/enterprise-loops, the same
//!   decision with its script written with a mutable local, a loop and a `switch`),
//!   `engine_validate_only` (`snapshot::validate`), `handwritten_from_snapshot`
//!   (validation from the same `serde_json::Map` fields + decision + reasons + alerts),
//!   `handwritten_core` (decision on pre-validated typed inputs), `handwritten_validate_only`;
//! - `portfolio_100k/*`: `evaluate_portfolio` over all 100,000 records (2 cores) and the
//!   hand-written portfolio (validation from the `Map` fields, one thread).
//!
//! A table of medians (µs per account) is printed at the end from criterion's estimates.

// Records are `Result<Snapshot, AccountError>` (the engine's type, large on purpose).
#![allow(clippy::result_large_err)]

#[path = "handwritten/mod.rs"]
mod handwritten;

#[path = "handwritten/check.rs"]
mod check;

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use criterion::{Criterion, SamplingMode, Throughput};
use handwritten as hw;
use std::hint::black_box;
use std::time::Duration;
use tierwise::engine;
use tierwise::snapshot::Record;

/// The same allocator as the `tierwise` binary, so the comparison is of code, not allocators.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const PORTFOLIO_N: usize = 100_000;
const ACCOUNT_N: usize = 10_000;

fn main() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/enterprise");
    let policy = match tierwise::policy::load_dir(&dir, &tierwise::script::Limits::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot load {}: {e}", dir.display());
            std::process::exit(2);
        }
    };
    let text = gen_portfolio::jsonl(PORTFOLIO_N, gen_portfolio::SEED);
    let records: Vec<Record> = tierwise::snapshot::read_jsonl(&text);
    drop(text);

    let mismatches = check::run(&policy, &records);
    eprintln!(
        "hand-written vs engine over {} generated accounts: {mismatches} mismatches",
        records.len()
    );

    // The first 10,000 accounts that get a decision (invalid ones dropped before timing).
    let outcomes = engine::evaluate(&policy, &records);
    let valid: Vec<Record> = records
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| o.decision().is_some())
        .map(|(r, _)| r.clone())
        .take(ACCOUNT_N)
        .collect();
    drop(outcomes);
    let snaps: Vec<&tierwise::snapshot::Snapshot> = valid.iter().flatten().collect();
    let pref = check::policy_ref(&policy);
    let typed: Vec<hw::Account<'_>> =
        snaps.iter().filter_map(|s| hw::validate_map(check::identity(s), &s.fields).ok()).collect();
    assert_eq!(
        typed.len(),
        snaps.len(),
        "hand-written validation refused an account the engine decided"
    );

    // The corpus policy whose script uses a mutable local, a loop and a switch: the same
    // decision as enterprise (tests/native_corpus.rs checks it), so the same hand-written one.
    let loops_dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/enterprise-loops");
    let loops = match tierwise::policy::load_dir(&loops_dir, &tierwise::script::Limits::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot load {}: {e}", loops_dir.display());
            std::process::exit(2);
        }
    };
    eprintln!(
        "through rhai: enterprise {}, enterprise-loops {}",
        policy.rhai_count(),
        loops.rhai_count()
    );

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("account_10k");
        g.throughput(Throughput::Elements(valid.len() as u64));
        g.sample_size(20);
        g.sampling_mode(SamplingMode::Flat);
        g.bench_function("engine_batch_2cores", |b| {
            b.iter(|| black_box(engine::evaluate(&policy, black_box(&valid))))
        });
        g.bench_function("engine_one_per_call", |b| {
            b.iter(|| {
                for r in &valid {
                    black_box(engine::evaluate(&policy, std::slice::from_ref(black_box(r))));
                }
            })
        });
        g.bench_function("engine_chunks_200", |b| {
            b.iter(|| {
                for ch in valid.chunks(200) {
                    black_box(engine::evaluate(&policy, black_box(ch)));
                }
            })
        });
        g.bench_function("loops_engine_one_per_call", |b| {
            b.iter(|| {
                for r in &valid {
                    black_box(engine::evaluate(&loops, std::slice::from_ref(black_box(r))));
                }
            })
        });
        g.bench_function("loops_engine_chunks_200", |b| {
            b.iter(|| {
                for ch in valid.chunks(200) {
                    black_box(engine::evaluate(&loops, black_box(ch)));
                }
            })
        });
        g.bench_function("engine_validate_only", |b| {
            b.iter(|| {
                for s in &snaps {
                    let _ = black_box(tierwise::snapshot::validate(&policy, black_box(s)));
                }
            })
        });
        g.bench_function("handwritten_from_snapshot", |b| {
            b.iter(|| {
                for s in &snaps {
                    let s = black_box(*s);
                    let d = hw::validate_map(check::identity(s), &s.fields)
                        .and_then(|a| hw::decide(a, &pref));
                    let _ = black_box(d);
                }
            })
        });
        g.bench_function("handwritten_validate_only", |b| {
            b.iter(|| {
                for s in &snaps {
                    let s = black_box(*s);
                    let _ = black_box(hw::validate_map(check::identity(s), &s.fields));
                }
            })
        });
        g.bench_function("handwritten_core", |b| {
            b.iter(|| {
                for a in &typed {
                    let _ = black_box(hw::decide(black_box(a).clone(), &pref));
                }
            })
        });
        g.finish();
    }
    {
        let mut g = c.benchmark_group("portfolio_100k");
        g.throughput(Throughput::Elements(records.len() as u64));
        g.sample_size(10);
        g.sampling_mode(SamplingMode::Flat);
        g.warm_up_time(Duration::from_secs(1));
        g.bench_function("engine_2cores", |b| {
            b.iter(|| black_box(engine::evaluate_portfolio(&policy, black_box(&records))))
        });
        g.bench_function("handwritten_1thread", |b| {
            b.iter(|| {
                black_box(hw::evaluate_portfolio(check::hw_accounts(black_box(&records)), &pref))
            })
        });
        g.finish();
    }
    c.final_summary();
    table(valid.len(), records.len());
}

/// Medians from criterion's estimates (target/criterion/GROUP/ID/new/estimates.json).
fn table(account_n: usize, portfolio_n: usize) {
    let home = std::env::var("CRITERION_HOME")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/target/criterion").to_string());
    let median_ns = |group: &str, id: &str| -> Option<f64> {
        let text =
            std::fs::read_to_string(format!("{home}/{group}/{id}/new/estimates.json")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v["median"]["point_estimate"].as_f64()
    };
    let hand = median_ns("account_10k", "handwritten_from_snapshot");
    println!("\nmedians (µs per account; ratio against handwritten_from_snapshot)");
    for id in [
        "engine_one_per_call",
        "engine_chunks_200",
        "loops_engine_one_per_call",
        "loops_engine_chunks_200",
        "engine_batch_2cores",
        "engine_validate_only",
        "handwritten_from_snapshot",
        "handwritten_validate_only",
        "handwritten_core",
    ] {
        if let Some(ns) = median_ns("account_10k", id) {
            let ratio = hand.map(|h| format!("{:.1}×", ns / h)).unwrap_or_default();
            println!("  {id:<28} {:>8.3} µs  {ratio}", ns / 1000.0 / account_n as f64);
        }
    }
    for id in ["engine_2cores", "handwritten_1thread"] {
        if let Some(ns) = median_ns("portfolio_100k", id) {
            println!(
                "  portfolio_100k/{id:<20} {:>8.1} ms  ({:.3} µs per account)",
                ns / 1e6,
                ns / 1000.0 / portfolio_n as f64
            );
        }
    }
}
