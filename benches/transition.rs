//! The events transition per account, in-process (the budget is 0.3 µs per account).
//!
//! ```text
//! cargo bench --bench transition
//! ```
//! Setup: 10,000 generated accounts (examples/gen_portfolio.rs) decided once under
//! `policies/enterprise`; then per iteration every decision goes through
//! `engine::transition::step`:
//! - `steady`: against the state the same decisions left (the common case: nothing changed,
//!   no event; the state's `as_of` is rewritten);
//! - `first_seen`: against no state (every account emits its `tier.changed` and alerts, ids
//!   hashed).

#![allow(clippy::result_large_err, clippy::unwrap_used, clippy::expect_used)]

#[path = "../examples/gen_portfolio.rs"]
#[allow(dead_code)]
mod gen_portfolio;

use criterion::{Criterion, Throughput};
use std::hint::black_box;
use tierwise::engine::transition::{self, AccountInput, AccountState, Level};

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let policy = tierwise::policy::load_dir(&root.join("policies/enterprise"), &Default::default())
        .expect("enterprise loads");
    let text = gen_portfolio::jsonl(10_000, gen_portfolio::SEED);
    let records = tierwise::snapshot::read_jsonl(&text);
    let outcomes = tierwise::engine::evaluate(&policy, &records);
    let dated: Vec<(i64, Option<i64>)> = records
        .iter()
        .map(|r| {
            let s = r.as_ref().expect("valid");
            (
                tierwise::date::parse_days(&s.as_of).expect("date"),
                s.tier_since.as_deref().and_then(tierwise::date::parse_days),
            )
        })
        .collect();
    let rules = transition::account_rules(&policy);
    let input = |i: usize| AccountInput {
        level: Level::Account,
        outcome: &outcomes[i],
        as_of: dated[i].0,
        tier_since: dated[i].1,
    };
    let mut states: Vec<Option<AccountState>> = vec![None; outcomes.len()];
    let mut sink = Vec::new();
    let mut emitted = 0;
    for (i, s) in states.iter_mut().enumerate() {
        transition::step(s, input(i), &rules, &mut sink);
        emitted += sink.len();
        sink.clear();
    }
    println!("{} accounts, {emitted} events on first sight", outcomes.len());

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("transition_10k");
    g.throughput(Throughput::Elements(outcomes.len() as u64));
    g.bench_function("steady", |b| {
        b.iter(|| {
            for (i, s) in states.iter_mut().enumerate() {
                transition::step(s, input(i), &rules, &mut sink);
                sink.clear();
            }
        })
    });
    g.bench_function("first_seen", |b| {
        b.iter(|| {
            for i in 0..outcomes.len() {
                let mut s = None;
                transition::step(&mut s, input(i), &rules, &mut sink);
                black_box(&s);
                sink.clear();
            }
        })
    });
    g.finish();
    c.final_summary();
}
